//! TLS on a connection, sans-IO: rustls' unbuffered server API fed the bytes the socket gave,
//! giving back the application data and the records to send.
//!
//! Why the unbuffered API: a buffered `ServerConnection` keeps its own receive and send buffers
//! (4 KiB and up per connection, for as long as it lives). Here the caller owns the buffers: the
//! loop reads into its one read buffer, decrypted data goes to one scratch buffer per loop, and
//! records go straight to the socket (or the connection's outbound queue when it refuses them).
//! An idle connection keeps only rustls' state and, rarely, the tail of a record that came split
//! over two reads.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

/// The first byte of a TLS handshake record; anything else opening a connection is not TLS.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Record overhead upper bound (header, TLS 1.3 content type, AEAD tag; TLS 1.2 explicit nonce).
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// Why a connection's TLS ended in failure.
#[derive(Debug)]
pub enum TlsError {
    /// The first bytes were not a TLS handshake; `http` when they look like a plain HTTP request
    /// (it can be told so in plain text).
    NotTls { http: bool },
    /// rustls refused the peer's bytes (a bad ClientHello, a bad record, an alert...).
    Rustls(rustls::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::NotTls { http: true } => f.write_str("a plain HTTP request on the TLS port"),
            TlsError::NotTls { http: false } => f.write_str("not a TLS handshake"),
            TlsError::Rustls(e) => write!(f, "{e}"),
        }
    }
}

/// What a call to [`ServerTls::receive`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed with these bytes.
    pub opened: bool,
    /// The peer sent close_notify: no more data will come (like EOF).
    pub peer_closed: bool,
}

/// One connection's TLS state.
pub struct ServerTls {
    conn: UnbufferedServerConnection,
    /// The start of a record whose end has not arrived yet (empty, unallocated, almost always).
    partial: Vec<u8>,
    open: bool,
    seen_bytes: bool,
    sent_close: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("open", &self.open).field("partial", &self.partial.len()).finish()
    }
}

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(ServerTls {
            conn: UnbufferedServerConnection::new(config)?,
            partial: Vec::new(),
            open: false,
            seen_bytes: false,
            sent_close: false,
        })
    }

    /// The handshake is done: application data flows.
    /// The protocol agreed by ALPN, once the handshake is done.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// close_notify went out.
    pub fn sent_close(&self) -> bool {
        self.sent_close
    }

    /// Bytes held for an incomplete record.
    pub fn buffered(&self) -> usize {
        self.partial.capacity()
    }

    /// Process `input`, ciphertext just read: application data is appended to `plain`, records
    /// to send (handshake flights, alerts, key updates) to `out`. An incomplete record at the end
    /// is kept for the next call.
    pub fn receive(&mut self, input: &mut [u8], plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Received, TlsError> {
        if !self.seen_bytes && !input.is_empty() {
            self.seen_bytes = true;
            if input[0] != HANDSHAKE_RECORD {
                return Err(TlsError::NotTls { http: input[0].is_ascii_uppercase() });
            }
        }
        let mut joined;
        let buf: &mut [u8] = if self.partial.is_empty() {
            input
        } else {
            joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(input);
            &mut joined
        };
        let mut got = Received::default();
        let mut off = 0;
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut buf[off..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    off += discard;
                    Self::alert(&mut self.conn, &mut buf[off..], out);
                    return Err(TlsError::Rustls(e));
                }
            };
            let more = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(TlsError::Rustls)?;
                        discard += rec.discard;
                        plain.extend_from_slice(rec.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(out, |b| e.encode(b))?;
                    true
                }
                ConnectionState::TransmitTlsData(t) => {
                    // `out` goes to the socket (or its queue) right after this call: sent.
                    t.done();
                    true
                }
                ConnectionState::PeerClosed => {
                    got.peer_closed = true;
                    true
                }
                ConnectionState::WriteTraffic(_) => false,
                ConnectionState::BlockedHandshake | ConnectionState::Closed => false,
                _ => return Err(TlsError::Rustls(rustls::Error::General("early data is not accepted".into()))),
            };
            off += discard;
            if !more {
                break;
            }
        }
        let rest = &buf[off..];
        if !rest.is_empty() {
            self.partial = rest.to_vec();
        }
        // Done when the client's Finished is verified, not when we may send (TLS 1.3 lets the
        // server send right after its own flight).
        if !self.open && !self.conn.is_handshaking() {
            self.open = true;
            got.opened = true;
        }
        Ok(got)
    }

    /// After an error: the records rustls queued, ending with the fatal alert (the peer learns
    /// why), appended to `out`. The message that failed may have queued others first, e.g. a
    /// ServerHello before an ALPN refusal.
    ///
    /// `rest` is what was not discarded: rustls' handshake joiner may point into it, so every
    /// call gets the bytes it has not released, never a fresh buffer. Queued records come out
    /// before any input is looked at; the loop stops at the alert, because one more call would
    /// look at the input again, and a record that failed to decrypt is not discarded, so it
    /// would fail (and be alerted) again.
    fn alert(conn: &mut UnbufferedServerConnection, rest: &mut [u8], out: &mut Vec<u8>) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = conn.process_tls_records(rest);
            let Ok(ConnectionState::EncodeTlsData(mut e)) = state else { return };
            let at = out.len();
            if encode(out, |b| e.encode(b)).is_err() || is_alert(&out[at..]) {
                return;
            }
        }
    }

    /// Encrypt `data` as application data records, appended to `out`.
    pub fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.write_with(out, data.len() + data.len().div_ceil(MAX_FRAGMENT).max(1) * RECORD_OVERHEAD, |w, b| {
            w.encrypt(data, b)
        })
    }

    /// A close_notify alert, once (nothing before the handshake is done).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.open || self.sent_close {
            return Ok(());
        }
        self.sent_close = true;
        self.write_with(out, 64, |w, b| w.queue_close_notify(b))
    }

    fn write_with(
        &mut self,
        out: &mut Vec<u8>,
        need: usize,
        f: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), TlsError> {
        // The bytes rustls has not released go back in (see `alert`); with the handshake done and
        // every complete record processed, they are at most the start of a record (discard 0).
        let mut held = std::mem::take(&mut self.partial);
        let r = Self::write_into(&mut self.conn, &mut held, out, need, f);
        self.partial = held;
        r
    }

    fn write_into(
        conn: &mut UnbufferedServerConnection,
        held: &mut [u8],
        out: &mut Vec<u8>,
        need: usize,
        mut f: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), TlsError> {
        loop {
            let UnbufferedStatus { state, .. } = conn.process_tls_records(held);
            match state.map_err(TlsError::Rustls)? {
                ConnectionState::EncodeTlsData(mut e) => encode(out, |b| e.encode(b))?,
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    return append(out, need, |b| {
                        f(&mut w, b).map_err(|e| match e {
                            EncryptError::InsufficientSize(s) => Short::Need(s.required_size),
                            EncryptError::EncryptExhausted => {
                                Short::Stop(Err(TlsError::Rustls(rustls::Error::EncryptError)))
                            }
                        })
                    })
                }
                _ => return Err(TlsError::Rustls(rustls::Error::General("the connection cannot send".into()))),
            }
        }
    }
}

/// An alert record: in the clear or TLS 1.2 (type 21), or TLS 1.3 protected (type 23 and exactly
/// the size of a two-byte alert: header 5 + alert 2 + content type 1 + AEAD tag 16).
fn is_alert(record: &[u8]) -> bool {
    match record.first() {
        Some(21) => true,
        Some(23) => record.len() == 5 + 2 + 1 + 16,
        _ => false,
    }
}

/// Why `append`'s writer did not write.
enum Short {
    /// The space was too small: this much is needed.
    Need(usize),
    /// Nothing is written; the result to give.
    Stop(Result<(), TlsError>),
}

/// Append what `f` writes to `out`, growing the space to what `f` says it needs.
fn append(
    out: &mut Vec<u8>,
    mut need: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> Result<(), TlsError> {
    loop {
        let at = out.len();
        out.resize(at + need, 0);
        match f(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(Short::Need(n)) => {
                out.truncate(at);
                need = n;
            }
            Err(Short::Stop(r)) => {
                out.truncate(at);
                return r;
            }
        }
    }
}

/// Append one encoded handshake record to `out`.
fn encode(out: &mut Vec<u8>, mut f: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) -> Result<(), TlsError> {
    append(out, 1024, |b| {
        f(b).map_err(|e| match e {
            EncodeError::InsufficientSize(s) => Short::Need(s.required_size),
            EncodeError::AlreadyEncoded => Short::Stop(Ok(())),
        })
    })
}

thread_local! {
    /// Ciphertext scratch: one per thread, not one per connection.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_FRAGMENT + RECORD_OVERHEAD));
}

/// Run `f` with this thread's (empty) ciphertext scratch buffer.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|s| {
        let mut v = s.borrow_mut();
        v.clear();
        let r = f(&mut v);
        if v.capacity() > 4 * (MAX_FRAGMENT + RECORD_OVERHEAD) {
            *v = Vec::with_capacity(MAX_FRAGMENT + RECORD_OVERHEAD);
        }
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls_pki_types::pem::PemObject;

    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let (cert, key) = crate::fuzzing::TEST_CERT;
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Client bytes to the server in pieces of `chunk`; what came out each way.
    fn pump(c: &mut rustls::ClientConnection, s: &mut ServerTls, chunk: usize, plain: &mut Vec<u8>) -> Received {
        let mut got = Received::default();
        for _ in 0..20 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            let mut out = Vec::new();
            for piece in wire.chunks_mut(chunk) {
                let r = s.receive(piece, plain, &mut out).unwrap();
                got.opened |= r.opened;
                got.peer_closed |= r.peer_closed;
            }
            if out.is_empty() && wire.is_empty() {
                break;
            }
            let mut rd = &out[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        got
    }

    #[test]
    fn a_handshake_and_data_both_ways_survive_any_chunking() {
        let (sc, cc) = configs();
        for chunk in [1, 2, 5, 17, 300, 1 << 20] {
            let mut c = rustls::ClientConnection::new(cc.clone(), "localhost".try_into().unwrap()).unwrap();
            let mut s = ServerTls::new(sc.clone()).unwrap();
            let mut plain = Vec::new();
            assert!(pump(&mut c, &mut s, chunk, &mut plain).opened, "chunk {chunk}");
            assert!(s.is_open() && !c.is_handshaking());
            // Client to server: 40 KiB, so several records, fed in pieces.
            let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
            std::io::Write::write_all(&mut c.writer(), &data).unwrap();
            pump(&mut c, &mut s, chunk, &mut plain);
            assert_eq!(plain, data, "chunk {chunk}");
            assert_eq!(s.buffered(), 0, "nothing held once every record is in");
            // Server to client.
            let mut ct = Vec::new();
            s.encrypt(&data, &mut ct).unwrap();
            let (mut rd, mut back) = (&ct[..], Vec::new());
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
                let mut buf = [0u8; 4096];
                while let Ok(n) = std::io::Read::read(&mut c.reader(), &mut buf) {
                    back.extend_from_slice(&buf[..n]);
                }
            }
            assert_eq!(back, data);
            // close_notify each way.
            c.send_close_notify();
            assert!(pump(&mut c, &mut s, chunk, &mut plain).peer_closed);
            let mut bye = Vec::new();
            s.close_notify(&mut bye).unwrap();
            s.close_notify(&mut bye).unwrap();
            let mut rd = &bye[..];
            c.read_tls(&mut rd).unwrap();
            assert!(c.process_new_packets().unwrap().peer_has_closed());
        }
    }

    #[test]
    fn what_is_not_tls_is_told_apart() {
        let (sc, _) = configs();
        let (mut p, mut o) = (Vec::new(), Vec::new());
        let mut s = ServerTls::new(sc.clone()).unwrap();
        assert!(matches!(
            s.receive(&mut b"GET / HTTP/1.1\r\n".to_vec(), &mut p, &mut o),
            Err(TlsError::NotTls { http: true })
        ));
        let mut s = ServerTls::new(sc.clone()).unwrap();
        assert!(matches!(s.receive(&mut [0u8, 1, 2], &mut p, &mut o), Err(TlsError::NotTls { http: false })));
        let mut s = ServerTls::new(sc).unwrap();
        let mut junk = vec![0x16, 3, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(matches!(s.receive(&mut junk, &mut p, &mut o), Err(TlsError::Rustls(_))));
        assert!(o.is_empty() || o[0] == 0x15, "nothing but an alert goes out: {o:?}");
        assert!(p.is_empty());
    }

    #[test]
    fn nothing_can_be_sent_before_the_handshake() {
        let (sc, _) = configs();
        let mut s = ServerTls::new(sc).unwrap();
        let mut out = Vec::new();
        assert!(s.encrypt(b"early", &mut out).is_err());
        s.close_notify(&mut out).unwrap();
        assert!(out.is_empty(), "no close_notify before the handshake either");
    }
}
