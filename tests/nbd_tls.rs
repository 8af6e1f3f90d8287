//! NBD over TLS with certificates made by tests/tls/make-pki.sh (openssl), checked with the
//! real clients: nbdinfo over `nbds://` and qemu-io with tls-creds-x509 connect and move data;
//! plaintext clients are refused while TLS is required; with a client CA, clients with no
//! certificate or one of another CA are refused; the unix socket stays plaintext.

use common::*;
use multisnap_tests::{self as common, require_tools};
use std::path::{Path, PathBuf};

/// The agent's TLS flags for the certificate in `pki`, plus `extra`.
fn tls_args<'a>(pki: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let mut args = vec![
        "--default-volume-size".into(),
        "67108864".into(),
        "--nbd-tls-cert".into(),
        p("server-cert.pem"),
        "--nbd-tls-key".into(),
        p("server-key.pem"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(dir: &Path, args: &[String]) -> Agent {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(dir, &args)
}

/// nbdinfo over TLS with the client directory `certs` (ca-cert.pem and optionally
/// client-cert.pem/client-key.pem).
fn nbdinfo_tls(agent: &Agent, certs: &Path) -> std::process::Output {
    let uri = format!(
        "nbds://{}/default?tls-certificates={}",
        agent.nbd,
        certs.display()
    );
    run("nbdinfo", &[&uri])
}

/// qemu-io over TLS (tls-creds-x509 with the client directory `certs`) running `cmds`.
fn qemu_io_tls(agent: &Agent, certs: &Path, cmds: &[&str]) -> std::process::Output {
    let (host, port) = agent.nbd.rsplit_once(':').expect("host:port");
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        certs.display()
    );
    let image = format!("driver=nbd,host={host},port={port},export=default,tls-creds=tls0");
    let mut args = vec!["--object", &creds, "--image-opts", &image];
    for c in cmds {
        args.extend(["-c", c]);
    }
    run("qemu-io", &args)
}

/// A client directory holding the server's CA and, if given, a client certificate and key
/// copied from `pki` under `identity` (a file prefix such as `client` or `other-ca/client`).
fn client_dir(pki: &Path, name: &str, identity: Option<&str>) -> PathBuf {
    let dir = pki.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(pki.join("ca-cert.pem"), dir.join("ca-cert.pem")).unwrap();
    if let Some(id) = identity {
        for part in ["cert", "key"] {
            let from = pki.join(format!("{id}-{part}.pem"));
            std::fs::copy(from, dir.join(format!("client-{part}.pem"))).unwrap();
        }
    }
    dir
}

/// `multisnap_nbd_handshakes_total{result="RESULT"}` from the agent's /metrics.
fn handshakes(agent: &Agent, result: &str) -> f64 {
    agent.metric(&format!(
        "multisnap_nbd_handshakes_total{{result=\"{result}\"}}"
    ))
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn tls_required_serves_nbds_clients_and_refuses_plaintext() {
    require_tools!("openssl", "nbdinfo", "qemu-io", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let agent = start(&tmp.path().join("data"), &tls_args(&pki, &[]));

    let info = nbdinfo_tls(&agent, &pki);
    assert!(info.status.success(), "nbds://: {}", describe(&info));
    assert!(text(&info).contains("67108864"), "{}", describe(&info));

    let out = qemu_io_tls(&agent, &pki, &["write -P 0x55 0 64k", "read -P 0x55 0 64k"]);
    assert!(out.status.success(), "qemu-io over TLS: {}", describe(&out));
    assert!(
        !text(&out).contains("Pattern verification failed"),
        "{}",
        describe(&out)
    );

    // Plaintext on TCP is refused with the server's TLS-required answer.
    let plain = run("nbdinfo", &[&agent.uri("default")]);
    assert!(
        !plain.status.success(),
        "plaintext served: {}",
        describe(&plain)
    );
    assert!(text(&plain).contains("TLS"), "{}", describe(&plain));
    let plain = run(
        "qemu-io",
        &["-f", "raw", &agent.uri("default"), "-c", "read 0 4k"],
    );
    assert!(
        !plain.status.success() || text(&plain).contains("TLS"),
        "plaintext qemu-io served: {}",
        describe(&plain)
    );
    assert!(
        !text(&plain).contains("read 4096/4096"),
        "{}",
        describe(&plain)
    );

    // The unix socket stays plaintext, and holds what was written over TLS.
    qemu_io_ro(&agent.unix_uri("default"), &["read -P 0x55 0 64k"]);
    // Operators see how clients came in: TLS sessions (nbdinfo, qemu-io), the unix socket's
    // plaintext one, and the plaintext TCP clients that gave up on being told TLS is needed.
    assert!(handshakes(&agent, "tls") >= 2.0);
    assert!(handshakes(&agent, "plaintext") >= 1.0);
    assert!(handshakes(&agent, "abandoned") >= 2.0);
    assert_eq!(handshakes(&agent, "tls_failed"), 0.0);
    agent.stop_and_verify();
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_of_the_ca() {
    require_tools!("openssl", "nbdinfo", "qemu-io", "curl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let ca = pki.join("ca-cert.pem").to_string_lossy().into_owned();
    let agent = start(
        &tmp.path().join("data"),
        &tls_args(&pki, &["--nbd-tls-client-ca", &ca]),
    );

    let info = nbdinfo_tls(&agent, &pki);
    assert!(
        info.status.success(),
        "client of the CA: {}",
        describe(&info)
    );
    let out = qemu_io_tls(&agent, &pki, &["write -P 0x66 0 4k", "read -P 0x66 0 4k"]);
    assert!(
        out.status.success(),
        "qemu-io, client of the CA: {}",
        describe(&out)
    );

    let anonymous = client_dir(&pki, "anonymous", None);
    let foreign = client_dir(&pki, "foreign", Some("other-ca/client"));
    for certs in [&anonymous, &foreign] {
        let info = nbdinfo_tls(&agent, certs);
        assert!(
            !info.status.success(),
            "{}: {}",
            certs.display(),
            describe(&info)
        );
        let out = qemu_io_tls(&agent, certs, &["read 0 4k"]);
        assert!(
            !out.status.success() || !text(&out).contains("read 4096/4096"),
            "qemu-io with {}: {}",
            certs.display(),
            describe(&out)
        );
        assert!(!text(&out).contains("read 4096/4096"), "{}", describe(&out));
    }
    // Refused certificates are counted where an operator's alert can see them (a client
    // may also give up before its certificate is judged: abandoned), and no bad client got
    // a session.
    let count = |r| handshakes(&agent, r);
    assert!(
        count("tls_failed") >= 2.0,
        "tls_failed {}",
        count("tls_failed")
    );
    assert_eq!(
        count("tls"),
        2.0,
        "only the two good clients get TLS sessions"
    );
    agent.stop_and_verify();
}

#[test]
fn allow_plaintext_serves_tls_and_plaintext_clients() {
    require_tools!("openssl", "nbdinfo");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let agent = start(
        &tmp.path().join("data"),
        &tls_args(&pki, &["--nbd-tls-allow-plaintext"]),
    );
    let info = nbdinfo_tls(&agent, &pki);
    assert!(info.status.success(), "nbds://: {}", describe(&info));
    let plain = run("nbdinfo", &[&agent.uri("default")]);
    assert!(plain.status.success(), "nbd://: {}", describe(&plain));
    agent.stop_and_verify();
}

#[test]
fn unusable_certificate_files_fail_the_start() {
    require_tools!("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    make_tls_pki(&pki);
    let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let nbd = format!("127.0.0.1:{}", free_port());
    let listen = [
        "--nbd-listen",
        &nbd,
        "--grpc-listen",
        "none",
        "--metrics-listen",
        "none",
    ];
    for (cert, key, ca, named) in [
        (
            p("server-cert.pem"),
            p("missing-key.pem"),
            None,
            "missing-key.pem",
        ),
        (
            p("server-key.pem"),
            p("server-key.pem"),
            None,
            "server-key.pem",
        ),
        (
            p("server-cert.pem"),
            p("client-key.pem"),
            None,
            "client-key.pem",
        ),
        (
            p("server-cert.pem"),
            p("server-key.pem"),
            Some(p("nope.pem")),
            "nope.pem",
        ),
    ] {
        let mut args: Vec<&str> = listen.to_vec();
        args.extend(["--nbd-tls-cert", &cert, "--nbd-tls-key", &key]);
        if let Some(ca) = &ca {
            args.extend(["--nbd-tls-client-ca", ca]);
        }
        let out = agent_cmd(&tmp.path().join("data"), &args);
        assert!(!out.status.success(), "started with {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NBD over TLS") && err.contains(named),
            "{args:?}: {}",
            describe(&out)
        );
    }
}
