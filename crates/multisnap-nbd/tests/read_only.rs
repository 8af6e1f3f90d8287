//! A read-only export advertises READ_ONLY and fails writes, trims and
//! zeroes with EPERM even when the client sends them anyway.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_read_only_export_fail_with_eperm() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    let script = r#"
import errno
assert h.is_read_only()
h.set_strict_mode(0)  # send the commands anyway; the server must refuse them
for name, f in [("write", lambda: h.pwrite(b"x" * 512, 0)),
                ("trim", lambda: h.trim(512, 0)),
                ("zero", lambda: h.zero(512, 0))]:
    try:
        f()
        print("UNEXPECTED-SUCCESS", name)
    except nbd.Error as e:
        print(name, "errnum", e.errnum)
        assert e.errnum == errno.EPERM, (name, e.errnum, e.string)
assert h.pread(512, 0) == b"\x5a" * 512
"#;
    nbdsh_script(&nbdsh, &srv.uri("ro"), "", script).await;
    assert!(
        srv.ro.snapshot().iter().all(|&b| b == 0x5a),
        "read-only export changed"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_cannot_write_read_only_export() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    let o = run(
        &qio,
        &["-f", "raw", &srv.uri("ro"), "-c", "write -P 1 0 4k"],
    )
    .await;
    assert!(qemu_io_failed(&o), "{}", text(&o));
    let out = run_ok(
        &qio,
        &["-r", "-f", "raw", &srv.uri("ro"), "-c", "read -P 0x5a 0 4k"],
    )
    .await;
    assert!(!out.contains("verification"), "{out}");
    assert!(srv.ro.snapshot().iter().all(|&b| b == 0x5a));
    srv.stop().await;
}
