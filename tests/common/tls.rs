//! Throwaway certificates (a CA and a leaf for localhost and 127.0.0.1, written as PEM files)
//! and a blocking TLS client over a real socket, for the wss:// and https:// tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A CA and a server certificate it signed, on disk.
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: CertificateDer<'static>,
}

impl TestCerts {
    /// New keys and certificates in `dir` (created): ca.pem, cert.pem (leaf, then CA: a chain),
    /// key.pem. ECDSA P-256 (rcgen's default).
    pub fn new(dir: PathBuf) -> TestCerts {
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "c100k test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        TestCerts { dir, ca: ca.der().clone() }
    }

    /// In a fresh directory under the target dir, named after `name`.
    pub fn fresh(name: &str) -> TestCerts {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TestCerts::new(dir)
    }

    pub fn files(&self) -> c100k::server::certs::TlsFiles {
        c100k::server::certs::TlsFiles { cert: self.dir.join("cert.pem"), key: self.dir.join("key.pem") }
    }

    /// A client configuration trusting only this CA.
    pub fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` for server name `localhost`; the handshake completes first.
pub fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<TlsStream, std::io::Error> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One HTTP/1.1 request over TLS (`Connection: close`); the whole answer.
pub fn https(addr: SocketAddr, cfg: Arc<ClientConfig>, path: &str) -> String {
    let mut s = connect(addr, cfg).expect("TLS handshake");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
