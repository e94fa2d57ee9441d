//! The fuzz targets' bodies: every parser that reads peer bytes, driven through its normal code
//! path. `fuzz/fuzz_targets/*` (cargo fuzz, libFuzzer) call these, and `tests/fuzz_corpus.rs`
//! replays the committed corpora through them, so a crash found once stays a regression test.
//!
//! Each function must not panic for any input; where a parser has an inverse (SSE ids), the
//! round trip is checked too.

use crate::auth::Auth;
use crate::proto::http::{self, Limits, Parsed};
use crate::proto::sse;
use crate::proto::v1;
use crate::proto::ws::frame::Role;
use crate::proto::ws::handshake;
use crate::proto::ws::session::{Event, Session, SessionConfig};
use crate::server::routes::{self, Ctx, Restrict, Transports};

/// A server that requires tokens and checks origins, so routing reaches token and origin code.
fn auth() -> &'static Auth {
    static AUTH: std::sync::OnceLock<Auth> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| Auth::new(Some(b"fuzz-secret"), Some(&["https://ok.example".into()])).expect("valid"))
}

/// HTTP/1.1 requests, pipelined: each complete one is routed (WebSocket upgrades, SSE, polls,
/// POSTs, the API), then the next is parsed from what follows.
pub fn http_request(data: &[u8]) {
    let limits = Limits { max_head: 16 * 1024, max_body: 64 * 1024 };
    let mut rest = data;
    for restrict in [Restrict::None, Restrict::Full] {
        rest = data;
        while !rest.is_empty() {
            match http::parse(rest, limits) {
                Parsed::Complete { req, body, len } => {
                    let mut ctx = Ctx {
                        auth: auth(),
                        api_key: Some("fuzz-key"),
                        restrict,
                        transports: Transports::ALL,
                        max_rooms: 4,
                        demo: true,
                        deflate: true,
                    };
                    let d = routes::route(&req, &body, &mut ctx);
                    let _ = (d.is_handshake_failure(), d.refused());
                    if len == 0 {
                        return; // never: a complete request has a head
                    }
                    rest = &rest[len..];
                }
                Parsed::Partial { .. } | Parsed::Error(_) => break,
            }
        }
    }
    let _ = rest;
}

/// WebSocket frames from a client, cut into chunks the way reads would: the first byte picks
/// the chunk sizes. Messages go through the v1 command parser, as on `/ws` with `c100k.v1`.
pub fn ws_session(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else { return };
    let cfg = SessionConfig {
        role: Role::Server,
        max_message: 4096,
        ping_interval: 10,
        pong_timeout: 5,
        handshake_timeout: 10,
        close_timeout: 5,
        message_timeout: 20,
    };
    let mut sess = Session::new_handshake(0);
    let _ = sess.open(0, &cfg);
    // Half the seeds speak permessage-deflate: compressed messages are inflated too.
    sess.set_deflate(seed & 0x80 != 0);
    let mut out = Vec::new();
    let mut off = 0;
    let mut tick = 0u32;
    let step = usize::from(seed & 0x7f) % 17 + 1;
    while off < input.len() {
        // Chunk sizes vary around `step` (1 byte at a time for seed 0).
        let len = (step + off % 3).min(input.len() - off);
        let mut chunk = input[off..off + len].to_vec();
        off += len;
        tick = tick.wrapping_add(1);
        let mut rest: &mut [u8] = &mut chunk;
        loop {
            match sess.feed(&mut rest, tick, &mut out, &cfg) {
                None => break,
                Some(Event::Message { text, data }) => {
                    if text {
                        if let Ok(s) = std::str::from_utf8(&data) {
                            let _ = v1::parse(s);
                        }
                    }
                }
                Some(Event::Finish(_)) => return,
            }
        }
        let _ = sess.on_timer(tick, &mut out, &cfg);
        out.clear();
    }
}

/// v1 commands as text.
pub fn v1_command(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok((id, cmd)) = v1::parse(s) {
            let _ = (id.map(|i| i.get().len()), cmd.room().len());
        }
    }
}

/// SSE stream positions (`Last-Event-ID`) and `EPOCH:SEQ` positions; a parsed id written back
/// parses to the same positions.
pub fn sse_position(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = v1::Position::parse(s);
    if let Some(positions) = sse::parse_id(s) {
        let id = sse::format_id(positions.iter().map(|(r, p)| (r.as_str(), p.epoch.as_str(), p.seq)));
        let again = sse::parse_id(&id).expect("an id we wrote parses");
        assert_eq!(again, positions, "round trip of {s:?} through {id:?}");
    }
    let mut ev = Vec::new();
    sse::write_event(&mut ev, None, "msg", data);
    assert!(ev.ends_with(b"\n\n") && !ev[..ev.len() - 2].windows(2).any(|w| w == b"\n\n"), "one event");
}

/// What a WebSocket client reads first: the server's response to its upgrade request.
pub fn client_response(data: &[u8]) {
    match handshake::parse_response(data, "dGhlIHNhbXBsZSBub25jZQ==") {
        handshake::ParsedResponse::Complete { len, .. } => assert!(len <= data.len()),
        handshake::ParsedResponse::Partial | handshake::ParsedResponse::Malformed => {}
    }
}

/// permessage-deflate: arbitrary compressed input inflates or fails cleanly within the limit, and
/// whatever we compress inflates back to itself.
pub fn deflate(data: &[u8]) {
    use crate::proto::ws::deflate::{compress, inflate, InflateError};
    match inflate(data, 64 * 1024) {
        Ok(out) => assert!(out.len() <= 64 * 1024),
        Err(InflateError::TooBig | InflateError::Invalid) => {}
    }
    assert_eq!(inflate(&compress(data), data.len().max(1)).as_deref(), Ok(data), "round trip");
}

/// A self-signed ECDSA P-256 certificate for `localhost` and its key, made for the fuzz target and
/// the TLS adapter's unit tests only (it protects nothing).
pub const TEST_CERT: (&str, &str) = (
    "-----BEGIN CERTIFICATE-----\nMIIBkTCCATigAwIBAgIUKkZGqO53o6dsb0lmii5W7/dcJWMwCgYIKoZIzj0EAwIw\nFDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwMTE0NDQ0MVoYDzIxMjYxMTA3\nMTQ0NDQxWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\nPQMBBwNCAATceHTKJHgrSyeIvjfT3GFxlld5SDA306CWKcExsoo94yEz0lhqH1J3\nxqjRXVoP+wn5NPjrYaOSuD2MlE4KZfExo2YwZDAdBgNVHQ4EFgQUefz1Q37t1zLI\nGgWKRMMx1KRDcJMwHwYDVR0jBBgwFoAUefz1Q37t1zLIGgWKRMMx1KRDcJMwFAYD\nVR0RBA0wC4IJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwCgYIKoZIzj0EAwIDRwAw\nRAIgDjJgDouIqaCJsMzMEwsPidAM8WlwQd7y95hJKKV9ln8CIGBURcXfZFhdu20H\nCizBLSbq1OK1aw44JYA9urkiGM3H\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMsbQJJvvQSmzqQwm\nTTP4vqYmvfZffeQw6w3a4oyCZRahRANCAATceHTKJHgrSyeIvjfT3GFxlld5SDA3\n06CWKcExsoo94yEz0lhqH1J3xqjRXVoP+wn5NPjrYaOSuD2MlE4KZfEx\n-----END PRIVATE KEY-----\n",
);

/// Who the TLS tests and fuzz targets pair: the server as it configures itself (unless
/// `server` says otherwise) and a rustls client.
#[derive(Default)]
pub struct TlsTestPeers {
    /// The server's provider instead of [`crate::net::tls::server_provider`].
    pub server: Option<rustls::crypto::CryptoProvider>,
    /// The only suites the client offers, in its order of preference.
    pub client_suites: Option<Vec<rustls::CipherSuite>>,
    /// The client speaks TLS 1.2 only.
    pub tls12: bool,
}

/// A server configuration made the way the server makes its own (suite order, hand-off,
/// tickets; ALPN `http/1.1`) with [`TEST_CERT`], and a client configuration trusting it.
pub fn tls_test_configs(
    peers: &TlsTestPeers,
) -> (std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>) {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(TEST_CERT.0.as_bytes()).expect("test cert");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(TEST_CERT.1.as_bytes()).expect("test key");
    let provider = peers.server.clone().unwrap_or_else(crate::net::tls::server_provider);
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("cert");
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    server.send_tls13_tickets = 1;
    crate::net::tls::prepare(&mut server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(only) = &peers.client_suites {
        provider.cipher_suites =
            only.iter().filter_map(|id| provider.cipher_suites.iter().find(|s| s.suite() == *id).copied()).collect();
    }
    let versions: &[&rustls::SupportedProtocolVersion] =
        if peers.tls12 { &[&rustls::version::TLS12] } else { rustls::DEFAULT_VERSIONS };
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(server), Arc::new(client))
}

/// The server's TLS adapter fed what a hostile client might send: the input is cut into pieces
/// (its first byte picks the piece size) and given to a fresh connection, as reads would.
/// Whatever rustls accepts or refuses, nothing panics, and nothing is sent before a handshake.
pub fn tls_server(data: &[u8]) {
    use crate::net::tls::ServerTls;
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ServerConfig>> = std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| tls_test_configs(&TlsTestPeers::default()).0);
    let Some((&first, rest)) = data.split_first() else { return };
    let piece = usize::from(first % 64) + 1;
    let Ok(mut tls) = ServerTls::new(config.clone()) else { return };
    let (mut plain, mut out) = (Vec::new(), Vec::new());
    let mut input = rest.to_vec();
    for chunk in input.chunks_mut(piece) {
        if tls.receive(chunk, &mut plain, &mut out).is_err() {
            return;
        }
    }
    assert!(plain.is_empty() || tls.is_open(), "application data only after a handshake");
    if tls.is_open() {
        let _ = tls.encrypt(b"reply", &mut out);
    }
    let _ = tls.close_notify(&mut out);
}

/// The server's records after a TLS 1.3 handshake (the handed-off connection, see
/// [`crate::net::tls`]), against a real rustls client driven by the input: each byte an action
/// (the client sends data, updates its keys, closes; the server sends data; the bytes on the
/// wire are cut differently, tampered with, or junk is added). Untampered, everything sent must
/// arrive intact both ways and neither side may fail; tampered, the server may only refuse.
pub fn tls_records(data: &[u8]) {
    use crate::net::tls::ServerTls;
    use std::io::Write;
    type Configs = (std::sync::Arc<rustls::ServerConfig>, std::sync::Arc<rustls::ClientConfig>);
    static CONFIGS: std::sync::OnceLock<Configs> = std::sync::OnceLock::new();
    let (sc, cc) = CONFIGS.get_or_init(|| tls_test_configs(&TlsTestPeers::default()));
    let Ok(s) = ServerTls::new(sc.clone()) else { return };
    let c = rustls::ClientConnection::new(cc.clone(), "localhost".try_into().expect("name")).expect("client");
    let mut w = Wire { c, s, piece: 1 << 20, tampered: false, plain: Vec::new(), out: Vec::new(), owed: Vec::new() };
    let pattern = |n: usize, salt: u8| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect() };
    for _ in 0..4 {
        if !w.exchange(Vec::new()) {
            return;
        }
    }
    let (mut sent, mut closed, mut updates) = (Vec::new(), false, 0);
    let mut script = data.iter().copied();
    while let Some(op) = script.next() {
        let mut junk = Vec::new();
        let mut arg = || script.next().unwrap_or(0);
        match op % 8 {
            0 if !closed => {
                let d = pattern(usize::from(arg()) * 67, op);
                if w.c.writer().write_all(&d).is_ok() {
                    sent.extend_from_slice(&d);
                    if !d.is_empty() {
                        updates = 0;
                    }
                }
            }
            1 if !closed => {
                let _ = w.c.refresh_traffic_keys();
                // Past 32 key updates without data between them the server may refuse (so do
                // rustls and BoringSSL): that is the client misbehaving.
                updates += 1;
                w.tampered |= updates > 32;
            }
            2 => {
                let n = usize::from(arg() % 16);
                junk = (0..n).map(|_| arg()).collect();
                w.tampered = true;
            }
            3 => w.piece = usize::from(arg()) % 300 + 1,
            4 if w.s.is_open() => {
                let d = pattern(usize::from(arg()) * 131, op);
                if w.s.encrypt(&d, &mut w.out).is_ok() {
                    w.owed.extend_from_slice(&d);
                } else {
                    assert!(w.tampered || w.s.sent_close(), "the server could not send");
                }
            }
            5 if !closed => {
                w.c.send_close_notify();
                closed = true;
            }
            6 => {
                let _ = w.s.close_notify(&mut w.out);
            }
            7 => {
                // Flip a bit in what the client is about to send.
                let (at, bit) = (arg(), arg());
                let mut wire = Vec::new();
                while w.c.wants_write() {
                    let _ = w.c.write_tls(&mut wire);
                }
                if let Some(b) = wire.get_mut(usize::from(at)) {
                    *b ^= 1 << (bit % 8);
                    w.tampered = true;
                }
                junk.splice(0..0, wire);
            }
            _ => {}
        }
        if !w.exchange(junk) {
            return;
        }
    }
    if !w.tampered {
        assert!(w.s.is_open(), "the handshake completes");
        assert_eq!(w.plain, sent, "the server read what the client sent");
        assert!(w.owed.is_empty(), "the client read what the server sent");
    }
}

/// [`tls_records`]' two ends and what is owed between them.
struct Wire {
    c: rustls::ClientConnection,
    s: crate::net::tls::ServerTls,
    /// The size of the server's reads.
    piece: usize,
    /// Either side may now refuse (bytes were changed or added, or the client went past its
    /// allowance of key updates): failures are allowed, no longer checked.
    tampered: bool,
    /// What the server read.
    plain: Vec<u8>,
    /// What the server sends, before it goes to the client.
    out: Vec<u8>,
    /// What the server sent that the client has not read yet.
    owed: Vec<u8>,
}

impl Wire {
    /// The client's bytes (and `junk`) to the server, cut into reads, then the server's to the
    /// client. Whether both are still going.
    fn exchange(&mut self, junk: Vec<u8>) -> bool {
        use std::io::Read;
        let mut wire = Vec::new();
        while self.c.wants_write() {
            let _ = self.c.write_tls(&mut wire);
        }
        wire.extend_from_slice(&junk);
        for chunk in wire.chunks_mut(self.piece) {
            if let Err(e) = self.s.receive(chunk, &mut self.plain, &mut self.out) {
                assert!(self.tampered, "the server refused an untampered stream: {e}");
                return false;
            }
        }
        let out = std::mem::take(&mut self.out);
        let mut rd = &out[..];
        while !rd.is_empty() {
            let read = match self.c.read_tls(&mut rd) {
                // rustls reads nothing after the server's close_notify.
                Ok(0) => Err("the server sent records after its close_notify".to_string()),
                Ok(_) => self.c.process_new_packets().map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = read {
                assert!(self.tampered, "the client refused what the server sent: {e}");
                return false;
            }
        }
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.c.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            let want: Vec<u8> = self.owed.drain(..n.min(self.owed.len())).collect();
            assert!(self.tampered || want == buf[..n], "the client read something else than was sent");
        }
        true
    }
}
