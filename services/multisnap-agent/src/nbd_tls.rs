//! The command line's NBD-over-TLS flags and the server settings they make. Named and checked
//! like the gRPC ones (`--grpc-tls-*`): certificate and key go together, and files that cannot
//! be used fail the start before anything listens.

use std::path::PathBuf;

use anyhow::{Context, Result};
use multisnap_nbd::{NbdTls, TlsPolicy};

#[derive(clap::Args, Debug, Default)]
pub struct NbdTlsArgs {
    /// PEM certificate chain: NBD clients on TCP must upgrade with NBD_OPT_STARTTLS
    /// (`nbds://` URIs, qemu's tls-creds) unless --nbd-tls-allow-plaintext (needs
    /// --nbd-tls-key).
    #[arg(long, env = "MULTISNAP_NBD_TLS_CERT", requires = "nbd_tls_key")]
    pub nbd_tls_cert: Option<PathBuf>,
    /// PEM private key for --nbd-tls-cert.
    #[arg(long, env = "MULTISNAP_NBD_TLS_KEY", requires = "nbd_tls_cert")]
    pub nbd_tls_key: Option<PathBuf>,
    /// PEM CA: accept only NBD clients with a certificate it signed (mutual TLS).
    #[arg(long, env = "MULTISNAP_NBD_TLS_CLIENT_CA", requires = "nbd_tls_cert")]
    pub nbd_tls_client_ca: Option<PathBuf>,
    /// Offer TLS on the NBD TCP listener but also serve plaintext clients there (by default
    /// a certificate makes TLS required on TCP).
    #[arg(
        long,
        env = "MULTISNAP_NBD_TLS_ALLOW_PLAINTEXT",
        requires = "nbd_tls_cert"
    )]
    pub nbd_tls_allow_plaintext: bool,
    /// TLS on the NBD unix socket: `off` (default; the socket's mode and group decide who
    /// connects, and its traffic never leaves the host), `offered` or `required`.
    #[arg(
        long,
        env = "MULTISNAP_NBD_TLS_UNIX",
        value_enum,
        default_value_t = UnixTls::Off,
        requires = "nbd_tls_cert"
    )]
    pub nbd_tls_unix: UnixTls,
}

/// `--nbd-tls-unix`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnixTls {
    #[default]
    Off,
    Offered,
    Required,
}

impl NbdTlsArgs {
    /// The server's TLS settings, or `None` without a certificate. `tcp_listening`: whether
    /// the NBD TCP listener is on; a certificate that would secure nothing is refused.
    pub fn load(&self, tcp_listening: bool) -> Result<Option<NbdTls>> {
        let (Some(cert), Some(key)) = (&self.nbd_tls_cert, &self.nbd_tls_key) else {
            return Ok(None);
        };
        if !tcp_listening && self.nbd_tls_unix == UnixTls::Off {
            anyhow::bail!(
                "--nbd-tls-cert secures the NBD TCP listener, which --nbd-listen none turns off; \
                 give one or the other (or --nbd-tls-unix offered|required)"
            );
        }
        let mut tls = NbdTls::from_pem_files(cert, key, self.nbd_tls_client_ca.as_deref())
            .context("cannot set up NBD over TLS")?;
        tls.tcp = if self.nbd_tls_allow_plaintext {
            TlsPolicy::Offered
        } else {
            TlsPolicy::Required
        };
        tls.unix = match self.nbd_tls_unix {
            UnixTls::Off => TlsPolicy::Off,
            UnixTls::Offered => TlsPolicy::Offered,
            UnixTls::Required => TlsPolicy::Required,
        };
        Ok(Some(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The repository's test PKI script, run into a temp dir.
    fn make_pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tls/make-pki.sh");
        let out = std::process::Command::new("sh")
            .arg(script)
            .arg(dir.path())
            .output()
            .expect("run make-pki.sh (needs openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    fn args(pki: &Path) -> NbdTlsArgs {
        NbdTlsArgs {
            nbd_tls_cert: Some(pki.join("server-cert.pem")),
            nbd_tls_key: Some(pki.join("server-key.pem")),
            ..NbdTlsArgs::default()
        }
    }

    #[test]
    fn no_certificate_no_tls() {
        assert!(NbdTlsArgs::default().load(true).unwrap().is_none());
    }

    #[test]
    fn flags_choose_the_policies() {
        let pki = make_pki();
        let tls = args(pki.path()).load(true).unwrap().unwrap();
        assert_eq!(
            (tls.tcp, tls.unix, tls.mutual()),
            (TlsPolicy::Required, TlsPolicy::Off, false)
        );

        let tls = NbdTlsArgs {
            nbd_tls_allow_plaintext: true,
            nbd_tls_unix: UnixTls::Required,
            nbd_tls_client_ca: Some(pki.path().join("ca-cert.pem")),
            ..args(pki.path())
        }
        .load(true)
        .unwrap()
        .unwrap();
        assert_eq!(
            (tls.tcp, tls.unix, tls.mutual()),
            (TlsPolicy::Offered, TlsPolicy::Required, true)
        );
    }

    #[test]
    fn bad_files_and_useless_certificates_fail_clearly() {
        let pki = make_pki();
        let missing = NbdTlsArgs {
            nbd_tls_key: Some(pki.path().join("nope.pem")),
            ..args(pki.path())
        };
        let e = format!("{:#}", missing.load(true).unwrap_err());
        assert!(e.contains("NBD over TLS") && e.contains("nope.pem"), "{e}");

        let swapped = NbdTlsArgs {
            nbd_tls_client_ca: Some(pki.path().join("client-key.pem")),
            ..args(pki.path())
        };
        let e = format!("{:#}", swapped.load(true).unwrap_err());
        assert!(
            e.contains("client-key.pem") && e.contains("no PEM certificate"),
            "{e}"
        );

        let e = format!("{:#}", args(pki.path()).load(false).unwrap_err());
        assert!(e.contains("--nbd-listen none"), "{e}");
        let unix_only = NbdTlsArgs {
            nbd_tls_unix: UnixTls::Required,
            ..args(pki.path())
        };
        assert!(unix_only.load(false).unwrap().is_some());
    }
}
