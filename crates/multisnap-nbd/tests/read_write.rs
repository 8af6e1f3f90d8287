//! READ/WRITE round trips with qemu-io over TCP and a unix socket, with and
//! without structured replies, checked against the export's memory.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_write_then_read_over_tcp() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    let uri = srv.uri("disk");
    qemu_io_ok(
        &qio,
        &uri,
        &[
            "write -P 0xab 0 64k",
            "write -P 0xcd 1M 4k",
            "read -P 0xab 0 64k",
            "read -P 0xcd 1M 4k",
            "read -P 0 64k 4k",
        ],
    )
    .await;
    // The bytes really landed in the export.
    let mem = srv.disk.snapshot();
    assert!(mem[..65536].iter().all(|&b| b == 0xab));
    assert!(mem[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0xcd));
    assert!(mem[65536..65536 + 4096].iter().all(|&b| b == 0));

    // A wrong pattern must be detected, so the check above can fail.
    let o = run(&qio, &["-f", "raw", &uri, "-c", "read -P 0x11 0 4k"]).await;
    assert!(
        qemu_io_failed(&o),
        "pattern mismatch not reported\n{}",
        text(&o)
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_unix_socket_and_default_export() {
    let Some(qio) = tool("qemu-io") else { return };
    let srv = TestServer::start().await;
    // Empty export name selects the provider's default ("disk").
    let uri = srv.unix_uri("");
    run_ok(&qio, &["-f", "raw", &uri, "-c", "write -P 0x42 8k 8k"]).await;
    assert!(srv.disk.snapshot()[8192..16384].iter().all(|&b| b == 0x42));
    qemu_io_ok(&qio, &srv.unix_uri("disk"), &["read -P 0x42 8k 8k"]).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_and_large_requests_round_trip_via_nbdsh() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    // Structured replies on (the default) and off: both reply styles.
    for sr in ["True", "False"] {
        let before_connect = format!("h.set_request_structured_replies({sr})");
        let script = format!(
            r#"
assert h.get_structured_replies_negotiated() == {sr}
import os
data = os.urandom(5 * 1024 * 1024 + 123)
h.pwrite(data, 777)
assert h.pread(len(data), 777) == data
assert h.pread(1, 777) == data[:1]
h.shutdown()
"#
        );
        nbdsh_script(&nbdsh, &srv.uri("disk"), &before_connect, &script).await;
    }
    srv.stop().await;
}
