//! Payload buffers are reused across a connection's requests: no byte of
//! one request may reach another's reply. Each connection here first fills
//! its buffers with a pattern (WRITE, then READ it back), then reads what
//! must come back as zeros or as an error.

mod common;
use common::*;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const MIB: u32 = 1 << 20;

/// Reads a simple reply's header and, on success, its `len` data bytes.
async fn read_reply(s: &mut tokio::net::TcpStream, handle: u64, len: u32) -> (u32, Vec<u8>) {
    let (err, h) = read_simple_reply(s).await.expect("reply header");
    assert_eq!(h, handle);
    let mut data = vec![0u8; if err == 0 { len as usize } else { 0 }];
    s.read_exact(&mut data).await.expect("reply data");
    (err, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_replies_never_carry_an_earlier_requests_bytes() {
    let srv = TestServer::start().await;
    let mut s = raw_go(&srv.addr(), "disk").await;
    let mut handle = 0;
    for round in 0..3u8 {
        let pattern = 0xA0 + round;
        handle += 1;
        send_request(&mut s, 0, CMD_WRITE, handle, 0, MIB).await;
        s.write_all(&vec![pattern; MIB as usize]).await.unwrap();
        assert_eq!(read_reply(&mut s, handle, 0).await.0, 0);
        handle += 1;
        send_request(&mut s, 0, CMD_READ, handle, 0, MIB).await;
        let (err, data) = read_reply(&mut s, handle, MIB).await;
        assert_eq!(err, 0);
        assert!(data.iter().all(|&b| b == pattern), "round {round}");

        // Never written: zeros, whatever size reuses the pattern's buffer.
        for len in [MIB, 4096, 3 * 4096 + 17, MIB / 2] {
            handle += 1;
            send_request(&mut s, 0, CMD_READ, handle, 4 * u64::from(MIB), len).await;
            let (err, data) = read_reply(&mut s, handle, len).await;
            assert_eq!(err, 0);
            assert!(
                data.iter().all(|&b| b == 0),
                "stale bytes in a read of {len}"
            );
        }

        // A failed read sends its error and nothing else: the next reply
        // header must follow at once (stale data would put the stream out
        // of step and fail the magic check).
        srv.disk.fail_reads.store(true, Ordering::Relaxed);
        handle += 1;
        send_request(&mut s, 0, CMD_READ, handle, 0, MIB).await;
        let (err, _) = read_reply(&mut s, handle, MIB).await;
        assert_eq!(err, 5, "EIO expected");
        srv.disk.fail_reads.store(false, Ordering::Relaxed);
        handle += 1;
        send_request(&mut s, 0, CMD_READ, handle, 8 * u64::from(MIB), MIB).await;
        let (err, data) = read_reply(&mut s, handle, MIB).await;
        assert_eq!(err, 0);
        assert!(data.iter().all(|&b| b == 0));
    }
    drop(s);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_reads_of_holes_after_a_pattern_read_zeros_with_qemu_io() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    let uri = srv.uri("disk");
    // One qemu-io process: one connection, so every read below may get a
    // buffer that last held 0xab or 0xcd.
    qemu_io_ok(
        &qio,
        &uri,
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "read -P 0 2M 1M",
            "write -P 0xcd 4M 64k",
            "read -P 0xab 0 1M",
            // Data then hole in one read.
            "read -P 0xcd 4M 64k",
            "read -P 0 4160k 960k",
            "aio_read -P 0 6M 1M",
            "aio_read -P 0xab 0 1M",
            "aio_flush",
            "read -P 0 9M 4k",
        ],
    )
    .await;
    srv.stop().await;
}
