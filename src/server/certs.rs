//! The server's TLS configuration: the certificate chain and key from PEM files, swapped in
//! place on reload (SIGHUP) so new handshakes use the new pair while established connections
//! keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files `--tls-cert` and `--tls-key` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Hands every handshake the pair loaded last.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The TLS side of a server: its rustls configuration and what reloads it.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    config: Arc<ServerConfig>,
}

impl Tls {
    /// Load the files; errors say which file and what is wrong with it.
    /// `h2`: offer HTTP/2 in ALPN.
    pub fn load(files: &TlsFiles, h2: bool) -> Result<Tls, String> {
        let provider = Arc::new(crate::net::tls::server_provider());
        let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(files, &provider)?))));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // HTTP/2 first (browsers then carry their WebSockets over it, RFC 8441), HTTP/1.1 for
        // the rest. A client offering only other protocols is refused
        // (no_application_protocol), one offering none is served HTTP/1.1.
        config.alpn_protocols =
            if h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        // Resumption by stateless tickets: nothing per session on the server, and a reconnect
        // storm after a restart of the clients skips the signature.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
        config.send_tls13_tickets = 1;
        // TLS 1.3 connections are handed off rustls after their handshake (net::tls).
        crate::net::tls::prepare(&mut config);
        Ok(Tls { files: files.clone(), provider, current, config: Arc::new(config) })
    }

    /// The rustls configuration every connection starts from.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Read the files again and use them for the handshakes from now on. On error the pair in
    /// use stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = Arc::new(certified_key(&self.files, &self.provider)?);
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: no private key read: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("--tls-cert {} with --tls-key {}: {e}", files.cert.display(), files.key.display()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in it", path.display()));
    }
    Ok(chain)
}
