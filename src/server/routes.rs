//! What the server answers to each request: the routes, their checks and rejections, as a pure
//! function of the parsed request and the server's settings (no IO; unit-tested here).
//!
//! - `/echo`: WebSocket echo.
//! - `/ws` (and `/`) with `?room=NAME`: a seed-mode room; `/ws` offering `c100k.v1`: the v1 protocol.
//! - `/healthz`, `/metrics`: plain HTTP.
//! - `/api/…` (with `--api-key`): the server API for application backends.
//! - `/sse?room=R…`: a Server-Sent Events stream of rooms; `/poll?room=R&since=E:S`: a long poll;
//!   `POST /rooms/R/messages`: publishing for both (same tokens and rooms as `/ws`).
//! - `/` (a plain GET): the demo page; `/client/c100k.js`: the client library.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{Auth, Identity, Refusal};
use crate::proto::http::{Body, Request};
use crate::proto::sse;
use crate::proto::v1::{self, Position};
use crate::proto::ws::handshake::{check_upgrade, UpgradeError};

/// What a WebSocket connection becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsKind {
    Echo,
    /// Seed mode: relay JSON text to the room's other members.
    Raw {
        room: String,
    },
    V1,
}

/// A call to the server API, answered once the broker replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCall {
    Publish {
        room: String,
        data: Box<str>,
        from: Option<String>,
    },
    Presence {
        room: String,
    },
    History {
        room: String,
        since: Option<Position>,
        limit: Option<usize>,
    },
    /// `POST /rooms/R/messages` from an SSE or long-poll client, as `identity`.
    Send {
        room: String,
        data: Box<str>,
        identity: Identity,
    },
    /// `GET /rooms/R/presence` from a client whose token may join the room.
    MemberPresence {
        room: String,
    },
}

/// The body of a plain answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text(Cow<'static, str>),
    Json(String),
    /// The Prometheus text of the server's metrics (rendered by the caller).
    Metrics,
    /// `ok`, or 503 with the broker's trouble (decided by the caller).
    Health,
    /// A file built into the server: (content type, body).
    Static(&'static str, &'static str),
}

/// A plain HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Reply,
    /// End the connection after it.
    pub close: bool,
    /// It refuses a WebSocket handshake (counted as a handshake failure).
    pub ws: bool,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Complete the handshake with this `Sec-WebSocket-Accept`.
    Upgrade {
        accept: String,
        kind: WsKind,
        identity: Identity,
        protocol: Option<&'static str>,
        /// permessage-deflate was offered in a form we take, and is on (`--deflate`).
        deflate: bool,
    },
    Respond(Response),
    Api {
        call: ApiCall,
        close: bool,
    },
    /// Start an event stream of these rooms, each from its position if one was given.
    Sse {
        rooms: Vec<(String, Option<Position>)>,
        presence: bool,
        identity: Identity,
    },
    /// Hold the request until `room` has messages after `since` (none: answer with the
    /// current position at once).
    Poll {
        room: String,
        since: Option<Position>,
        identity: Identity,
        close: bool,
    },
}

/// Which client transports the server offers (`--transports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    pub ws: bool,
    pub sse: bool,
    pub poll: bool,
}

impl Transports {
    pub const ALL: Transports = Transports { ws: true, sse: true, poll: true };

    /// Parse `ws,sse,poll` (any subset, at least one).
    pub fn parse(s: &str) -> Result<Transports, String> {
        let mut t = Transports { ws: false, sse: false, poll: false };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "ws" | "websocket" => t.ws = true,
                "sse" => t.sse = true,
                "poll" => t.poll = true,
                other => return Err(format!("unknown transport '{other}' (use ws, sse, poll)")),
            }
        }
        if t == (Transports { ws: false, sse: false, poll: false }) {
            return Err("name at least one transport: ws, sse, poll".into());
        }
        Ok(t)
    }
}

/// Why a request was refused, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Auth,
    Origin,
    /// The server is at --max-connections (503).
    Full,
    /// The address is at --max-connections-per-ip (429).
    PerIp,
    Other,
}

impl Decision {
    /// Whether this ends a connection that wanted a WebSocket and did not get one.
    pub fn is_handshake_failure(&self) -> bool {
        matches!(self, Decision::Respond(r) if r.ws && r.status >= 400)
    }

    /// Which refusal this is, for counting.
    pub fn refused(&self) -> Option<Refused> {
        match self {
            Decision::Respond(r) if r.status == 401 => Some(Refused::Auth),
            Decision::Respond(r) if r.status == 403 && r.headers.contains(&VARY_ORIGIN) => Some(Refused::Origin),
            Decision::Respond(r) if r.status == 503 => Some(Refused::Full),
            Decision::Respond(r) if r.status == 429 => Some(Refused::PerIp),
            Decision::Respond(r) if r.status >= 400 => Some(Refused::Other),
            _ => None,
        }
    }
}

/// What routing needs from the server.
pub struct Ctx<'a> {
    pub auth: &'a Auth,
    pub api_key: Option<&'a str>,
    /// What this connection may ask for.
    pub restrict: Restrict,
    pub transports: Transports,
    /// Rooms one connection (or event stream) may be in.
    pub max_rooms: usize,
    /// Serve the demo page at `/`.
    pub demo: bool,
    /// Answer permessage-deflate offers (`--deflate on`).
    pub deflate: bool,
}

/// Connections that may only ask for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restrict {
    None,
    /// Accepted past --max-connections: anything else gets 503 with Retry-After.
    Full,
    /// Its address is at --max-connections-per-ip: anything else gets 429 with Retry-After.
    PerIp,
    /// The --metrics-listen address: anything else gets 404.
    Admin,
}

fn text(status: u16, body: &'static str, close: bool, ws: bool) -> Decision {
    Decision::Respond(Response { status, headers: Vec::new(), body: Reply::Text(body.into()), close, ws })
}

fn json_error(status: u16, message: &str, close: bool) -> Decision {
    let mut body = b"{\"error\":".to_vec();
    v1::write_str(&mut body, message);
    body.push(b'}');
    let body = String::from_utf8(body).unwrap_or_default();
    let headers = if status == 401 { vec![("WWW-Authenticate", "Bearer".into())] } else { Vec::new() };
    Decision::Respond(Response { status, headers, body: Reply::Json(body), close, ws: false })
}

/// A refused WebSocket handshake: the connection ends.
fn refuse(status: u16, headers: Vec<(&'static str, Cow<'static, str>)>, why: impl Into<Cow<'static, str>>) -> Decision {
    let mut why = why.into().into_owned();
    why.push('\n');
    Decision::Respond(Response { status, headers, body: Reply::Text(why.into()), close: true, ws: true })
}

fn refusal(r: Refusal) -> Decision {
    match r {
        Refusal::Unauthorized(m) => refuse(401, vec![("WWW-Authenticate", "Bearer".into())], m),
        Refusal::Forbidden(m) => refuse(403, Vec::new(), m),
        Refusal::BadRequest(m) => refuse(400, Vec::new(), m),
    }
}

/// A refused SSE, poll or POST request: like [`refusal`], but a JSON body and no failed
/// handshake (the connection stays when the client keeps it).
fn http_refusal(r: Refusal, close: bool) -> Decision {
    match r {
        Refusal::Unauthorized(m) => json_error(401, &m, close),
        Refusal::Forbidden(m) => json_error(403, &m, close),
        Refusal::BadRequest(m) => json_error(400, &m, close),
    }
}

/// Marks a refusal of the request's `Origin` (the answer depends on it).
const VARY_ORIGIN: (&str, Cow<'static, str>) = ("Vary", Cow::Borrowed("Origin"));

/// Who is asking: the origin checked (`Err(Ok(d))`: refused for it, `d` says so), then the token
/// (`?token=` or `Authorization: Bearer`) or, on an open server, `?user=`.
fn identify(req: &Request<'_>, ctx: &mut Ctx<'_>, ws: bool, close: bool) -> Result<Identity, Decision> {
    check_origin(req, ctx, ws, close)?;
    let fail = |r| if ws { refusal(r) } else { http_refusal(r, close) };
    identity_of(req, ctx).map_err(fail)
}

fn check_origin(req: &Request<'_>, ctx: &Ctx<'_>, ws: bool, close: bool) -> Result<(), Decision> {
    ctx.auth.check_origin(req.origin).map_err(|r| {
        let mut d = if ws { refusal(r) } else { http_refusal(r, close) };
        if let Decision::Respond(resp) = &mut d {
            resp.headers.push(VARY_ORIGIN);
        }
        d
    })
}

fn identity_of(req: &Request<'_>, ctx: &mut Ctx<'_>) -> Result<Identity, Refusal> {
    let token = match req.query_param("token") {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return Err(Refusal::BadRequest("token: invalid percent-encoding".into())),
        None => req.bearer().map(str::to_string),
    };
    let user = match req.query_param("user") {
        Some(Ok(u)) => Some(u),
        Some(Err(_)) => return Err(Refusal::BadRequest("user: invalid percent-encoding".into())),
        None => None,
    };
    ctx.auth.identify(token.as_deref(), user.as_deref())
}

/// CORS: SSE, poll and POST are readable from any page the origin check let through (tokens
/// travel in the URL or `Authorization`, never in cookies, so `*` grants nothing more).
pub const CORS: (&str, &str) = ("Access-Control-Allow-Origin", "*");

/// Decide the answer to `req` (with its body).
pub fn route(req: &Request<'_>, body: &Body<'_>, ctx: &mut Ctx<'_>) -> Decision {
    let mut d = decide(req, body, ctx);
    if let Decision::Respond(r) = &mut d {
        if req.upgrade_websocket && r.status >= 400 {
            // A refused upgrade: the client expected another protocol on this connection.
            r.close = true;
            r.ws = true;
        }
    }
    d
}

fn decide(req: &Request<'_>, body: &Body<'_>, ctx: &mut Ctx<'_>) -> Decision {
    let close = !req.keep_alive();
    let get = req.method == "GET";
    let retry = |status, why: &'static str| {
        Decision::Respond(Response {
            status,
            headers: vec![("Retry-After", "1".into())],
            body: Reply::Text(why.into()),
            close: true,
            ws: false,
        })
    };
    match (ctx.restrict, req.path) {
        (Restrict::None, _) | (_, "/healthz" | "/metrics") => {}
        (Restrict::Full, _) => return retry(503, "server full: retry later\n"),
        (Restrict::PerIp, _) => return retry(429, "too many connections from this address\n"),
        (Restrict::Admin, _) => {
            return text(404, "not found (this address serves /metrics and /healthz)\n", true, false)
        }
    }
    match req.path {
        "/healthz" | "/metrics" if !get => {
            return Decision::Respond(Response {
                status: 405,
                headers: vec![("Allow", "GET".into())],
                body: Reply::Text("method not allowed\n".into()),
                close,
                ws: false,
            })
        }
        "/healthz" => {
            return Decision::Respond(Response {
                status: 200,
                headers: Vec::new(),
                body: Reply::Health,
                close,
                ws: false,
            })
        }
        "/metrics" => {
            return Decision::Respond(Response {
                status: 200,
                headers: Vec::new(),
                body: Reply::Metrics,
                close,
                ws: false,
            })
        }
        "/" if get && !req.upgrade_websocket && ctx.demo => {
            return file("text/html; charset=utf-8", include_str!("../../client/demo.html"), close)
        }
        "/client/c100k.js" if get => {
            return file("text/javascript; charset=utf-8", include_str!("../../client/c100k.js"), close)
        }
        "/echo" | "/" | "/ws" => {}
        "/sse" | "/poll" if req.method == "OPTIONS" => return preflight(req, ctx, close),
        "/sse" | "/poll" if !get => return json_error(405, "use GET", close),
        "/sse" if !ctx.transports.sse => return json_error(404, "SSE is turned off (--transports)", close),
        "/poll" if !ctx.transports.poll => return json_error(404, "long polling is turned off (--transports)", close),
        "/sse" => return sse_stream(req, ctx),
        "/poll" => return poll(req, ctx, close),
        p if p.starts_with("/rooms/") => return room_route(req, body, ctx, close),
        p if p.starts_with("/api/") || p == "/api" => return api(req, body, ctx, close),
        _ => return text(404, "not found\n", close, false),
    }
    if !ctx.transports.ws {
        return refuse(404, Vec::new(), "WebSockets are turned off here (--transports): use /sse or /poll");
    }
    websocket(req, ctx)
}

fn file(ctype: &'static str, body: &'static str, close: bool) -> Decision {
    Decision::Respond(Response {
        status: 200,
        headers: vec![("Cache-Control", "no-cache".into())],
        body: Reply::Static(ctype, body),
        close,
        ws: false,
    })
}

/// The answer to a CORS preflight for the SSE, poll and POST routes.
fn preflight(req: &Request<'_>, ctx: &mut Ctx<'_>, close: bool) -> Decision {
    if let Err(d) = check_origin(req, ctx, false, close) {
        return d;
    }
    Decision::Respond(Response {
        status: 204,
        headers: vec![
            (CORS.0, CORS.1.into()),
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()),
            ("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID".into()),
            ("Access-Control-Max-Age", "600".into()),
        ],
        body: Reply::Text("".into()),
        close,
        ws: false,
    })
}

/// `GET /sse?room=R[&room=R2…][&presence=1]`, resuming from `Last-Event-ID` (or the
/// `lastEventId` parameter, or `since=EPOCH:SEQ` for one room).
fn sse_stream(req: &Request<'_>, ctx: &mut Ctx<'_>) -> Decision {
    let close = true;
    let identity = match identify(req, ctx, false, close) {
        Ok(id) => id,
        Err(d) => return d,
    };
    let mut rooms: Vec<(String, Option<Position>)> = Vec::new();
    for r in crate::proto::http::query_values(req.query, "room") {
        let room = match r {
            Ok(room) => room,
            Err(e) => return json_error(400, &format!("room: {e}"), close),
        };
        if let Err(e) = v1::check_room_name(&room) {
            return json_error(400, &format!("room: {e}"), close);
        }
        if !identity.may_join(&room) {
            return json_error(403, &format!("this token may not join room {room:?}"), close);
        }
        if !rooms.iter().any(|(r, _)| *r == room) {
            rooms.push((room, None));
        }
    }
    if rooms.is_empty() {
        return json_error(400, "missing room: GET /sse?room=NAME (several room= allowed)", close);
    }
    if rooms.len() > ctx.max_rooms {
        return json_error(400, &format!("at most {} rooms per stream", ctx.max_rooms), close);
    }
    let last_id = match (req.last_event_id, req.query_param("lastEventId")) {
        (Some(h), _) => Some(String::from_utf8_lossy(h).trim().to_string()),
        (None, Some(Ok(q))) => Some(q),
        (None, Some(Err(e))) => return json_error(400, &format!("lastEventId: {e}"), close),
        (None, None) => None,
    };
    if let Some(id) = last_id.filter(|id| !id.is_empty()) {
        let Some(positions) = sse::parse_id(&id) else {
            return json_error(400, "Last-Event-ID is not a position this server wrote (ROOM:EPOCH:SEQ,…)", close);
        };
        for (room, pos) in positions {
            if let Some(slot) = rooms.iter_mut().find(|(r, _)| *r == room) {
                slot.1 = Some(pos);
            }
        }
    } else {
        match since_param(req) {
            Ok(None) => {}
            Ok(Some(_)) if rooms.len() > 1 => {
                return json_error(400, "since names one room's position: use Last-Event-ID for several", close)
            }
            Ok(Some(p)) => rooms[0].1 = Some(p),
            Err(d) => return d(close),
        }
    }
    let presence = matches!(req.query_param("presence"), Some(Ok(v)) if v == "1" || v == "true");
    Decision::Sse { rooms, presence, identity }
}

/// The `since=EPOCH:SEQ` parameter, if any; a malformed one is a 400 (given `close`).
fn since_param(req: &Request<'_>) -> Result<Option<Position>, fn(bool) -> Decision> {
    match req.query_param("since") {
        None => Ok(None),
        Some(Ok(s)) if s.is_empty() => Ok(None),
        Some(Ok(s)) => Position::parse(&s).map(Some).ok_or(|close| json_error(400, "since must be EPOCH:SEQ", close)),
        Some(Err(_)) => Err(|close| json_error(400, "since: invalid percent-encoding", close)),
    }
}

/// `GET /poll?room=R&since=EPOCH:SEQ`.
fn poll(req: &Request<'_>, ctx: &mut Ctx<'_>, close: bool) -> Decision {
    let identity = match identify(req, ctx, false, close) {
        Ok(id) => id,
        Err(d) => return d,
    };
    let room = match room_param(req) {
        Ok(r) => r,
        Err(e) => return json_error(400, &e, close),
    };
    if !identity.may_join(&room) {
        return json_error(403, &format!("this token may not join room {room:?}"), close);
    }
    match since_param(req) {
        Ok(since) => Decision::Poll { room, since, identity, close },
        Err(d) => d(close),
    }
}

/// `POST /rooms/R/messages` with `{"data":ANY_JSON}`: publish as the token's user;
/// `GET /rooms/R/presence`: who is in the room (for clients without a WebSocket).
fn room_route(req: &Request<'_>, body: &Body<'_>, ctx: &mut Ctx<'_>, close: bool) -> Decision {
    let rest = req.path.strip_prefix("/rooms/").unwrap_or_default();
    let (raw_room, method) = match rest.rsplit_once('/') {
        Some((r, "messages")) => (r, "POST"),
        Some((r, "presence")) => (r, "GET"),
        _ => return json_error(404, "no such route: POST /rooms/ROOM/messages or GET /rooms/ROOM/presence", close),
    };
    if req.method == "OPTIONS" {
        return preflight(req, ctx, close);
    }
    if req.method != method {
        let mut d = json_error(405, &format!("use {method}"), close);
        if let Decision::Respond(r) = &mut d {
            r.headers.push(("Allow", method.into()));
        }
        return d;
    }
    if !ctx.transports.sse && !ctx.transports.poll {
        return json_error(404, "SSE and long polling are turned off (--transports)", close);
    }
    let identity = match identify(req, ctx, false, close) {
        Ok(id) => id,
        Err(d) => return d,
    };
    let room = match path_decode(raw_room) {
        Some(r) => r,
        None => return json_error(400, "room: invalid percent-encoding", close),
    };
    if let Err(e) = v1::check_room_name(&room) {
        return json_error(400, e, close);
    }
    if !identity.may_join(&room) {
        return json_error(403, &format!("this token may not join room {room:?}"), close);
    }
    if method == "GET" {
        return Decision::Api { call: ApiCall::MemberPresence { room }, close };
    }
    if !identity.may_publish() {
        return json_error(403, "this token is read-only (publish: false)", close);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return json_error(400, "the body is not UTF-8", close);
    };
    let b: PublishBody<'_> = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => return json_error(400, &format!("invalid JSON: {e}"), close),
    };
    let Some(data) = b.data else {
        return json_error(400, "missing \"data\": send {\"data\":ANY_JSON}", close);
    };
    Decision::Api { call: ApiCall::Send { room, data: data.get().into(), identity }, close }
}

fn websocket(req: &Request<'_>, ctx: &mut Ctx<'_>) -> Decision {
    let accept = match check_upgrade(req) {
        Ok(a) => a,
        Err(UpgradeError::BadMethod) => {
            return refuse(405, vec![("Allow", "GET".into())], "WebSocket needs GET");
        }
        Err(UpgradeError::NotUpgrade) => {
            return refuse(
                426,
                vec![("Upgrade", "websocket".into()), ("Sec-WebSocket-Version", "13".into())],
                "this is a WebSocket endpoint: send an Upgrade: websocket request",
            )
        }
        Err(UpgradeError::BadVersion) => {
            return refuse(
                426,
                vec![("Sec-WebSocket-Version", "13".into())],
                "unsupported Sec-WebSocket-Version: only 13 is supported",
            )
        }
        Err(UpgradeError::BadRequest(why)) => return refuse(400, Vec::new(), why),
    };
    let identity = match identify(req, ctx, true, true) {
        Ok(id) => id,
        Err(d) => return d,
    };
    let v1 = req.path == "/ws" && req.offers_protocol(v1::SUBPROTOCOL);
    let kind = if req.path == "/echo" {
        WsKind::Echo
    } else if v1 {
        WsKind::V1
    } else {
        match room_param(req) {
            Ok(room) => WsKind::Raw { room },
            Err(why) => return refuse(400, Vec::new(), why),
        }
    };

    if let WsKind::Raw { room } = &kind {
        if !identity.may_join(room) {
            return refuse(403, Vec::new(), format!("this token may not join room {room:?}"));
        }
    }
    let deflate = ctx.deflate && crate::proto::ws::deflate::accepts(req.ws_extensions.iter().flatten().copied());
    Decision::Upgrade { accept, kind, identity, protocol: v1.then_some(v1::SUBPROTOCOL), deflate }
}

/// The `room` query parameter, percent-decoded (`+` is a space), a valid room name.
pub fn room_param(req: &Request<'_>) -> Result<String, Cow<'static, str>> {
    let room = match req.query_param("room") {
        None => return Err("missing room: connect to /ws?room=NAME".into()),
        Some(Err(e)) => return Err(format!("room: {e}").into()),
        Some(Ok(r)) => r,
    };
    v1::check_room_name(&room).map_err(|e| Cow::Owned(format!("{e}: connect to /ws?room=NAME")))?;
    Ok(room)
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "v1::present")]
    data: Option<&'a RawValue>,
    from: Option<Cow<'a, str>>,
}

fn api(req: &Request<'_>, body: &Body<'_>, ctx: &mut Ctx<'_>, close: bool) -> Decision {
    let Some(key) = ctx.api_key else {
        return text(404, "not found\n", close, false);
    };
    match req.bearer() {
        Some(t) if constant_time_eq(t.as_bytes(), key.as_bytes()) => {}
        _ => return json_error(401, "an API key is required: Authorization: Bearer KEY", close),
    }
    let method_not_allowed = |allow: &'static str| {
        let mut d = json_error(405, &format!("use {allow}"), close);
        if let Decision::Respond(r) = &mut d {
            r.headers.push(("Allow", allow.into()));
        }
        d
    };
    if req.path == "/api/publish" {
        if req.method != "POST" {
            return method_not_allowed("POST");
        }
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(_) => return json_error(400, "the body is not UTF-8", close),
        };
        let b: PublishBody<'_> = match serde_json::from_str(text) {
            Ok(b) => b,
            Err(e) => return json_error(400, &format!("invalid JSON: {e}"), close),
        };
        let Some(room) = b.room else {
            return json_error(400, "missing \"room\"", close);
        };
        if let Err(e) = v1::check_room_name(&room) {
            return json_error(400, e, close);
        }
        let Some(data) = b.data else {
            return json_error(400, "missing \"data\"", close);
        };
        if let Some(f) = &b.from {
            if let Err(e) = crate::auth::check_user(f) {
                return json_error(400, &format!("from {e}"), close);
            }
        }
        let call =
            ApiCall::Publish { room: room.into_owned(), data: data.get().into(), from: b.from.map(Cow::into_owned) };
        return Decision::Api { call, close };
    }
    let Some(rest) = req.path.strip_prefix("/api/rooms/") else {
        return json_error(404, "no such API route", close);
    };
    let (raw_room, what) = match rest.rsplit_once('/') {
        Some(x) => x,
        None => return json_error(404, "no such API route", close),
    };
    if !matches!(what, "presence" | "history") {
        return json_error(404, "no such API route", close);
    }
    if req.method != "GET" {
        return method_not_allowed("GET");
    }
    let room = match path_decode(raw_room) {
        Some(r) => r,
        None => return json_error(400, "room: invalid percent-encoding", close),
    };
    if let Err(e) = v1::check_room_name(&room) {
        return json_error(400, e, close);
    }
    if what == "presence" {
        return Decision::Api { call: ApiCall::Presence { room }, close };
    }
    let since = match req.query_param("since") {
        None => None,
        Some(Ok(s)) => match Position::parse(&s) {
            Some(p) => Some(p),
            None => return json_error(400, "since must be EPOCH:SEQ", close),
        },
        Some(Err(e)) => return json_error(400, &format!("since: {e}"), close),
    };
    let limit = match req.query_param("limit") {
        None => None,
        Some(Ok(l)) => match l.parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return json_error(400, "limit must be a non-negative integer", close),
        },
        Some(Err(e)) => return json_error(400, &format!("limit: {e}"), close),
    };
    Decision::Api { call: ApiCall::History { room, since, limit }, close }
}

/// Percent-decode a path segment (`+` stays `+` in paths).
fn path_decode(s: &str) -> Option<String> {
    String::from_utf8(crate::proto::http::percent_decode_path(s.as_bytes())?).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::{parse, Limits, Parsed};

    fn decide_with(head: &str, auth: &Auth, api_key: Option<&str>) -> Decision {
        let mut ctx = Ctx {
            auth,
            api_key,
            restrict: Restrict::None,
            transports: Transports::ALL,
            max_rooms: 3,
            demo: true,
            deflate: true,
        };
        match parse(head.as_bytes(), Limits { max_head: 16 * 1024, max_body: 1 << 20 }) {
            Parsed::Complete { req, body, .. } => route(&req, &body, &mut ctx),
            other => panic!("{other:?}"),
        }
    }

    fn decide(head: &str) -> Decision {
        decide_with(head, &Auth::new(None, None).unwrap(), None)
    }

    fn ws(target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Respond(r) => r.status,
            Decision::Upgrade { .. } => 101,
            Decision::Api { .. } | Decision::Sse { .. } | Decision::Poll { .. } => 200,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(status(&decide("GET /healthz HTTP/1.1\r\n\r\n")), 200);
        assert_eq!(status(&decide("GET /metrics HTTP/1.1\r\n\r\n")), 200);
        assert_eq!(status(&decide("POST /healthz HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(&decide("GET /nope HTTP/1.1\r\n\r\n")), 404);
        match decide(&ws("/echo", "")) {
            Decision::Upgrade { accept, kind: WsKind::Echo, protocol: None, identity, deflate: false } => {
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert!(identity.is_anonymous());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(decide(&ws("/ws?room=lobby", "")), Decision::Upgrade { kind: WsKind::Raw { room }, .. } if room == "lobby")
        );
        assert!(
            matches!(decide(&ws("/?x=1&room=a%20b+c", "")), Decision::Upgrade { kind: WsKind::Raw { room }, .. } if room == "a b c")
        );
        assert!(matches!(
            decide(&ws("/ws?user=ann", "Sec-WebSocket-Protocol: chat, c100k.v1\r\n")),
            Decision::Upgrade { kind: WsKind::V1, protocol: Some("c100k.v1"), identity, .. } if &**identity.user() == "ann"
        ));
        assert!(matches!(
            decide(&ws("/ws?room=r", "Sec-WebSocket-Protocol: chat\r\n")),
            Decision::Upgrade { kind: WsKind::Raw { .. }, protocol: None, .. }
        ));
        assert!(!decide("GET /healthz HTTP/1.1\r\n\r\n").is_handshake_failure());
        assert!(
            matches!(decide("GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"), Decision::Respond(r) if r.close)
        );
        assert!(matches!(decide("GET /healthz HTTP/1.1\r\n\r\n"), Decision::Respond(r) if !r.close));
    }

    #[test]
    fn rejections() {
        assert_eq!(status(&decide("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
        assert_eq!(status(&decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
        assert_eq!(status(&decide(&ws("/ws", ""))), 400);
        assert_eq!(status(&decide(&ws("/ws?room=", ""))), 400);
        assert_eq!(status(&decide(&ws("/ws?room=%zz", ""))), 400);
        assert_eq!(status(&decide(&ws("/ws?room=a%00b", ""))), 400, "NUL in a room name");
        assert_eq!(status(&decide(&ws("/ws?room=%+1", ""))), 400);
        assert_eq!(status(&decide(&ws(&format!("/ws?room={}", "a".repeat(300)), ""))), 400);
        assert_eq!(status(&decide(&ws("/echo", "").replacen("GET", "POST", 1))), 405);
        let v = decide(&ws("/echo", "").replace("Version: 13", "Version: 7"));
        assert_eq!(status(&v), 426);
        assert!(matches!(&v, Decision::Respond(r) if r.headers.contains(&("Sec-WebSocket-Version", "13".into()))));
        assert_eq!(status(&decide(&ws("/echo", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "AAAA"))), 400);
        assert!(decide(&ws("/ws", "")).is_handshake_failure());
        assert!(matches!(decide(&ws("/ws", "")), Decision::Respond(r) if r.close));
    }

    #[test]
    fn tokens_origins_and_room_permissions() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let auth = Auth::new(Some(b"k"), Some(&["https://good.example".into()])).unwrap();
        let tok = |claims: serde_json::Value| {
            encode(&Header::default(), &claims, &EncodingKey::from_secret(b"k").unwrap()).unwrap()
        };
        let t = tok(serde_json::json!({"sub":"ann","rooms":["lobby"]}));
        let d = |target: &str, extra: &str| decide_with(&ws(target, extra), &auth, None);
        assert_eq!(status(&d("/echo", "")), 401);
        assert_eq!(d("/ws?room=lobby", "").refused(), Some(Refused::Auth));
        assert_eq!(status(&d(&format!("/ws?room=lobby&token={t}"), "")), 101);
        assert_eq!(status(&d("/ws?room=lobby", &format!("Authorization: Bearer {t}\r\n"))), 101);
        assert_eq!(status(&d(&format!("/ws?room=other&token={t}"), "")), 403);
        assert_eq!(status(&d(&format!("/ws?room=lobby&token={t}x"), "")), 401);
        let evil = d(&format!("/ws?room=lobby&token={t}"), "Origin: https://evil.example\r\n");
        assert_eq!((status(&evil), evil.refused()), (403, Some(Refused::Origin)));
        assert_eq!(status(&d(&format!("/ws?room=lobby&token={t}"), "Origin: https://good.example\r\n")), 101);
        // v1 checks rooms per join, not at the handshake.
        assert_eq!(status(&d(&format!("/ws?token={t}"), "Sec-WebSocket-Protocol: c100k.v1\r\n")), 101);
    }

    #[test]
    fn api_routes() {
        let auth = Auth::new(None, None).unwrap();
        let d = |req: &str, key: Option<&str>| decide_with(req, &auth, key);
        let post = |body: &str, auth: &str| {
            format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len())
        };
        let k = "Authorization: Bearer sekret\r\n";
        assert_eq!(status(&d(&post(r#"{"room":"r","data":1}"#, k), None)), 404, "no --api-key: no API");
        assert_eq!(status(&d(&post(r#"{"room":"r","data":1}"#, ""), Some("sekret"))), 401);
        assert_eq!(
            status(&d(&post(r#"{"room":"r","data":1}"#, "Authorization: Bearer nope\r\n"), Some("sekret"))),
            401
        );
        assert_eq!(
            d(&post(r#"{"room":"r","data":{"a":[1]},"from":"bot"}"#, k), Some("sekret")),
            Decision::Api {
                call: ApiCall::Publish { room: "r".into(), data: r#"{"a":[1]}"#.into(), from: Some("bot".into()) },
                close: false
            }
        );
        for bad in ["{", r#"{"data":1}"#, r#"{"room":"r"}"#, r#"{"room":"","data":1}"#, "[]"] {
            assert_eq!(status(&d(&post(bad, k), Some("sekret"))), 400, "{bad}");
        }
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{k}\r\n");
        assert_eq!(
            d(&get("/api/rooms/a%2Fb/presence"), Some("sekret")),
            Decision::Api { call: ApiCall::Presence { room: "a/b".into() }, close: false }
        );
        assert_eq!(
            d(&get("/api/rooms/r/history?since=e1:5&limit=10"), Some("sekret")),
            Decision::Api {
                call: ApiCall::History {
                    room: "r".into(),
                    since: Some(Position { epoch: "e1".into(), seq: 5 }),
                    limit: Some(10)
                },
                close: false
            }
        );
        assert_eq!(status(&d(&get("/api/rooms/r/history?since=5"), Some("sekret"))), 400);
        assert_eq!(status(&d(&get("/api/rooms/r/other"), Some("sekret"))), 404);
        assert_eq!(status(&d(&get("/api/publish"), Some("sekret"))), 405);
    }

    #[test]
    fn sse_poll_and_post_routes() {
        let get = |target: &str, extra: &str| decide(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"));
        match get("/sse?room=a&room=b&room=a&presence=1&user=ann", "") {
            Decision::Sse { rooms, presence: true, identity } => {
                assert_eq!(rooms, vec![("a".into(), None), ("b".into(), None)], "duplicates folded");
                assert_eq!(&**identity.user(), "ann");
            }
            other => panic!("{other:?}"),
        }
        let pos = |e: &str, s| Some(Position { epoch: e.into(), seq: s });
        match get("/sse?room=a&room=b%2Cc", "Last-Event-ID: a:e1:4,b%2Cc:e2:9,gone:e3:1\r\n") {
            Decision::Sse { rooms, .. } => {
                assert_eq!(rooms, vec![("a".into(), pos("e1", 4)), ("b,c".into(), pos("e2", 9))])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(get("/sse?room=a&since=e:3", ""), Decision::Sse { rooms, .. } if rooms[0].1 == pos("e", 3)));
        assert!(
            matches!(get("/sse?room=a&lastEventId=a:e:3", ""), Decision::Sse { rooms, .. } if rooms[0].1 == pos("e", 3))
        );
        assert_eq!(status(&get("/sse?room=a&room=b&since=e:3", "")), 400, "since is one room's");
        assert_eq!(status(&get("/sse?room=a&room=b&room=c&room=d", "")), 400, "over max_rooms");
        assert_eq!(status(&get("/sse", "")), 400);
        assert_eq!(status(&get("/sse?room=a", "Last-Event-ID: nonsense\r\n")), 400);
        assert!(!get("/sse", "").is_handshake_failure(), "not a WebSocket");
        match get("/poll?room=r&since=e%3A7", "") {
            Decision::Poll { room, since, close: false, .. } => assert_eq!((room.as_str(), since), ("r", pos("e", 7))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(get("/poll?room=r", ""), Decision::Poll { since: None, .. }));
        let post = |path: &str, body: &str| {
            decide(&format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()))
        };
        match post("/rooms/a%2Fb/messages?user=bo", r#"{"data":{"x":[1]}}"#) {
            Decision::Api { call: ApiCall::Send { room, data, identity }, close: false } => {
                assert_eq!((room.as_str(), &*data, &**identity.user()), ("a/b", r#"{"x":[1]}"#, "bo"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status(&post("/rooms/a/messages", "{}")), 400);
        assert_eq!(status(&post("/rooms/a/presence", "")), 405);
        assert!(matches!(get("/rooms/a/presence", ""), Decision::Api { call: ApiCall::MemberPresence { .. }, .. }));
        match decide("OPTIONS /rooms/a/messages HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n") {
            Decision::Respond(r) => {
                assert_eq!(r.status, 204);
                assert!(r.headers.contains(&(CORS.0, CORS.1.into())));
            }
            other => panic!("{other:?}"),
        }
        match get("/", "") {
            Decision::Respond(Response { status: 200, body: Reply::Static(ctype, _), .. }) => {
                assert!(ctype.starts_with("text/html"))
            }
            other => panic!("{other:?}"),
        }
    }
}
