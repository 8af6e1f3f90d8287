//! NBD over TLS: the server's certificate, the optional CA its clients must be signed by, and
//! per listener kind whether TLS is off, offered or required.
//!
//! The upgrade itself is NBD_OPT_STARTTLS (see `handshake`): the server answers it with
//! NBD_REP_ACK, both sides run the TLS handshake on the same socket, and option haggling starts
//! again inside TLS. rustls (ring provider) does the TLS; there is no OpenSSL in the server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// What a listener does about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP; everything is plaintext.
    Off,
    /// A client may upgrade with NBD_OPT_STARTTLS or stay in plaintext (the spec's
    /// SELECTIVETLS with no TLS-only export).
    Offered,
    /// Every option but STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD until TLS is up,
    /// and NBD_OPT_EXPORT_NAME before TLS closes the connection (the spec's FORCEDTLS).
    Required,
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsPolicy::Off => "off",
            TlsPolicy::Offered => "offered",
            TlsPolicy::Required => "required",
        })
    }
}

/// TLS settings of a server: one certificate for all listeners, and a policy per listener kind.
#[derive(Clone)]
pub struct NbdTls {
    acceptor: TlsAcceptor,
    /// Whether clients must present a certificate signed by the configured client CA.
    mutual: bool,
    /// Policy of TCP listeners (and of [`crate::serve_connection`]).
    pub tcp: TlsPolicy,
    /// Policy of unix-socket listeners. `Off` by default: the socket's owner, group and mode
    /// already decide who connects, its traffic never leaves the host, and local consumers
    /// (nbd-client for the kernel, backup tools on the host) connect in plaintext.
    pub unix: TlsPolicy,
}

impl fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdTls")
            .field("mutual", &self.mutual)
            .field("tcp", &self.tcp)
            .field("unix", &self.unix)
            .finish()
    }
}

/// Why TLS settings could not be loaded; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate{}", path.display(), detail(reason))]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1){}", path.display(), detail(reason))]
    NoPrivateKey { path: PathBuf, reason: String },
    #[error("client CA {} is unusable: {reason}", path.display())]
    BadClientCa { path: PathBuf, reason: String },
    #[error("the certificate {} and key {} cannot serve TLS: {reason}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

fn detail(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

impl NbdTls {
    /// Loads a PEM certificate chain and its key, and optionally a PEM CA bundle: when given,
    /// only clients presenting a certificate it signed complete the TLS handshake (mutual TLS).
    /// TCP then requires TLS and the unix socket stays plaintext; change `tcp`/`unix` to taste.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<NbdTls, TlsSetupError> {
        let chain = read_certificates(cert)?;
        let key_der = read_private_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rejected = |reason: String| TlsSetupError::Rejected {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| rejected(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| rejected(e.to_string()))?;
        Ok(NbdTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
            tcp: TlsPolicy::Required,
            unix: TlsPolicy::Off,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Whether clients must present a certificate (a client CA was given).
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_file(path)?;
    let no_cert = |reason: String| TlsSetupError::NoCertificate {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_cert(String::new()));
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsSetupError::NoPrivateKey {
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => String::new(),
            e => e.to_string(),
        },
    })
}

fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca)? {
        roots.add(cert).map_err(|e| TlsSetupError::BadClientCa {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsSetupError::BadClientCa {
            path: ca.to_owned(),
            reason: e.to_string(),
        })
}
