//! Asking for an export that does not exist gets NBD_REP_ERR_UNKNOWN with a
//! message, and the server keeps serving.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_an_error_for_unknown_exports() {
    let Some(nbdinfo) = tool("nbdinfo") else {
        return;
    };
    let srv = TestServer::start().await;
    let o = run(&nbdinfo, &[&srv.uri("nope")]).await;
    assert!(!o.status.success(), "{}", text(&o));
    let all = text(&o);
    assert!(all.contains("nope"), "error should name the export:\n{all}");

    if let Some(qio) = tool("qemu-io") {
        let o = run(&qio, &["-f", "raw", &srv.uri("nope"), "-c", "read 0 512"]).await;
        assert!(qemu_io_failed(&o), "{}", text(&o));
    }
    // Still serving.
    run_ok(&nbdinfo, &[&srv.uri("disk")]).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_go_for_unknown_export_gets_rep_err_unknown_with_message() {
    let srv = TestServer::start().await;
    let mut s = raw_greet(&srv.addr(), 3).await;
    send_option(&mut s, 7, &go_payload("missing")).await;
    let (opt, typ, data) = read_option_reply(&mut s).await.unwrap();
    assert_eq!(opt, 7);
    assert_eq!(typ, (1 << 31) + 6, "expected NBD_REP_ERR_UNKNOWN");
    assert!(String::from_utf8_lossy(&data).contains("missing"));
    // Negotiation goes on: the same connection can pick a real export.
    go(&mut s, "disk").await;
    srv.stop().await;
}
