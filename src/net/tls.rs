//! TLS on a connection, sans-IO: ciphertext in, application data and records out.
//!
//! Two phases, both with the caller owning the buffers (the loop reads into its one read
//! buffer, decrypted data goes to one scratch buffer per loop, records go straight to the
//! socket or, when it refuses them, the connection's outbound queue):
//!
//! - **The handshake** is rustls' *unbuffered* server connection (a buffered `ServerConnection`
//!   keeps 4 KiB and more of buffers per connection for as long as it lives).
//! - **After a TLS 1.3 handshake** with a suite whose keys are 32 bytes (AES-256-GCM or
//!   ChaCha20-Poly1305, which the server prefers: [`server_provider`]), the connection is handed
//!   off the way kTLS hands it off (`dangerous_into_kernel_connection`). rustls keeps only what
//!   computes the next keys when a side updates them (its `KernelConnection`, 784 B); the
//!   connection keeps its traffic keys as bytes ([`Secret`]). Every record is still protected by
//!   rustls' own encrypter and decrypter for the suite, built from those bytes when there is
//!   something to protect (about 0.2 µs) instead of kept expanded (560 B each in *ring*, most of
//!   what a rustls connection holds). What this module does itself is the framing around them:
//!   the 5-byte record header and its length limit, the sequence numbers, the messages TLS 1.3
//!   lets a client send after the handshake (alerts, KeyUpdate), and updating our own keys
//!   before the suite's confidentiality limit, as rustls does.
//!
//! Connections that cannot be handed off (TLS 1.2, or a client offering only AES-128-GCM) stay
//! on the rustls connection for life: slower to idle in memory, the same otherwise.
//!
//! An idle connection keeps no buffer: only that state and, rarely, the tail of a record that
//! came split over two reads.

use std::cell::RefCell;
use std::sync::Arc;

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::crypto::CryptoProvider;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConfig, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite, Tls13CipherSuite,
};
use zeroize::Zeroize;

/// The first byte of a TLS handshake record; anything else opening a connection is not TLS.
const HANDSHAKE_RECORD: u8 = 0x16;
/// Record overhead upper bound (header, TLS 1.3 content type, AEAD tag; TLS 1.2 explicit nonce).
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// A record header: content type, legacy version, length.
const HEADER: usize = 5;
/// Largest TLS 1.3 ciphertext a record may carry (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
/// The ALPN protocols the server offers, so a handed-off connection can name its own without
/// keeping rustls' copy.
const PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

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

fn general(why: &str) -> TlsError {
    TlsError::Rustls(rustls::Error::General(why.into()))
}

/// What a call to [`ServerTls::receive`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The handshake completed with these bytes.
    pub opened: bool,
    /// The peer sent close_notify: no more data will come (like EOF).
    pub peer_closed: bool,
}

/// The provider a server's connections are made with: rustls' *ring* provider with the TLS 1.3
/// suites whose keys are 32 bytes first, so that (with [`prepare`]'s server order) a client
/// offering them gets one and its connection can be handed off. rustls' `AeadKey` can be rebuilt
/// from bytes only at that length; AES-128-GCM connections stay on the rustls connection.
pub fn server_provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| match s {
        SupportedCipherSuite::Tls13(t) if t.aead_alg.key_len() == 32 => 0,
        SupportedCipherSuite::Tls13(_) => 1,
        _ => 2,
    });
    p
}

/// Settings a server configuration needs for the hand-off: the server's suite order, and the
/// secrets extractable once the handshake is done.
pub fn prepare(config: &mut ServerConfig) {
    config.ignore_client_order = true;
    config.enable_secret_extraction = true;
}

/// One direction's traffic keys, kept as bytes; zeroed when dropped.
struct Secret {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Secret {
    /// From rustls' extracted secrets; `None` for keys that are not 32 bytes.
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Option<Secret> {
        let (key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return None,
        };
        Some(Secret { key: key.as_ref().try_into().ok()?, iv: iv.as_ref().try_into().ok()?, seq })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

/// A TLS 1.3 connection after the hand-off.
struct Keyed {
    /// rustls' side: computes the next traffic secrets on a key update.
    kernel: KernelConnection<ServerConnectionData>,
    suite: &'static Tls13CipherSuite,
    tx: Secret,
    rx: Secret,
    /// The protocol agreed by ALPN: its place in [`PROTOCOLS`] plus one, or 0 for none.
    alpn: u8,
    /// The peer asked us to update our keys: done before our next record, once however many
    /// times it asked (RFC 8446 §4.6.3; a reply per request is what rustls and BoringSSL
    /// clients count as too many).
    update_owed: bool,
    /// What the peer may still send before it sends application data, as rustls and BoringSSL
    /// count it (each costs work and sends nothing useful): key updates, empty records in a
    /// row, and warning alerts (in all).
    updates_left: u8,
    empties_left: u8,
    warnings_left: u8,
}

/// rustls' and BoringSSL's limits on what [`Keyed::updates_left`] and its siblings count.
const KEY_UPDATES: u8 = 32;
const EMPTY_RECORDS: u8 = 32;
const WARNING_ALERTS: u8 = 4;

impl Keyed {
    fn encrypter(&self) -> Box<dyn MessageEncrypter> {
        self.suite.aead_alg.encrypter(AeadKey::from(self.tx.key), Iv::from(self.tx.iv))
    }

    fn decrypter(&self) -> Box<dyn MessageDecrypter> {
        self.suite.aead_alg.decrypter(AeadKey::from(self.rx.key), Iv::from(self.rx.iv))
    }

    /// Decrypt the complete records at the start of `buf`; returns how many bytes they took (the
    /// rest is the start of a record). Application data goes to `plain`; what must be sent in
    /// answer (our KeyUpdate, a fatal alert) to `out`.
    fn receive(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        got: &mut Received,
    ) -> Result<usize, TlsError> {
        let mut dec: Option<Box<dyn MessageDecrypter>> = None;
        let mut off = 0;
        while let Some(h) = buf.get(off..off + HEADER) {
            let (typ, len) = (h[0], usize::from(u16::from_be_bytes([h[3], h[4]])));
            // Every record after a TLS 1.3 handshake is protected application data on the outside.
            if typ != u8::from(ContentType::ApplicationData) {
                let e = rustls::Error::InappropriateMessage {
                    expect_types: vec![ContentType::ApplicationData],
                    got_type: ContentType::from(typ),
                };
                return Err(self.fatal(AlertDescription::UnexpectedMessage, e, out));
            }
            if len > MAX_CIPHERTEXT {
                return Err(self.fatal(
                    AlertDescription::RecordOverflow,
                    rustls::Error::General("record too large".into()),
                    out,
                ));
            }
            let Some(body) = buf.get_mut(off + HEADER..off + HEADER + len) else { break };
            if self.rx.seq == u64::MAX {
                return Err(general("the peer's sequence numbers ran out"));
            }
            let d = dec.get_or_insert_with(|| self.decrypter());
            let msg = InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, body);
            let m = match d.decrypt(msg, self.rx.seq) {
                Ok(m) => m,
                Err(e) => return Err(self.fatal(AlertDescription::BadRecordMac, e, out)),
            };
            self.rx.seq += 1;
            off += HEADER + len;
            let spent = match (m.typ, m.payload) {
                (ContentType::ApplicationData, []) => &mut self.empties_left,
                (ContentType::Alert, [_, 90]) => &mut self.warnings_left,
                (ContentType::Handshake, _) => &mut self.updates_left,
                _ => &mut 1,
            };
            if *spent == 0 {
                let e = rustls::Error::General(format!("too many {:?} records without application data", m.typ));
                return Err(self.fatal(AlertDescription::UnexpectedMessage, e, out));
            }
            *spent -= 1;
            match (m.typ, m.payload) {
                (ContentType::ApplicationData, data) => {
                    if !data.is_empty() {
                        (self.updates_left, self.empties_left) = (KEY_UPDATES, EMPTY_RECORDS);
                    }
                    plain.extend_from_slice(data)
                }
                (ContentType::Alert, [_, 0]) => {
                    // close_notify: whatever follows it is not read.
                    got.peer_closed = true;
                    return Ok(buf.len());
                }
                // user_canceled is followed by close_notify (RFC 8446 §6.1).
                (ContentType::Alert, [_, 90]) => {}
                (ContentType::Alert, &[_, d]) => return Err(TlsError::Rustls(rustls::Error::AlertReceived(d.into()))),
                (ContentType::Handshake, &[24, 0, 0, 1, request @ (0 | 1)]) => {
                    // KeyUpdate, alone in its record (it must end one: RFC 8446 §5.1).
                    dec = None;
                    let next = self.kernel.update_rx_secret().map_err(TlsError::Rustls)?;
                    self.rx = Secret::new(next).ok_or_else(|| general("unexpected traffic secrets"))?;
                    self.update_owed |= request == 1;
                }
                (typ, _) => {
                    let e = rustls::Error::General(format!("unexpected {typ:?} message after the handshake"));
                    return Err(self.fatal(AlertDescription::UnexpectedMessage, e, out));
                }
            }
        }
        Ok(off)
    }

    /// Send a KeyUpdate under the current keys, then switch to the next ones.
    fn update_tx(&mut self, out: &mut Vec<u8>, enc: &mut Option<Box<dyn MessageEncrypter>>) -> Result<(), TlsError> {
        self.update_owed = false;
        self.seal_one(ContentType::Handshake, &[24, 0, 0, 1, 0], out, enc)?;
        *enc = None;
        let next = self.kernel.update_tx_secret().map_err(TlsError::Rustls)?;
        self.tx = Secret::new(next).ok_or_else(|| general("unexpected traffic secrets"))?;
        Ok(())
    }

    /// Protect one record of `data` (at most [`MAX_FRAGMENT`]) and append it to `out`, updating
    /// the keys first when the peer asked or they reach the suite's confidentiality limit (one
    /// record is kept for the KeyUpdate itself). `enc` carries the encrypter across the records
    /// of one write.
    fn seal(
        &mut self,
        typ: ContentType,
        data: &[u8],
        out: &mut Vec<u8>,
        enc: &mut Option<Box<dyn MessageEncrypter>>,
    ) -> Result<(), TlsError> {
        if self.update_owed || self.tx.seq >= self.suite.common.confidentiality_limit.saturating_sub(1) {
            self.update_tx(out, enc)?;
        }
        self.seal_one(typ, data, out, enc)
    }

    fn seal_one(
        &mut self,
        typ: ContentType,
        data: &[u8],
        out: &mut Vec<u8>,
        enc: &mut Option<Box<dyn MessageEncrypter>>,
    ) -> Result<(), TlsError> {
        let e = enc.get_or_insert_with(|| self.encrypter());
        let m = OutboundPlainMessage { typ, version: ProtocolVersion::TLSv1_2, payload: OutboundChunks::Single(data) };
        let record = e.encrypt(m, self.tx.seq).map_err(TlsError::Rustls)?;
        self.tx.seq += 1;
        out.extend_from_slice(&record.encode());
        Ok(())
    }

    /// Send a fatal alert (best effort: the connection ends either way) and give `e` back.
    fn fatal(&mut self, alert: AlertDescription, e: rustls::Error, out: &mut Vec<u8>) -> TlsError {
        let _ = self.seal_one(ContentType::Alert, &[2, u8::from(alert)], out, &mut None);
        TlsError::Rustls(e)
    }
}

/// Where a connection's TLS stands. `ServerTls` is boxed already: boxing `Keyed` too would cost
/// an allocation (and its allocator rounding) per idle connection.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// rustls' connection: the handshake, and for life a connection that is not handed off.
    Rustls(Box<UnbufferedServerConnection>),
    /// Handed off after a TLS 1.3 handshake (inline: the whole state is one allocation).
    Keyed(Keyed),
    /// A fatal error happened (or the hand-off failed): nothing more is read or sent.
    Gone,
}

/// One connection's TLS state.
pub struct ServerTls {
    phase: Phase,
    /// The start of a record whose end has not arrived yet (empty, unallocated, almost always).
    partial: Vec<u8>,
    /// Hand the connection off once its handshake is done (the configuration allows it).
    hand_off: bool,
    open: bool,
    seen_bytes: bool,
    sent_close: bool,
    peer_closed: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("open", &self.open)
            .field("handed_off", &self.is_handed_off())
            .field("partial", &self.partial.len())
            .finish()
    }
}

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let hand_off = config.enable_secret_extraction;
        Ok(ServerTls {
            phase: Phase::Rustls(Box::new(UnbufferedServerConnection::new(config)?)),
            partial: Vec::new(),
            hand_off,
            open: false,
            seen_bytes: false,
            sent_close: false,
            peer_closed: false,
        })
    }

    /// The protocol agreed by ALPN, once the handshake is done.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.phase {
            Phase::Rustls(c) => c.alpn_protocol(),
            Phase::Keyed(k) => PROTOCOLS.get(usize::from(k.alpn).wrapping_sub(1)).copied(),
            Phase::Gone => None,
        }
    }

    /// The handshake is done: application data flows.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The connection was handed off (see the module docs): it holds its keys, not rustls'.
    pub fn is_handed_off(&self) -> bool {
        matches!(self.phase, Phase::Keyed(_))
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
        let taken = match &mut self.phase {
            _ if self.peer_closed => Ok(buf.len()),
            Phase::Rustls(conn) => rustls_receive(conn, buf, plain, out, &mut got),
            // Nothing is sent after our close_notify (a KeyUpdate answer, an alert).
            Phase::Keyed(k) if self.sent_close => k.receive(buf, plain, &mut Vec::new(), &mut got),
            Phase::Keyed(k) => k.receive(buf, plain, out, &mut got),
            Phase::Gone => Err(general("the connection failed")),
        };
        let taken = match taken {
            Ok(n) => n,
            Err(e) => {
                if matches!(self.phase, Phase::Keyed(_)) {
                    self.phase = Phase::Gone;
                }
                return Err(e);
            }
        };
        let rest = &buf[taken..];
        if !rest.is_empty() {
            self.partial = rest.to_vec();
        }
        self.peer_closed |= got.peer_closed;
        // Done when the client's Finished is verified, not when we may send (TLS 1.3 lets the
        // server send right after its own flight).
        if let Phase::Rustls(conn) = &self.phase {
            if !self.open && !conn.is_handshaking() {
                self.open = true;
                got.opened = true;
            }
        }
        if self.open && self.hand_off && !self.peer_closed {
            self.try_hand_off()?;
        }
        Ok(got)
    }

    /// Hand a TLS 1.3 connection with 32-byte keys off rustls (see the module docs). rustls
    /// has processed every complete record by now (it answers `WriteTraffic` only then); what
    /// is left in `partial` is the start of the next one, read under the extracted keys.
    fn try_hand_off(&mut self) -> Result<(), TlsError> {
        let Phase::Rustls(conn) = &self.phase else { return Ok(()) };
        let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
            self.hand_off = false;
            return Ok(());
        };
        let alpn = match conn.alpn_protocol() {
            None => 0,
            Some(p) => match PROTOCOLS.iter().position(|k| *k == p) {
                Some(i) => i as u8 + 1,
                None => {
                    self.hand_off = false;
                    return Ok(());
                }
            },
        };
        if suite.aead_alg.key_len() != 32 || conn.is_handshaking() {
            self.hand_off = !conn.is_handshaking() && suite.aead_alg.key_len() == 32;
            return Ok(());
        }
        let Phase::Rustls(conn) = std::mem::replace(&mut self.phase, Phase::Gone) else { return Ok(()) };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(TlsError::Rustls)?;
        let (Some(tx), Some(rx)) = (Secret::new(secrets.tx), Secret::new(secrets.rx)) else {
            return Err(general("unexpected traffic secrets"));
        };
        self.phase = Phase::Keyed(Keyed {
            kernel,
            suite,
            tx,
            rx,
            alpn,
            update_owed: false,
            updates_left: KEY_UPDATES,
            empties_left: EMPTY_RECORDS,
            warnings_left: WARNING_ALERTS,
        });
        Ok(())
    }

    /// Encrypt `data` as application data records, appended to `out`.
    pub fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        match &mut self.phase {
            Phase::Keyed(_) if self.sent_close => Err(general("close_notify was sent")),
            Phase::Keyed(k) => {
                let mut enc = None;
                data.chunks(MAX_FRAGMENT).try_for_each(|c| k.seal(ContentType::ApplicationData, c, out, &mut enc))
            }
            Phase::Rustls(conn) => {
                let need = data.len() + data.len().div_ceil(MAX_FRAGMENT).max(1) * RECORD_OVERHEAD;
                write_with(conn, &mut self.partial, out, need, |w, b| w.encrypt(data, b))
            }
            Phase::Gone => Err(general("the connection failed")),
        }
    }

    /// A close_notify alert, once (nothing before the handshake is done).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if !self.open || self.sent_close {
            return Ok(());
        }
        self.sent_close = true;
        match &mut self.phase {
            Phase::Keyed(k) => k.seal(ContentType::Alert, &[1, 0], out, &mut None),
            Phase::Rustls(conn) => write_with(conn, &mut self.partial, out, 64, |w, b| w.queue_close_notify(b)),
            Phase::Gone => Ok(()),
        }
    }
}

/// The handshake phase's reading: rustls processes the records at the start of `buf`; returns
/// how many bytes it is done with.
fn rustls_receive(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
    got: &mut Received,
) -> Result<usize, TlsError> {
    let mut off = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[off..]);
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                off += discard;
                alert(conn, &mut buf[off..], out);
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
            _ => return Err(general("early data is not accepted")),
        };
        off += discard;
        if !more {
            return Ok(off);
        }
    }
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

/// Write through rustls' connection. The bytes rustls has not released go back in (see
/// [`alert`]); with the handshake done and every complete record processed, they are at most
/// the start of a record (discard 0).
fn write_with(
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
            _ => return Err(general("the connection cannot send")),
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
    use crate::fuzzing::{tls_test_configs, TlsTestPeers};
    use rustls::crypto::CipherSuiteCommon;
    use std::io::{Read, Write};

    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        tls_test_configs(&TlsTestPeers::default())
    }

    fn client(cc: &Arc<rustls::ClientConfig>) -> rustls::ClientConnection {
        rustls::ClientConnection::new(cc.clone(), "localhost".try_into().unwrap()).unwrap()
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
            deliver(c, &out).unwrap();
        }
        got
    }

    /// Records from the server to the client; the plaintext they carried.
    fn deliver(c: &mut rustls::ClientConnection, records: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let (mut rd, mut back) = (records, Vec::new());
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()?;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = c.reader().read(&mut buf) {
                back.extend_from_slice(&buf[..n]);
            }
        }
        Ok(back)
    }

    /// A connection with its handshake done.
    fn opened(sc: &Arc<ServerConfig>, cc: &Arc<rustls::ClientConfig>) -> (rustls::ClientConnection, ServerTls) {
        let (mut c, mut s) = (client(cc), ServerTls::new(sc.clone()).unwrap());
        assert!(pump(&mut c, &mut s, 1 << 20, &mut Vec::new()).opened);
        (c, s)
    }

    fn data(n: u32) -> Vec<u8> {
        (0..n).map(|i| (i * 7) as u8).collect()
    }

    /// Data each way (several records), checked.
    fn both_ways(c: &mut rustls::ClientConnection, s: &mut ServerTls, chunk: usize, n: u32) {
        let d = data(n);
        c.writer().write_all(&d).unwrap();
        let mut plain = Vec::new();
        pump(c, s, chunk, &mut plain);
        assert_eq!(plain, d, "client to server, in pieces of {chunk}");
        let mut ct = Vec::new();
        s.encrypt(&d, &mut ct).unwrap();
        assert_eq!(deliver(c, &ct).unwrap(), d, "server to client");
    }

    #[test]
    fn a_handshake_and_data_both_ways_survive_any_chunking() {
        let (sc, cc) = configs();
        for chunk in [1, 2, 5, 17, 300, 1 << 20] {
            let mut c = client(&cc);
            let mut s = ServerTls::new(sc.clone()).unwrap();
            let mut plain = Vec::new();
            assert!(pump(&mut c, &mut s, chunk, &mut plain).opened, "chunk {chunk}");
            assert!(s.is_open() && !c.is_handshaking());
            assert!(s.is_handed_off(), "a TLS 1.3 connection keeps its keys, not rustls'");
            assert_eq!(s.alpn(), Some(&b"http/1.1"[..]));
            // 40 KiB, so several records, fed in pieces.
            both_ways(&mut c, &mut s, chunk, 40_000);
            assert_eq!(s.buffered(), 0, "nothing held once every record is in");
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
    fn the_server_picks_a_suite_it_can_hand_off() {
        let (sc, cc) = configs();
        let (c, _) = opened(&sc, &cc);
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384, "AES-256 first whatever the client prefers");
        // A client that prefers ChaCha20 gets AES-256 too; one offering only ChaCha20 gets it.
        for (suites, want) in [
            (
                vec![rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256],
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (
                vec![
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                    rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ),
        ] {
            let (sc, cc) = tls_test_configs(&TlsTestPeers { client_suites: Some(suites), ..Default::default() });
            let (mut c, mut s) = opened(&sc, &cc);
            assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), want);
            assert!(s.is_handed_off());
            both_ways(&mut c, &mut s, 7, 20_000);
        }
    }

    #[test]
    fn connections_that_cannot_be_handed_off_stay_on_rustls() {
        let only_aes128 = TlsTestPeers {
            client_suites: Some(vec![rustls::CipherSuite::TLS13_AES_128_GCM_SHA256]),
            ..Default::default()
        };
        let tls12 = TlsTestPeers { tls12: true, ..Default::default() };
        for peers in [only_aes128, tls12] {
            let (sc, cc) = tls_test_configs(&peers);
            let (mut c, mut s) = opened(&sc, &cc);
            assert!(s.is_open() && !s.is_handed_off());
            both_ways(&mut c, &mut s, 3, 40_000);
            c.send_close_notify();
            assert!(pump(&mut c, &mut s, 3, &mut Vec::new()).peer_closed);
        }
    }

    #[test]
    fn resumed_sessions_are_handed_off_too() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        both_ways(&mut c, &mut s, 100, 10); // the ticket arrives with the first flight
        let (mut c, mut s) = opened(&sc, &cc);
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(s.is_handed_off());
        both_ways(&mut c, &mut s, 100, 30_000);
    }

    #[test]
    fn key_updates_from_the_client_are_followed_and_answered() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        for round in 0..5 {
            // rustls asks the peer to update too: the server's answer puts its next records under
            // new keys, which the client could not read otherwise.
            c.refresh_traffic_keys().unwrap();
            both_ways(&mut c, &mut s, if round % 2 == 0 { 1 } else { 4096 }, 20_000);
        }
        // Data sent in the same flight as the update, before and after it.
        c.writer().write_all(b"before").unwrap();
        c.refresh_traffic_keys().unwrap();
        c.writer().write_all(b"after").unwrap();
        let mut plain = Vec::new();
        pump(&mut c, &mut s, 1 << 20, &mut plain);
        assert_eq!(plain, b"beforeafter");
    }

    #[test]
    fn nothing_follows_our_close_notify() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        let mut bye = Vec::new();
        s.close_notify(&mut bye).unwrap();
        deliver(&mut c, &bye).unwrap();
        // The client may still send, and update its keys (asking us to): we read, send nothing.
        c.refresh_traffic_keys().unwrap();
        let mut wire = record(&mut c, b"still reading");
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        s.receive(&mut wire, &mut plain, &mut out).unwrap();
        assert_eq!(plain, b"still reading");
        assert!(out.is_empty(), "{} bytes after close_notify", out.len());
        assert!(s.encrypt(b"x", &mut out).is_err() && out.is_empty());
    }

    #[test]
    fn many_key_updates_get_one_answer_with_our_next_record() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        // Each asks the server to update too; it answers once, before its next record.
        let mut plain = Vec::new();
        for _ in 0..40 {
            c.writer().write_all(b"x").unwrap(); // application data resets the server's count
            c.refresh_traffic_keys().unwrap();
            assert!(pump(&mut c, &mut s, 1 << 20, &mut plain) == Received::default());
        }
        assert_eq!(plain, [b'x'; 40]);
        let mut ct = Vec::new();
        s.encrypt(b"after forty", &mut ct).unwrap();
        assert_eq!(deliver(&mut c, &ct).unwrap(), b"after forty");
        both_ways(&mut c, &mut s, 9, 20_000);
    }

    #[test]
    fn floods_of_records_that_carry_nothing_are_refused() {
        let (sc, cc) = configs();
        // 33 key updates with no application data between them.
        let (mut c, mut s) = opened(&sc, &cc);
        let mut wire = Vec::new();
        for _ in 0..33 {
            c.refresh_traffic_keys().unwrap();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
        }
        let r = s.receive(&mut wire, &mut Vec::new(), &mut Vec::new());
        assert!(r.is_err(), "{r:?}");
        // 33 empty records in a row (rustls' client sends none: made under its keys by hand).
        let (mut c, mut s) = opened(&sc, &cc);
        let Phase::Keyed(k) = &s.phase else { unreachable!() };
        let mut enc = k.suite.aead_alg.encrypter(AeadKey::from(k.rx.key), Iv::from(k.rx.iv));
        let mut wire = Vec::new();
        for seq in 0..33 {
            let m = OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(&[]),
            };
            wire.extend_from_slice(&enc.encrypt(m, k.rx.seq + seq).unwrap().encode());
        }
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        assert!(s.receive(&mut wire[..32 * 22], &mut plain, &mut out).is_ok(), "32 are let through");
        assert!(s.receive(&mut wire[32 * 22..], &mut plain, &mut out).is_err());
        assert!(matches!(
            deliver(&mut c, &out),
            Err(rustls::Error::AlertReceived(AlertDescription::UnexpectedMessage))
        ));
    }

    /// The suite with its confidentiality limit lowered, so our key updates can be watched.
    fn wearing_out(limit: u64) -> CryptoProvider {
        let SupportedCipherSuite::Tls13(base) = rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384 else {
            unreachable!()
        };
        let suite: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
            common: CipherSuiteCommon { confidentiality_limit: limit, ..base.common },
            ..*base
        }));
        CryptoProvider {
            cipher_suites: vec![SupportedCipherSuite::Tls13(suite)],
            ..rustls::crypto::ring::default_provider()
        }
    }

    #[test]
    fn the_server_updates_its_keys_before_the_confidentiality_limit() {
        let (sc, cc) = tls_test_configs(&TlsTestPeers { server: Some(wearing_out(4)), ..Default::default() });
        let (mut c, mut s) = opened(&sc, &cc);
        assert!(s.is_handed_off());
        let Phase::Keyed(k) = &s.phase else { unreachable!() };
        let first = k.tx.key;
        // 60 KB in 4 records, then 20 small ones: a KeyUpdate every 3 records, each read.
        both_ways(&mut c, &mut s, 1 << 20, 60_000);
        for i in 0..20u8 {
            let mut ct = Vec::new();
            s.encrypt(&[i; 10], &mut ct).unwrap();
            assert_eq!(deliver(&mut c, &ct).unwrap(), [i; 10]);
        }
        let Phase::Keyed(k) = &s.phase else { unreachable!() };
        assert_ne!(k.tx.key, first, "the keys changed");
        assert!(k.tx.seq < 4);
    }

    /// Feed the server `records`, expecting it to fail; the client then reads what it sent back
    /// and must see the alert `want`.
    fn refused(c: &mut rustls::ClientConnection, s: &mut ServerTls, mut records: Vec<u8>, want: AlertDescription) {
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        assert!(s.receive(&mut records, &mut plain, &mut out).is_err());
        assert!(plain.is_empty());
        match deliver(c, &out) {
            Err(rustls::Error::AlertReceived(a)) => assert_eq!(a, want),
            other => panic!("the client should read the alert {want:?}: {other:?}"),
        }
        let mut more = data(100);
        assert!(s.receive(&mut more, &mut plain, &mut out).is_err(), "nothing is read after a failure");
        assert!(s.encrypt(b"x", &mut Vec::new()).is_err(), "nor sent");
    }

    /// A record of application data from the client, as sent.
    fn record(c: &mut rustls::ClientConnection, d: &[u8]) -> Vec<u8> {
        c.writer().write_all(d).unwrap();
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        wire
    }

    #[test]
    fn forged_and_misplaced_records_get_their_alert() {
        let (sc, cc) = configs();
        // A flipped bit anywhere after the header.
        for at in [5, 20, 40] {
            let (mut c, mut s) = opened(&sc, &cc);
            let mut r = record(&mut c, &data(40));
            r[at] ^= 1;
            refused(&mut c, &mut s, r, AlertDescription::BadRecordMac);
        }
        // A record replayed (its sequence number is gone).
        let (mut c, mut s) = opened(&sc, &cc);
        let r = record(&mut c, b"once");
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        s.receive(&mut r.clone(), &mut plain, &mut out).unwrap();
        assert_eq!(plain, b"once");
        refused(&mut c, &mut s, r, AlertDescription::BadRecordMac);
        // A handshake record in the clear, a ChangeCipherSpec, an oversized record.
        for (head, want) in [
            ([0x16, 3, 3, 0, 4], AlertDescription::UnexpectedMessage),
            ([0x14, 3, 3, 0, 1], AlertDescription::UnexpectedMessage),
            ([0x17, 3, 3, 0x41, 1], AlertDescription::RecordOverflow),
        ] {
            let (mut c, mut s) = opened(&sc, &cc);
            refused(&mut c, &mut s, head.to_vec(), want);
        }
    }

    #[test]
    fn a_fatal_alert_from_the_client_ends_the_connection() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        c.writer().write_all(b"x").unwrap();
        // rustls sends an alert for a record it cannot decrypt: feed it garbage to get one.
        let mut junk = vec![0x17, 3, 3, 0, 20];
        junk.extend_from_slice(&[0u8; 20]);
        let mut rd = &junk[..];
        c.read_tls(&mut rd).unwrap();
        assert!(c.process_new_packets().is_err());
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let r = s.receive(&mut wire, &mut Vec::new(), &mut Vec::new());
        assert!(
            matches!(r, Err(TlsError::Rustls(rustls::Error::AlertReceived(AlertDescription::BadRecordMac)))),
            "{r:?}"
        );
    }

    #[test]
    fn nothing_after_close_notify_is_read() {
        let (sc, cc) = configs();
        let (mut c, mut s) = opened(&sc, &cc);
        let mut wire = record(&mut c, b"last");
        c.send_close_notify();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        wire.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        let mut plain = Vec::new();
        let got = s.receive(&mut wire, &mut plain, &mut Vec::new()).unwrap();
        assert!(got.peer_closed);
        assert_eq!(plain, b"last");
        assert!(s.receive(&mut [1, 2, 3], &mut plain, &mut Vec::new()).unwrap() == Received::default());
        assert_eq!(s.buffered(), 0);
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
