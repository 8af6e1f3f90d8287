//! NBD_CMD_BLOCK_STATUS for base:allocation through nbdinfo --map,
//! qemu-img map and nbdsh (REQ_ONE), plus sparse structured reads.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_shows_data_and_holes() {
    let Some(nbdinfo) = tool("nbdinfo") else {
        return;
    };
    let srv = TestServer::start().await;
    srv.disk.fill(1 << 20, 65536, 9);
    let out = run_ok(&nbdinfo, &["--map", &srv.uri("disk")]).await;
    // offset length type(description)
    let rows: Vec<(u64, u64, u32)> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (0, 1 << 20, 3),
            (1 << 20, 65536, 0),
            ((1 << 20) + 65536, DISK_SIZE - (1 << 20) - 65536, 3)
        ],
        "{out}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_map_sees_allocation() {
    let Some(qimg) = tool("qemu-img") else { return };
    let srv = TestServer::start().await;
    srv.disk.fill(2 << 20, 4096, 9);
    let out = run_ok(
        &qimg,
        &["map", "--output=json", "-f", "raw", &srv.uri("disk")],
    )
    .await;
    assert!(
        out.contains(&format!("\"start\": {}, \"length\": 4096, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true", 2 << 20)),
        "{out}"
    );
    assert!(out.contains("\"start\": 0, \"length\": 2097152, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"), "{out}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_req_one_and_sparse_reads() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    srv.disk.fill(8192, 4096, 0x77);
    let script = r#"
assert h.can_meta_context("base:allocation")
got = []
def cb(meta, offset, entries, err):
    got.append((meta, offset, list(entries)))
h.block_status(65536, 0, cb, nbd.CMD_FLAG_REQ_ONE)
assert got == [("base:allocation", 0, [8192, 3])], got
got.clear()
h.block_status(65536, 0, cb)
assert got == [("base:allocation", 0, [8192, 3, 4096, 0, 53248, 3])], got
# A structured read spanning hole/data/hole must reassemble exactly.
chunks = []
def chunk(buf, offset, status, err):
    chunks.append((offset, len(buf), status))
    return 0
buf = h.pread_structured(65536, 0, chunk)
assert buf == bytes(8192) + b"\x77" * 4096 + bytes(53248)
kinds = sorted(set(c[2] for c in chunks))
assert kinds == [nbd.READ_DATA, nbd.READ_HOLE], chunks
# DF: a single data chunk.
chunks.clear()
buf = h.pread_structured(65536, 0, chunk, nbd.CMD_FLAG_DF)
assert len(chunks) == 1 and chunks[0][2] == nbd.READ_DATA, chunks
"#;
    nbdsh_script(&nbdsh, &srv.uri("disk"), WITH_BASE_ALLOCATION, script).await;
    srv.stop().await;
}
