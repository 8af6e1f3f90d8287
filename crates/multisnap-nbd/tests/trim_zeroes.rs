//! TRIM and WRITE_ZEROES (with and without NO_HOLE) from qemu-io and nbdsh:
//! data reads back as zero and allocation changes as requested.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_discard_and_write_zeroes() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    srv.disk.fill(0, 1 << 20, 0xee);
    qemu_io_ok(
        &qio,
        &srv.uri("disk"),
        &[
            "discard 0 256k",
            "write -z 256k 256k",
            "write -z -u 512k 256k",
            "read -P 0 0 768k",
            "read -P 0xee 768k 256k",
        ],
    )
    .await;
    let mem = srv.disk.snapshot();
    assert!(mem[..768 * 1024].iter().all(|&b| b == 0));
    assert!(mem[768 * 1024..1 << 20].iter().all(|&b| b == 0xee));
    assert!(srv.disk.trims.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_zero_no_hole_keeps_allocation_trim_punches_hole() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    srv.disk.fill(0, 1 << 20, 1);
    let script = r#"
def status(off, n):
    out = []
    def cb(meta, offset, entries, err):
        out.extend(entries)
    h.block_status(n, off, cb)
    return out
h.zero(65536, 0, nbd.CMD_FLAG_NO_HOLE)
h.zero(65536, 65536)
h.trim(65536, 131072)
s = status(0, 65536)
assert s[1] == 0, ("NO_HOLE zero must stay allocated", s)
s = status(65536, 65536)
assert s[1] & 1, ("zero without NO_HOLE may punch", s)
s = status(131072, 65536)
assert s[1] == 3, ("trim punched a hole reading zero", s)
assert h.pread(196608, 0) == bytes(196608)
"#;
    nbdsh_script(&nbdsh, &srv.uri("disk"), WITH_BASE_ALLOCATION, script).await;
    srv.stop().await;
}
