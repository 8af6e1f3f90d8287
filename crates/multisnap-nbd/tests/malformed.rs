//! Hostile and broken input over a raw socket: the server answers with an
//! error or closes the connection, never panics or hangs, and keeps serving
//! new clients afterwards.

mod common;
use common::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

async fn assert_still_serving(srv: &TestServer) {
    let mut s = raw_go(&srv.addr(), "disk").await;
    send_request(&mut s, 0, 0, 42, 0, 512).await;
    let (err, handle) = read_simple_reply(&mut s).await.expect("reply");
    assert_eq!((err, handle), (0, 42));
    let mut data = vec![0u8; 512];
    s.read_exact(&mut data).await.expect("read data");
    send_request(&mut s, 0, 2, 43, 0, 0).await; // DISC
    assert!(closed_by_server(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_are_refused() {
    let srv = TestServer::start().await;

    // Unknown client flags: the spec says drop the connection.
    let mut s = raw_greet(&srv.addr(), 0x8000_0001).await;
    assert!(
        closed_by_server(&mut s).await,
        "unknown client flags accepted"
    );

    // Bad option magic.
    let mut s = raw_greet(&srv.addr(), 3).await;
    s.write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0").await.unwrap();
    assert!(closed_by_server(&mut s).await, "bad option magic accepted");

    // Truncated option header, then the client vanishes.
    let mut s = raw_greet(&srv.addr(), 3).await;
    s.write_all(&IHAVEOPT.to_be_bytes()[..5]).await.unwrap();
    drop(s);

    // Client disconnects before sending flags.
    let s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    drop(s);

    // Unknown option -> UNSUP; malformed GO -> INVALID; LIST with data ->
    // INVALID; oversized option skipped with TOO_BIG; then a good GO works.
    let mut s = raw_greet(&srv.addr(), 3).await;
    send_option(&mut s, 999, b"whatever").await;
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_UNSUP);
    send_option(&mut s, 7, &[0, 0, 0, 200, b'x']).await;
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_INVALID);
    send_option(&mut s, 3, b"junk").await;
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_INVALID);
    // Meta contexts before structured replies are invalid.
    send_option(&mut s, 10, &[0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_INVALID);
    send_option(&mut s, 7, &vec![0u8; 100 * 1024]).await;
    assert_eq!(read_option_reply(&mut s).await.unwrap().1, REP_ERR_TOO_BIG);
    go(&mut s, "disk").await;
    drop(s);

    // An option claiming 4 GiB of payload is refused without reading it.
    let mut s = raw_greet(&srv.addr(), 3).await;
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&7u32.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&b).await.unwrap();
    let (_, typ, _) = read_option_reply(&mut s).await.unwrap();
    assert_eq!(typ, REP_ERR_TOO_BIG);
    assert!(closed_by_server(&mut s).await);

    // NBD_OPT_EXPORT_NAME for an unknown export: no error reply exists, so close.
    let mut s = raw_greet(&srv.addr(), 3).await;
    send_option(&mut s, 1, b"nope").await;
    assert!(closed_by_server(&mut s).await);

    // Pure garbage.
    let mut s = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let _ = s.write_all(&[0xffu8; 4096]).await;
    assert!(closed_by_server(&mut s).await);

    assert_still_serving(&srv).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_or_a_clean_close() {
    let srv = TestServer::start().await;
    let mut s = raw_go(&srv.addr(), "disk").await;

    // Offset + length overflows u64.
    send_request(&mut s, 0, 0, 1, u64::MAX - 10, 512).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 1));
    // Read past the end.
    send_request(&mut s, 0, 0, 2, DISK_SIZE, 1).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 2));
    // Write past the end: payload is consumed, ENOSPC.
    send_request(&mut s, 0, 1, 3, DISK_SIZE - 1, 2).await;
    s.write_all(&[1, 2]).await.unwrap();
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (28, 3));
    // Unknown command.
    send_request(&mut s, 0, 77, 4, 0, 0).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 4));
    // Unknown flag.
    send_request(&mut s, 0x4000, 0, 5, 0, 1).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 5));
    // Read over the max payload: EINVAL, nothing allocated or sent.
    send_request(&mut s, 0, 0, 6, 0, u32::MAX).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 6));
    // BLOCK_STATUS without negotiated contexts.
    send_request(&mut s, 0, 7, 7, 0, 512).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 7));
    // Still in sync: a good write.
    send_request(&mut s, 0, 1, 8, 0, 4).await;
    s.write_all(b"abcd").await.unwrap();
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (0, 8));
    assert_eq!(&srv.disk.snapshot()[..4], b"abcd");

    // A WRITE announcing 4 GiB cannot be skipped: EINVAL then close.
    send_request(&mut s, 0, 1, 9, 0, u32::MAX).await;
    assert_eq!(read_simple_reply(&mut s).await.unwrap(), (22, 9));
    assert!(closed_by_server(&mut s).await);

    // Bad request magic closes.
    let mut s = raw_go(&srv.addr(), "disk").await;
    s.write_all(&[0u8; 28]).await.unwrap();
    assert!(closed_by_server(&mut s).await);

    // Truncated header, then the client goes away.
    let mut s = raw_go(&srv.addr(), "disk").await;
    s.write_all(&REQUEST_MAGIC.to_be_bytes()).await.unwrap();
    drop(s);

    // Client disconnects in the middle of a write payload.
    let mut s = raw_go(&srv.addr(), "disk").await;
    send_request(&mut s, 0, 1, 10, 0, 65536).await;
    s.write_all(&[9u8; 1000]).await.unwrap();
    drop(s);

    // Many pipelined requests without reading replies, then hang up.
    let mut s = raw_go(&srv.addr(), "disk").await;
    for i in 0..500u64 {
        send_request(&mut s, 0, 0, i, 0, 65536).await;
    }
    drop(s);

    assert_still_serving(&srv).await;
    srv.stop().await;
}
