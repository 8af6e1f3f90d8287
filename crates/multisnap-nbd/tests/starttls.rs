//! NBD_OPT_STARTTLS: the option-phase rules of the spec's TLS modes (required, offered, off),
//! the upgrade on the same socket, mutual TLS, and loading the certificate files. Certificates
//! come from tests/tls/make-pki.sh (openssl); the client side is rustls.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use multisnap_nbd::{proto, NbdTls, ServerConfig, TlsPolicy, TlsSetupError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const CLIENT_FLAGS: u32 = 3; // FIXED_NEWSTYLE | NO_ZEROES
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;

/// A fresh CA, server and client certificates, and a client of another CA, in a temp dir.
fn make_pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tls/make-pki.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run make-pki.sh (needs openssl)");
    assert!(
        out.status.success(),
        "make-pki.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn server_tls(pki: &Path, client_ca: bool) -> NbdTls {
    let ca = pki.join("ca-cert.pem");
    NbdTls::from_pem_files(
        &pki.join("server-cert.pem"),
        &pki.join("server-key.pem"),
        client_ca.then_some(ca.as_path()),
    )
    .expect("load server certificate")
}

async fn server(tls: Option<NbdTls>) -> TestServer {
    TestServer::start_with(ServerConfig {
        tls,
        ..ServerConfig::default()
    })
    .await
}

/// A rustls client trusting the test CA, presenting `identity` (a certificate/key file prefix
/// in `pki`) if given.
fn client_config(pki: &Path, identity: Option<&str>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca-cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(prefix) => {
            let cert = pki.join(format!("{prefix}-cert.pem"));
            let key = pki.join(format!("{prefix}-key.pem"));
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// Sends NBD_OPT_STARTTLS, expects the ACK, and runs the client side of the TLS handshake.
async fn start_tls(
    mut s: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    send_option(&mut s, OPT_STARTTLS, &[]).await;
    assert_eq!(reply_type(&mut s, OPT_STARTTLS).await, REP_ACK);
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
}

/// Reads one option reply to `option` and returns its type.
async fn reply_type<S: AsyncRead + Unpin>(s: &mut S, option: u32) -> u32 {
    let (opt, typ, _) = read_option_reply(s).await.expect("option reply");
    assert_eq!(opt, option, "reply to another option");
    typ
}

/// NBD_OPT_LIST answered with the exports and an ACK (not an error).
async fn assert_lists_exports<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    send_option(s, OPT_LIST, &[]).await;
    let mut servers = 0;
    loop {
        match reply_type(s, OPT_LIST).await {
            REP_SERVER => servers += 1,
            REP_ACK => break,
            other => panic!("NBD_OPT_LIST answered {other:#x}"),
        }
    }
    assert_eq!(servers, 2, "the test server has two exports");
}

/// A 4 KiB write and a read of it back through a connection in transmission phase.
async fn write_and_read_back<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, byte: u8) {
    let data = vec![byte; 4096];
    send_request(s, 0, 1, 7, 8192, 4096).await;
    s.write_all(&data).await.unwrap();
    assert_eq!(read_simple_reply(s).await.unwrap(), (0, 7));
    send_request(s, 0, 0, 8, 8192, 4096).await;
    assert_eq!(read_simple_reply(s).await.unwrap(), (0, 8));
    let mut back = vec![0u8; 4096];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
}

/// True when the connection is closed (or reset) without another byte.
async fn is_closed<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn required_tls_answers_tls_reqd_to_every_option_before_starttls() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), false))).await;
    let mut s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    for (option, data) in [
        (OPT_LIST, Vec::new()),
        (OPT_STRUCTURED_REPLY, Vec::new()),
        (OPT_INFO, go_payload("disk")),
        (OPT_GO, go_payload("disk")),
        (42, Vec::new()),
    ] {
        send_option(&mut s, option, &data).await;
        let typ = reply_type(&mut s, option).await;
        assert_eq!(typ, proto::REP_ERR_TLS_REQD, "option {option}");
    }
    send_option(&mut s, OPT_ABORT, &[]).await;
    assert_eq!(reply_type(&mut s, OPT_ABORT).await, REP_ACK);
    srv.stop().await;
}

#[tokio::test]
async fn export_name_before_required_tls_closes_the_connection() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), false))).await;
    let mut s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    send_option(&mut s, OPT_EXPORT_NAME, b"disk").await;
    assert!(is_closed(&mut s).await, "EXPORT_NAME before TLS was served");
    // The next client is served.
    let s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    let mut tls = start_tls(s, client_config(pki.path(), None)).await.unwrap();
    go(&mut tls, "disk").await;
    write_and_read_back(&mut tls, 0x11).await;
    srv.stop().await;
}

#[tokio::test]
async fn after_starttls_options_are_served_and_a_second_starttls_is_invalid() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), false))).await;
    let s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    let mut tls = start_tls(s, client_config(pki.path(), None)).await.unwrap();
    send_option(&mut tls, OPT_STARTTLS, &[]).await;
    assert_eq!(
        reply_type(&mut tls, OPT_STARTTLS).await,
        proto::REP_ERR_INVALID
    );
    assert_lists_exports(&mut tls).await;
    go(&mut tls, "disk").await;
    write_and_read_back(&mut tls, 0x22).await;
    assert_eq!(srv.disk.snapshot()[8192..8192 + 4096], [0x22; 4096]);
    srv.stop().await;
}

#[tokio::test]
async fn starttls_with_data_is_invalid() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), false))).await;
    let mut s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    send_option(&mut s, OPT_STARTTLS, b"x").await;
    assert_eq!(
        reply_type(&mut s, OPT_STARTTLS).await,
        proto::REP_ERR_INVALID
    );
    let mut tls = start_tls(s, client_config(pki.path(), None)).await.unwrap();
    go(&mut tls, "disk").await;
    srv.stop().await;
}

#[tokio::test]
async fn without_tls_settings_starttls_is_unsupported() {
    let srv = server(None).await;
    let mut s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    send_option(&mut s, OPT_STARTTLS, &[]).await;
    assert_eq!(reply_type(&mut s, OPT_STARTTLS).await, proto::REP_ERR_UNSUP);
    go(&mut s, "disk").await;
    write_and_read_back(&mut s, 0x33).await;
    srv.stop().await;
}

#[tokio::test]
async fn offered_tls_serves_plaintext_and_tls_clients() {
    let pki = make_pki();
    let mut tls = server_tls(pki.path(), false);
    tls.tcp = TlsPolicy::Offered;
    let srv = server(Some(tls)).await;

    let mut plain = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    assert_lists_exports(&mut plain).await;
    go(&mut plain, "disk").await;
    write_and_read_back(&mut plain, 0x44).await;

    let s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    let mut tls = start_tls(s, client_config(pki.path(), None)).await.unwrap();
    go(&mut tls, "disk").await;
    write_and_read_back(&mut tls, 0x45).await;
    srv.stop().await;
}

#[tokio::test]
async fn options_agreed_before_starttls_are_forgotten() {
    let pki = make_pki();
    let mut tls = server_tls(pki.path(), false);
    tls.tcp = TlsPolicy::Offered;
    let srv = server(Some(tls)).await;
    let mut s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    send_option(&mut s, OPT_STRUCTURED_REPLY, &[]).await;
    assert_eq!(reply_type(&mut s, OPT_STRUCTURED_REPLY).await, REP_ACK);
    let mut tls = start_tls(s, client_config(pki.path(), None)).await.unwrap();
    // Metadata contexts need structured replies, agreed again inside TLS.
    let mut query = 4u32.to_be_bytes().to_vec();
    query.extend_from_slice(b"disk");
    query.extend_from_slice(&1u32.to_be_bytes());
    query.extend_from_slice(&15u32.to_be_bytes());
    query.extend_from_slice(b"base:allocation");
    send_option(&mut tls, OPT_SET_META_CONTEXT, &query).await;
    assert_eq!(
        reply_type(&mut tls, OPT_SET_META_CONTEXT).await,
        proto::REP_ERR_INVALID
    );
    srv.stop().await;
}

#[tokio::test]
async fn the_unix_socket_stays_plaintext_unless_told_otherwise() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), false))).await;
    let mut s = tokio::net::UnixStream::connect(&srv.socket).await.unwrap();
    greet(&mut s, CLIENT_FLAGS).await;
    send_option(&mut s, OPT_STARTTLS, &[]).await;
    assert_eq!(reply_type(&mut s, OPT_STARTTLS).await, proto::REP_ERR_UNSUP);
    go(&mut s, "disk").await;
    write_and_read_back(&mut s, 0x55).await;
    srv.stop().await;

    let mut tls = server_tls(pki.path(), false);
    tls.unix = TlsPolicy::Required;
    let srv = server(Some(tls)).await;
    let mut s = tokio::net::UnixStream::connect(&srv.socket).await.unwrap();
    greet(&mut s, CLIENT_FLAGS).await;
    send_option(&mut s, OPT_GO, &go_payload("disk")).await;
    assert_eq!(reply_type(&mut s, OPT_GO).await, proto::REP_ERR_TLS_REQD);
    srv.stop().await;
}

/// Runs a TLS client presenting `identity` against a server that requires client
/// certificates; true if it got as far as listing the exports.
async fn mutual_tls_client_served(srv: &TestServer, pki: &Path, identity: Option<&str>) -> bool {
    let s = raw_greet(&srv.addr(), CLIENT_FLAGS).await;
    let Ok(mut tls) = start_tls(s, client_config(pki, identity)).await else {
        return false;
    };
    // With TLS 1.3 the client finishes its handshake first; a refused certificate shows up
    // as an alert or a closed connection on the next read.
    send_option(&mut tls, OPT_LIST, &[]).await;
    tls.flush().await.ok();
    read_option_reply(&mut tls).await.is_ok()
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_ca() {
    let pki = make_pki();
    let srv = server(Some(server_tls(pki.path(), true))).await;
    assert!(!mutual_tls_client_served(&srv, pki.path(), None).await);
    assert!(!mutual_tls_client_served(&srv, pki.path(), Some("other-ca/client")).await);
    assert!(mutual_tls_client_served(&srv, pki.path(), Some("client")).await);
    srv.stop().await;
}

#[test]
fn bad_certificate_files_are_named_in_the_error() {
    let pki = make_pki();
    let p = |name: &str| -> PathBuf { pki.path().join(name) };
    let load = |cert: &str, key: &str, ca: Option<&str>| {
        let ca = ca.map(p);
        NbdTls::from_pem_files(&p(cert), &p(key), ca.as_deref()).unwrap_err()
    };

    let e = load("missing.pem", "server-key.pem", None);
    assert!(matches!(e, TlsSetupError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let e = load("server-key.pem", "server-key.pem", None);
    assert!(matches!(e, TlsSetupError::NoCertificate { .. }), "{e}");

    let e = load("server-cert.pem", "server-cert.pem", None);
    assert!(matches!(e, TlsSetupError::NoPrivateKey { .. }), "{e}");

    let e = load("server-cert.pem", "client-key.pem", None);
    assert!(matches!(e, TlsSetupError::Rejected { .. }), "{e}");

    let e = load("server-cert.pem", "server-key.pem", Some("server-key.pem"));
    assert!(matches!(e, TlsSetupError::NoCertificate { .. }), "{e}");
    assert!(e.to_string().contains("server-key.pem"), "{e}");
}
