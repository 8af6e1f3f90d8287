//! Requests past the end of the export, overflowing, or too large get the
//! errors the spec names, and the connection keeps working.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_out_of_range_requests_fail_with_spec_errors() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    let script = r#"
import errno
h.set_strict_mode(0)
size = h.get_size()
def expect(name, want, f):
    try:
        f()
        raise SystemExit("UNEXPECTED-SUCCESS " + name)
    except nbd.Error as e:
        print(name, e.errnum, e.string)
        assert e.errnum == want, (name, e.errnum, want)
expect("read past end", errno.EINVAL, lambda: h.pread(4096, size - 1))
expect("write past end", errno.ENOSPC, lambda: h.pwrite(b"x" * 4096, size - 1))
expect("zero past end", errno.ENOSPC, lambda: h.zero(4096, size))
expect("trim past end", errno.ENOSPC, lambda: h.trim(4096, size))
expect("status past end", errno.EINVAL, lambda: h.block_status(4096, size, lambda *a: 0))
expect("read overflowing", errno.EINVAL, lambda: h.pread(4096, 2**64 - 1024))
expect("read over max payload", errno.EINVAL, lambda: h.pread(33554432 + 4096, 0))
# Still usable.
h.pwrite(b"y" * 4096, size - 4096)
assert h.pread(4096, size - 4096) == b"y" * 4096
"#;
    nbdsh_script(&nbdsh, &srv.uri("disk"), WITH_BASE_ALLOCATION, script).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_read_past_end_fails() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    let o = run(
        &qio,
        &[
            "-f",
            "raw",
            &srv.uri("disk"),
            "-c",
            &format!("read {} 4k", DISK_SIZE),
        ],
    )
    .await;
    assert!(qemu_io_failed(&o), "{}", text(&o));
    srv.stop().await;
}
