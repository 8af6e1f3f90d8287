//! NBD_OPT_LIST / NBD_OPT_INFO seen through nbdinfo, and qemu-img info.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_exports_with_descriptions() {
    let Some(nbdinfo) = tool("nbdinfo") else {
        return;
    };
    let srv = TestServer::start().await;
    let uri = format!("nbd://127.0.0.1:{}", srv.port);
    let out = run_ok(&nbdinfo, &["--list", "--json", &uri]).await;
    for needle in [
        "\"export-name\": \"disk\"",
        "\"export-name\": \"ro\"",
        "scratch disk",
        "read-only image",
        &format!("\"export-size\": {DISK_SIZE}"),
        &format!("\"export-size\": {RO_SIZE}"),
        "base:allocation",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let out = run_ok(&nbdinfo, &["--list", &srv.unix_uri("")]).await;
    assert!(out.contains("disk") && out.contains("ro"), "{out}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_json_reports_flags_and_block_sizes() {
    let Some(nbdinfo) = tool("nbdinfo") else {
        return;
    };
    let srv = TestServer::start().await;
    let out = run_ok(&nbdinfo, &["--json", &srv.uri("disk")]).await;
    for needle in [
        "\"is_read_only\": false",
        "\"can_flush\": true",
        "\"can_fua\": true",
        "\"can_trim\": true",
        "\"can_zero\": true",
        "\"can_multi_conn\": true",
        "\"can_df\": true",
        "\"protocol\": \"newstyle-fixed\"",
        "\"structured\": true",
        "\"block_size_maximum\": 33554432",
        "\"export-name\": \"disk\"",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let out = run_ok(&nbdinfo, &["--json", &srv.uri("ro")]).await;
    for needle in [
        "\"is_read_only\": true",
        "\"can_trim\": false",
        "\"can_zero\": false",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_sees_size() {
    let Some(qimg) = tool("qemu-img") else { return };
    let srv = TestServer::start().await;
    let out = run_ok(&qimg, &["info", "--output=json", &srv.uri("disk")]).await;
    assert!(
        out.contains(&format!("\"virtual-size\": {DISK_SIZE}")),
        "{out}"
    );
    srv.stop().await;
}
