//! FLUSH and FUA reach the export, and the metrics observer sees requests.

mod common;
use common::*;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use multisnap_nbd::{Observer, RequestEvent, RequestKind, ServerConfig};

#[derive(Default)]
struct Recorder(Mutex<Vec<(RequestKind, u64, bool)>>);

impl Observer for Recorder {
    fn request_finished(&self, e: &RequestEvent<'_>) {
        assert_eq!(e.export, "disk");
        self.0
            .lock()
            .unwrap()
            .push((e.kind, e.bytes, e.error.is_some()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_fua_write_and_flush_reach_the_export() {
    let Some(qio) = tool("qemu-io") else { return };
    let rec = Arc::new(Recorder::default());
    let srv = TestServer::start_with(ServerConfig {
        observer: Some(rec.clone()),
        ..ServerConfig::default()
    })
    .await;
    run_ok(
        &qio,
        &[
            "-f",
            "raw",
            &srv.uri("disk"),
            "-c",
            "write -f -P 7 0 4k",
            "-c",
            "write -P 8 4k 4k",
            "-c",
            "flush",
        ],
    )
    .await;
    assert!(
        srv.disk.fua_ops.load(Ordering::Relaxed) >= 1,
        "FUA write did not arrive with FUA"
    );
    assert!(
        srv.disk.flushes.load(Ordering::Relaxed) >= 1,
        "FLUSH did not reach the export"
    );
    let ev = rec.0.lock().unwrap().clone();
    assert!(
        ev.iter()
            .any(|&(k, b, err)| k == RequestKind::Write && b == 4096 && !err),
        "observer saw {ev:?}"
    );
    assert!(
        ev.iter().any(|&(k, _, _)| k == RequestKind::Flush),
        "observer saw {ev:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdsh_flush_and_fua_flags() {
    let Some(nbdsh) = nbdsh() else { return };
    let srv = TestServer::start().await;
    let script = r#"
assert h.can_flush() and h.can_fua()
h.pwrite(b"a" * 4096, 0, nbd.CMD_FLAG_FUA)
h.trim(4096, 8192, nbd.CMD_FLAG_FUA)
h.zero(4096, 16384, nbd.CMD_FLAG_FUA)
h.flush()
"#;
    nbdsh_script(&nbdsh, &srv.uri("disk"), "", script).await;
    assert!(srv.disk.fua_ops.load(Ordering::Relaxed) >= 3);
    assert_eq!(srv.disk.flushes.load(Ordering::Relaxed), 1);
    srv.stop().await;
}
