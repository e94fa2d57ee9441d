//! `wss://` and `https://`: a non-blocking socket behind rustls' buffered client connection,
//! read and written like the plain socket (the engine does not know which it has).
//!
//! The client side keeps rustls' own buffers: bench-client's memory per connection is not what
//! it measures. Backpressure still reaches the engine: rustls' buffers are capped, and a write
//! it cannot take is `WouldBlock`, so the engine queues like it does for a full socket.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// What rustls may buffer per connection before writes report WouldBlock.
const BUFFER_LIMIT: usize = 256 * 1024;

/// How certificates are checked (`--insecure`, `--ca`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOptions {
    /// Accept any certificate.
    pub insecure: bool,
    /// Trust these PEM certificates (a self-signed test certificate or its CA).
    pub ca: Option<PathBuf>,
}

impl TlsOptions {
    /// The client configuration for a run. Without --ca or --insecure there is nothing to
    /// trust (bench-client carries no public root store: it is for servers you run).
    /// `h2`: offer ALPN h2 (for `--h2`) instead of http/1.1.
    pub fn config(&self, h2: bool) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = if self.insecure {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCert(provider))).with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            let Some(ca) = &self.ca else {
                return Err(
                    "wss:// and https:// need --ca FILE (the server's certificate or its CA) or --insecure".into()
                );
            };
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca {}: no certificate in it", ca.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        // Every connection is a new handshake: the figure measured is full handshakes.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// A socket, plain or behind TLS, or (`--h2`) a WebSocket's stream inside an HTTP/2 connection.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    Inner(c100k::net::pipe::Pipe),
}

impl Stream {
    /// Start TLS on a socket (the ClientHello goes out once it is connected and flushed).
    pub fn tls(sock: TcpStream, config: Arc<ClientConfig>, host: &str) -> Result<Stream, String> {
        let name = host_name(host)?;
        let mut conn = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(Stream::Tls(Box::new(TlsStream { conn, sock })))
    }

    /// The TCP socket underneath (none for a stream inside HTTP/2).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(&t.sock),
            Stream::Inner(_) => None,
        }
    }

    /// Write what TLS has pending (handshake records, buffered data). A no-op when plain.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) | Stream::Inner(_) => Ok(()),
            Stream::Tls(t) => t.flush_tls(),
        }
    }
}

/// The host of a URL authority (`name:port`, `[v6]:port`) as a TLS server name.
fn host_name(authority: &str) -> Result<ServerName<'static>, String> {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("'{host}' is not a TLS server name: {e}"))
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
            Stream::Inner(p) => p.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
            Stream::Inner(p) => p.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(t) => t.write_vectored(bufs),
            Stream::Inner(p) => p.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

#[derive(Debug)]
pub struct TlsStream {
    conn: ClientConnection,
    sock: TcpStream,
}

impl TlsStream {
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What rustls accepted; nothing accepted is WouldBlock (its buffers are full until the
    /// socket takes more).
    fn accepted(&mut self, n: usize, asked: usize) -> io::Result<usize> {
        self.flush_tls()?;
        if n == 0 && asked > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let n = self.conn.read_tls(&mut self.sock)?;
            if let Err(e) = self.conn.process_new_packets() {
                // Tell the server why (the alert rustls queued), then fail.
                log::debug!("TLS: {e}");
                let _ = self.flush_tls();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.flush_tls()?;
            if n == 0 {
                // TCP EOF: whatever was decrypted, then the reader says clean or truncated.
                return match self.conn.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.accepted(n, buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.conn.writer().write_vectored(bufs)?;
        self.accepted(n, bufs.iter().map(|b| b.len()).sum())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// `--insecure`: any certificate is accepted (signatures are still checked, so the handshake
/// does the same work as a verified one).
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
