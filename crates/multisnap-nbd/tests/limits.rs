//! Limits against careless or hostile clients: a connection cap shared by the listeners with
//! a refusal the client can print, and a request timeout that cuts a client which starts a
//! request (or stops reading replies) and stalls, while idle clients stay connected.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use multisnap_nbd::{ConnectionSlots, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REP_ERR_POLICY: u32 = (1 << 31) + 2;

fn config(max_connections: usize, request_timeout: Duration) -> ServerConfig {
    ServerConfig {
        connections: Arc::new(ConnectionSlots::new(max_connections)),
        request_timeout: Some(request_timeout),
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_with_a_reason() {
    let srv = TestServer::start_with(config(3, Duration::from_secs(60))).await;
    // Three idle clients, on both listeners: the limit is shared.
    let a = raw_greet(&srv.addr(), 3).await;
    let b = raw_go(&srv.addr(), "disk").await;
    let c = tokio::net::UnixStream::connect(&srv.socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The next one hears why, on every option.
    let mut d = raw_greet(&srv.addr(), 3).await;
    send_option(&mut d, 7, &go_payload("disk")).await;
    let (_, typ, msg) = read_option_reply(&mut d).await.unwrap();
    assert_eq!(typ, REP_ERR_POLICY);
    let msg = String::from_utf8_lossy(&msg).to_string();
    assert!(msg.contains("at most 3"), "{msg}");
    drop(d);

    // A real client prints it and fails.
    if let Some(nbdinfo) = tool("nbdinfo") {
        let out = run(&nbdinfo, &["--size", &srv.uri("disk")]).await;
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("server policy prevents"),
            "{}",
            text(&out)
        );
        if let Some(qemu_img) = tool("qemu-img") {
            // qemu prints the server's own words.
            let out = run(&qemu_img, &["info", &srv.uri("disk")]).await;
            assert!(!out.status.success(), "{}", text(&out));
            assert!(
                text(&out).contains("too many connections"),
                "{}",
                text(&out)
            );
        }
        // A slot given back serves the next client.
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = run(&nbdinfo, &["--size", &srv.uri("disk")]).await;
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            DISK_SIZE.to_string()
        );
    }
    drop((b, c));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_request_is_cut_and_an_idle_one_is_not() {
    let timeout = Duration::from_millis(400);
    let srv = TestServer::start_with(config(16, timeout)).await;

    // Idle well past the timeout between requests: still served.
    let mut idle = raw_go(&srv.addr(), "disk").await;
    tokio::time::sleep(timeout * 3).await;
    send_request(&mut idle, 0, 0, 7, 0, 512).await;
    assert_eq!(read_simple_reply(&mut idle).await.unwrap(), (0, 7));
    let mut data = vec![0u8; 512];
    idle.read_exact(&mut data).await.unwrap();

    // Half a request header, then silence: cut.
    let mut half = raw_go(&srv.addr(), "disk").await;
    half.write_all(&[0x25, 0x60, 0x95, 0x13, 0, 0])
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_by_server(&mut half).await,
        "half a header kept the connection"
    );
    assert!(started.elapsed() >= timeout, "cut before the timeout");

    // A WRITE header and part of its payload, then silence: cut.
    let mut partial = raw_go(&srv.addr(), "disk").await;
    send_request(&mut partial, 0, 1, 8, 0, 4096).await;
    partial.write_all(&[0xaa; 100]).await.unwrap();
    assert!(
        closed_by_server(&mut partial).await,
        "a partial payload kept the connection"
    );
    // None of it reached the disk.
    assert!(srv.disk.snapshot()[..4096].iter().all(|b| *b == 0));

    // The idle client and new ones are unaffected.
    send_request(&mut idle, 0, 0, 9, 0, 512).await;
    assert_eq!(read_simple_reply(&mut idle).await.unwrap(), (0, 9));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_replies_is_cut() {
    let timeout = Duration::from_millis(400);
    let srv = TestServer::start_with(config(16, timeout)).await;
    let mut s = raw_go(&srv.addr(), "disk").await;
    // Ask for far more reply data than the socket buffers hold, and never read it.
    for handle in 0..64u64 {
        send_request(&mut s, 0, 0, handle, 0, 1 << 20).await;
    }
    tokio::time::sleep(timeout * 4).await;
    // The server gave up: its side is closed, so reading drains what was sent, then EOF.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(
        drained,
        Ok(true),
        "the server kept a client that did not read"
    );
    srv.stop().await;
}
