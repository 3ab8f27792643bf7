//! TLS for HTTPS and WSS (rustls on ring): the certificate chain and key are the PEM files of
//! `[tls]`. They are served through a resolver whose pair is replaced as a whole when the files
//! change (a watcher on their directory) or on SIGHUP; a pair that does not load (a half-written
//! file, a key that does not match) is reported in the log and the previous pair keeps serving.
//! Connections already open keep the pair they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::watch::DirWatcher;

/// Why a certificate pair did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("tls.key {key} does not match the certificate {cert}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
}

/// The served pair, swapped in as a whole on reload.
#[derive(Debug)]
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

/// Reads and checks a pair of PEM files.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| TlsError::Key {
            path: key.display().to_string(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(ck)
}

impl Certs {
    /// Loads the pair (an error here stops the start: there is nothing to serve yet).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certs>, TlsError> {
        let ck = load(cert, key)?;
        Ok(Arc::new(Certs {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
        }))
    }

    /// Reads the files again; on success the new pair serves new connections, on failure the
    /// previous one stays (and the error is returned and logged).
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.cert, &self.key) {
            Ok(ck) => {
                self.current.store(Arc::new(ck));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one keeps serving");
                Err(e)
            }
        }
    }

    /// The rustls configuration that serves the current pair (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// Reloads when the certificate or the key file changes (their renames included).
    pub fn watch(self: &Arc<Self>) -> Option<DirWatcher> {
        let mut names = Vec::new();
        let mut dirs = Vec::new();
        for p in [&self.cert, &self.key] {
            names.extend(p.file_name().map(|n| n.to_os_string()));
            dirs.push(
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            );
        }
        if dirs[0] != dirs[1] {
            tracing::warn!("tls.cert and tls.key are in different directories: only the certificate's is watched (SIGHUP reloads both)");
        }
        let me = self.clone();
        match DirWatcher::start_for_files("trimtab-tls-watch", dirs[0], names, move || {
            let _ = me.reload();
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the TLS files; reload them with SIGHUP");
                None
            }
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
