//! gRPC over TLS (and mutual TLS) with certificates made by openssl, checked with Python
//! grpcio: the right CA connects, plaintext and unknown clients are refused, the unix socket
//! stays local plaintext.

use common::*;
use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate it signs for `cn`, valid for localhost and 127.0.0.1.
fn make_ca_and_cert(dir: &Path, ca: &str, cn: &str) {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
        "-keyout",
        &p(&format!("{ca}.key")),
        "-out",
        &p(&format!("{ca}.pem")),
    ]);
    let ext = dir.join(format!("{cn}.ext"));
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &p(&format!("{cn}.key")),
        "-out",
        &p(&format!("{cn}.csr")),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&format!("{cn}.csr")),
        "-CA",
        &p(&format!("{ca}.pem")),
        "-CAkey",
        &p(&format!("{ca}.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        &p(&format!("{cn}.pem")),
    ]);
}

fn call(addr: &str, env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = grpcurl();
    cmd.args([addr, "call", "multisnap.v1.VolumeService/ListVolumes", "{}"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn grpc_over_tls_and_mutual_tls() {
    require_tools!("openssl");
    require_grpcio!();
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path();
    make_ca_and_cert(certs, "server-ca", "server");
    make_ca_and_cert(certs, "client-ca", "client");
    make_ca_and_cert(certs, "rogue-ca", "rogue");
    let f = |n: &str| certs.join(n).to_string_lossy().into_owned();

    // Server TLS only.
    let dir = tmp.path().join("data");
    let agent = Agent::start(
        &dir,
        &[
            "--default-volume-size",
            "16777216",
            "--grpc-tls-cert",
            &f("server.pem"),
            "--grpc-tls-key",
            &f("server.key"),
        ],
    );
    let ca = vec![("GRPCURL_CACERT", f("server-ca.pem"))];
    let (ok, out) = call(&agent.grpc, &ca);
    assert!(ok && out.contains("\"default\""), "TLS call failed: {out}");
    let (ok, _) = call(&agent.grpc, &[]);
    assert!(
        !ok,
        "a plaintext client must not get through a TLS listener"
    );
    let (ok, _) = call(&agent.grpc, &[("GRPCURL_CACERT", f("rogue-ca.pem"))]);
    assert!(
        !ok,
        "a server certificate from another CA must not be trusted"
    );
    let sock = format!("unix:{}", dir.join("grpc.sock").display());
    let (ok, out) = call(&sock, &[]);
    assert!(ok, "the unix socket stays plaintext: {out}");
    agent.stop_and_verify();

    // Mutual TLS: only clients signed by client-ca.
    let agent = Agent::start(
        &dir,
        &[
            "--grpc-tls-cert",
            &f("server.pem"),
            "--grpc-tls-key",
            &f("server.key"),
            "--grpc-tls-client-ca",
            &f("client-ca.pem"),
        ],
    );
    let (ok, out) = call(&agent.grpc, &ca);
    assert!(!ok, "a client without a certificate must be refused: {out}");
    let mut with_cert = ca.clone();
    with_cert.push(("GRPCURL_CERT", f("client.pem")));
    with_cert.push(("GRPCURL_KEY", f("client.key")));
    let (ok, out) = call(&agent.grpc, &with_cert);
    assert!(
        ok,
        "a client certificate from client-ca must be accepted: {out}"
    );
    let mut rogue = ca.clone();
    rogue.push(("GRPCURL_CERT", f("rogue.pem")));
    rogue.push(("GRPCURL_KEY", f("rogue.key")));
    let (ok, _) = call(&agent.grpc, &rogue);
    assert!(!ok, "a client certificate from another CA must be refused");
    agent.stop_and_verify();

    // Misconfiguration fails the start with a clear message.
    let out = Command::new(agent_bin())
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--grpc-tls-cert",
            &f("server.pem"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(agent_bin())
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--grpc-tls-cert",
            &f("missing.pem"),
            "--grpc-tls-key",
            &f("server.key"),
        ])
        .args([
            "--nbd-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--grpc-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a missing certificate must fail the start"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
