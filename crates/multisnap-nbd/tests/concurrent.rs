//! Many clients and connections at once: parallel qemu-io writers on
//! distinct regions, then nbdcopy with several connections and many
//! requests in flight, verified with qemu-img compare.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_qemu_io_writers() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let qio = qio.clone();
        let uri = if i % 2 == 0 {
            srv.uri("disk")
        } else {
            srv.unix_uri("disk")
        };
        tasks.push(tokio::spawn(async move {
            let off = i * 512 * 1024;
            let w = format!("aio_write -P {} {} 512k", i + 1, off);
            let r = format!("read -P {} {} 512k", i + 1, off);
            qemu_io_ok(&qio, &uri, &[&w, "aio_flush", &r]).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mem = srv.disk.snapshot();
    for i in 0..16usize {
        let r = i * 512 * 1024..(i + 1) * 512 * 1024;
        assert!(mem[r].iter().all(|&b| b == i as u8 + 1), "region {i} wrong");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_multi_conn_round_trip_matches_qemu_img_compare() {
    let (Some(nbdcopy), Some(qimg)) = (tool("nbdcopy"), tool("qemu-img")) else {
        return;
    };
    let srv = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    // Data with holes so nbdcopy exercises zero/trim paths too.
    let mut data = vec![0u8; DISK_SIZE as usize];
    let mut x: u32 = 12345;
    for (i, b) in data.iter_mut().enumerate() {
        if (i / (256 * 1024)) % 3 != 1 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
    }
    std::fs::write(&src, &data).unwrap();
    let src_s = src.to_str().unwrap();
    run_ok(
        &nbdcopy,
        &[
            "--connections=4",
            "--requests=64",
            "--request-size=65536",
            src_s,
            &srv.uri("disk"),
        ],
    )
    .await;
    assert!(
        srv.disk.snapshot() == data,
        "export differs from source after nbdcopy"
    );
    run_ok(
        &qimg,
        &["compare", "-f", "raw", "-F", "raw", src_s, &srv.uri("disk")],
    )
    .await;

    // And back out through several connections.
    let back = dir.path().join("back.img");
    let back_s = back.to_str().unwrap();
    run_ok(
        &nbdcopy,
        &["--connections=4", &srv.unix_uri("disk"), back_s],
    )
    .await;
    assert!(std::fs::read(&back).unwrap() == data);

    // The comparison can fail: change one byte.
    srv.disk.fill(4096, 1, 0);
    srv.disk.fill(4096, 1, data[4096].wrapping_add(1));
    let o = run(
        &qimg,
        &["compare", "-f", "raw", "-F", "raw", src_s, &srv.uri("disk")],
    )
    .await;
    assert!(!o.status.success(), "qemu-img compare missed a difference");
    srv.stop().await;
}
