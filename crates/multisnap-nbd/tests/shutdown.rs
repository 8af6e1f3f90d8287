//! Cancelling the shutdown token stops the listeners and ends idle and
//! half-negotiated connections promptly; the serve functions return Ok.

mod common;
use common::*;

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_with_idle_clients_connected() {
    let srv = TestServer::start().await;
    let mut in_handshake = raw_greet(&srv.addr(), 3).await;
    let mut in_transmission = raw_go(&srv.addr(), "disk").await;
    // A request in flight when shutdown starts still gets its reply.
    send_request(&mut in_transmission, 0, 3, 5, 0, 0).await; // FLUSH
    let (err, h) = read_simple_reply(&mut in_transmission).await.unwrap();
    assert_eq!((err, h), (0, 5));

    let t = Instant::now();
    let addr = srv.addr();
    srv.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(closed_by_server(&mut in_handshake).await);
    assert!(closed_by_server(&mut in_transmission).await);
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
