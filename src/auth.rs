//! Who a connection is and what it may do: HS256 JWTs (`jsonwebtoken`), room permissions from the
//! token's claims, and the browser-origin allow-list that stops cross-site WebSocket hijacking.
//!
//! Pure functions of the request's token and headers and the clock; the event loop asks before
//! it answers an upgrade, so a refused client gets its 401 or 403 before any WebSocket exists.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Longest user id accepted (`sub` or `?user=`), in bytes.
pub const MAX_USER: usize = 256;

/// The claims c100k reads from a token. Others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Room names the user may join; an entry ending in `*` is a prefix. Absent: every room.
    rooms: Option<Vec<String>>,
    /// `false`: read-only.
    publish: Option<bool>,
}

/// An authenticated (or, on an open server, self-declared) user. 16 bytes: every room member
/// carries one (a token's limits sit behind the one pointer of `Scoped`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Every room, and publishing. The user is empty for an anonymous connection (an open
    /// server, no `?user=`): every one shares one string, is not listed in presence, and its
    /// messages' `from` names its connection.
    Open(Arc<str>),
    /// What a token restricts.
    Scoped(Arc<Scoped>),
}

/// A user and their token's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoped {
    pub user: Arc<str>,
    pub scope: Scope,
}

/// A token's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Room patterns (`name`, or `prefix*`); `None` allows every room.
    pub rooms: Option<Box<[Box<str>]>>,
    pub may_publish: bool,
}

impl Identity {
    /// An identity with every permission.
    pub fn open(user: &str) -> Identity {
        Identity::Open(user.into())
    }

    pub fn user(&self) -> &Arc<str> {
        match self {
            Identity::Open(u) => u,
            Identity::Scoped(s) => &s.user,
        }
    }

    fn scope(&self) -> Option<&Scope> {
        match self {
            Identity::Open(_) => None,
            Identity::Scoped(s) => Some(&s.scope),
        }
    }

    /// A connection that names no user: it allocates nothing (its connection is its name).
    pub fn anonymous() -> Identity {
        static ANON: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Identity::Open(ANON.get_or_init(|| "".into()).clone())
    }

    pub fn is_anonymous(&self) -> bool {
        self.user().is_empty()
    }

    /// Whether the token's `rooms` claim allows `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match self.scope().and_then(|s| s.rooms.as_ref()) {
            None => true,
            Some(pats) => pats.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => **p == *room,
            }),
        }
    }

    /// Whether the token allows publishing (`publish: false` makes it read-only).
    pub fn may_publish(&self) -> bool {
        self.scope().is_none_or(|s| s.may_publish)
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token, or one that is malformed, wrongly signed or expired.
    Unauthorized(String),
    /// 403: a browser origin that is not allowed.
    Forbidden(String),
    /// 400: a self-declared user id that is not acceptable.
    BadRequest(String),
}

/// The server's authentication settings.
pub struct Auth {
    key: Option<(DecodingKey, Validation)>,
    /// Lower-cased origins without a trailing slash; `None` allows any.
    origins: Option<HashSet<String>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("jwt", &self.key.is_some()).field("origins", &self.origins).finish()
    }
}

impl Auth {
    /// `secret`: the HS256 key (None: an open server). `origins`: allowed browser origins.
    pub fn new(secret: Option<&[u8]>, origins: Option<&[String]>) -> Result<Auth, String> {
        let key = match secret {
            Some([]) => return Err("the JWT secret is empty".into()),
            Some(s) => {
                let mut v = Validation::new(Algorithm::HS256);
                v.required_spec_claims = HashSet::from(["sub".to_string()]);
                v.validate_exp = true; // when present
                v.validate_aud = false;
                v.leeway = 0;
                Some((DecodingKey::from_secret(s).map_err(|e| format!("JWT secret: {e}"))?, v))
            }
            None => None,
        };
        let origins = origins.map(|o| o.iter().map(|s| normalize_origin(s)).collect());
        Ok(Auth { key, origins })
    }

    /// True when tokens are required.
    pub fn requires_token(&self) -> bool {
        self.key.is_some()
    }

    /// The identity of a request: from its token when the server has a secret (required then),
    /// else `user` (the `?user=` parameter), else anonymous.
    pub fn identify(&self, token: Option<&str>, user: Option<&str>) -> Result<Identity, Refusal> {
        let Some((key, validation)) = &self.key else {
            return match user {
                Some(u) => {
                    check_user(u).map_err(|m| Refusal::BadRequest(format!("user: {m}")))?;
                    Ok(Identity::open(u))
                }
                None => Ok(Identity::anonymous()),
            };
        };
        let token = token
            .ok_or_else(|| Refusal::Unauthorized("a token is required (?token= or Authorization: Bearer)".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| Refusal::Unauthorized(format!("invalid token: {e}")))?;
        let c = data.claims;
        check_user(&c.sub).map_err(|m| Refusal::Unauthorized(format!("invalid token: sub {m}")))?;
        let scope = Scope {
            rooms: c.rooms.map(|r| r.into_iter().map(String::into_boxed_str).collect()),
            may_publish: c.publish.unwrap_or(true),
        };
        let open = scope.rooms.is_none() && scope.may_publish;
        let user: Arc<str> = c.sub.into();
        Ok(if open { Identity::Open(user) } else { Identity::Scoped(Arc::new(Scoped { user, scope })) })
    }

    /// Browsers send `Origin`; one not on the allow-list is refused. Requests without `Origin`
    /// (non-browser clients) are allowed.
    pub fn check_origin(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        match (&self.origins, origin) {
            (Some(allowed), Some(o)) => {
                let o = String::from_utf8_lossy(o);
                if allowed.contains(&normalize_origin(&o)) {
                    Ok(())
                } else {
                    Err(Refusal::Forbidden(format!("origin {o} is not allowed")))
                }
            }
            _ => Ok(()),
        }
    }
}

fn normalize_origin(o: &str) -> String {
    o.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// User ids: 1–256 bytes without control characters.
pub fn check_user(u: &str) -> Result<(), &'static str> {
    if u.is_empty() {
        Err("is empty")
    } else if u.len() > MAX_USER {
        Err("is longer than 256 bytes")
    } else if u.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Auth::new(Some(SECRET), None).unwrap();
        let ok = token(json!({"sub":"ann","exp":now() + 60,"rooms":["lobby","team-*"],"publish":false}), SECRET);
        let id = auth.identify(Some(&ok), Some("ignored")).unwrap();
        assert_eq!(&**id.user(), "ann");
        assert!(!id.may_publish());
        assert!(id.may_join("lobby") && id.may_join("team-red") && id.may_join("team-"));
        assert!(!id.may_join("lobby2") && !id.may_join("other"));
        let no_exp = token(json!({"sub":"bob"}), SECRET);
        let id = auth.identify(Some(&no_exp), None).unwrap();
        assert!(id.may_publish() && id.may_join("anything"));

        for (what, t) in [
            ("expired", token(json!({"sub":"ann","exp":now() - 10}), SECRET)),
            ("wrong key", token(json!({"sub":"ann"}), b"other")),
            ("no sub", token(json!({"name":"ann"}), SECRET)),
            ("empty sub", token(json!({"sub":""}), SECRET)),
            ("malformed", "not.a.jwt".to_string()),
            ("garbage", "%%%".to_string()),
        ] {
            assert!(matches!(auth.identify(Some(&t), None), Err(Refusal::Unauthorized(_))), "{what}");
        }
        assert!(matches!(auth.identify(None, Some("ann")), Err(Refusal::Unauthorized(_))));
        // alg=none is not accepted.
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"ann"}"#));
        assert!(auth.identify(Some(&none), None).is_err());
    }

    fn b64(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn open_servers_take_the_user_parameter_or_are_anonymous() {
        let auth = Auth::new(None, None).unwrap();
        assert_eq!(&**auth.identify(Some("ignored"), Some("ann")).unwrap().user(), "ann");
        assert!(auth.identify(None, None).unwrap().is_anonymous());
        assert!(matches!(auth.identify(None, Some("")), Err(Refusal::BadRequest(_))));
        assert!(matches!(auth.identify(None, Some("a\nb")), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn origins() {
        let auth = Auth::new(None, Some(&["https://app.example.com".into(), "http://localhost:3000/".into()])).unwrap();
        assert!(auth.check_origin(None).is_ok(), "non-browser clients send no Origin");
        assert!(auth.check_origin(Some(b"https://APP.example.com")).is_ok());
        assert!(auth.check_origin(Some(b"http://localhost:3000")).is_ok());
        assert!(matches!(auth.check_origin(Some(b"https://evil.example")), Err(Refusal::Forbidden(_))));
        assert!(auth.check_origin(Some(b"null")).is_err());
        assert!(Auth::new(None, None).unwrap().check_origin(Some(b"https://any")).is_ok());
    }
}
