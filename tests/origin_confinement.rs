//! Who may turn which host file into a volume: CreateVolume's `origin_path` is confined to the
//! data directory and the operator's `--allow-origin` entries, judged after resolving symlinks
//! and `..`; impossible sizes get OUT_OF_RANGE with the limit, never INTERNAL. Driven with
//! Python grpcio by reflection, nbdinfo and qemu-io, and a loop device where the host has one.

use multisnap_tests::{self as common, require_grpcio, require_tools};
use std::path::Path;

const CREATE: &str = "multisnap.v1.VolumeService/CreateVolume";

fn create(
    agent: &common::Agent,
    name: &str,
    origin: &Path,
) -> Result<serde_json::Value, (String, String)> {
    let body = serde_json::json!({ "name": name, "origin_path": origin.display().to_string() });
    common::grpc_call(&agent.grpc, CREATE, &body.to_string())
}

/// The call fails with `code` and a message containing `needle`.
fn refused(r: Result<serde_json::Value, (String, String)>, code: &str, needle: &str) {
    match r {
        Ok(v) => panic!("accepted, wanted {code}: {v}"),
        Err((c, m)) => {
            assert_eq!(c, code, "{m}");
            assert!(m.contains(needle), "{code}: {m:?} does not say {needle:?}");
        }
    }
}

fn file_with(path: &Path, len: usize, byte: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![byte; len]).unwrap();
}

fn wait_grpc(agent: &common::Agent) {
    for _ in 0..100 {
        if common::grpc_call(&agent.grpc, "multisnap.v1.VolumeService/ListVolumes", "{}").is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("gRPC did not come up");
}

#[test]
fn origins_are_confined_to_the_allowed_places() {
    require_grpcio!();
    require_tools!("nbdinfo", "qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let pool = base.join("pool");
    let secret = base.join("secret.img");
    file_with(&secret, 1 << 20, 0x5e);
    file_with(&pool.join("disk.img"), 8 << 20, 0);
    file_with(&pool.join("empty.img"), 0, 0);
    std::os::unix::fs::symlink(&secret, pool.join("link.img")).unwrap();
    std::os::unix::fs::symlink(pool.join("disk.img"), pool.join("alias.img")).unwrap();
    let data = base.join("data");
    let agent = common::Agent::start(
        &data,
        &[
            "--default-volume-size",
            "4194304",
            "--allow-origin",
            &pool.display().to_string(),
            "--allow-origin",
            "/dev/null",
        ],
    );
    wait_grpc(&agent);

    // Outside every allowed place: as written, through `..`, and through a symlink.
    refused(
        create(&agent, "a", &secret),
        "PERMISSION_DENIED",
        "--allow-origin",
    );
    refused(
        create(&agent, "a", &pool.join("../secret.img")),
        "PERMISSION_DENIED",
        "outside the allowed places",
    );
    refused(
        create(&agent, "a", &pool.join("link.img")),
        "PERMISSION_DENIED",
        "resolves to",
    );
    refused(
        create(&agent, "a", Path::new("/etc/passwd")),
        "PERMISSION_DENIED",
        "--allow-origin",
    );
    // Inside the data directory, but the agent's own: another volume's files, the lock.
    refused(
        create(&agent, "a", &data.join("volumes/default/origin.img")),
        "PERMISSION_DENIED",
        "agent's own files",
    );
    refused(
        create(&agent, "a", &data.join("volumes/default/store.msnap")),
        "PERMISSION_DENIED",
        "agent's own files",
    );
    refused(
        create(&agent, "a", &data.join("agent.lock")),
        "PERMISSION_DENIED",
        "agent's own files",
    );
    // Allowed places, but not a usable origin.
    refused(
        create(&agent, "a", Path::new("/dev/null")),
        "INVALID_ARGUMENT",
        "character device",
    );
    refused(
        create(&agent, "a", &pool.join("empty.img")),
        "INVALID_ARGUMENT",
        "empty",
    );
    refused(
        create(&agent, "a", Path::new("pool/disk.img")),
        "INVALID_ARGUMENT",
        "absolute",
    );
    refused(
        create(&agent, "a", &pool.join("missing.img")),
        "INVALID_ARGUMENT",
        "No such file",
    );
    // Nothing refused left a volume or a folder behind.
    assert!(!data.join("volumes/a").exists());

    // An allowed file: served at its size, and writes land in it.
    let v = create(&agent, "pooled", &pool.join("disk.img")).expect("allowed origin");
    assert_eq!(
        v["origin_path"],
        pool.join("disk.img").display().to_string(),
        "{v}"
    );
    let size = common::run_ok("nbdinfo", &["--size", &agent.uri("pooled")]);
    assert_eq!(size.trim(), (8u64 << 20).to_string());
    common::qemu_io(&agent.uri("pooled"), &["write -P 0xa7 1M 64k", "flush"]);
    let on_disk = std::fs::read(pool.join("disk.img")).unwrap();
    assert!(on_disk[1 << 20..(1 << 20) + 65536]
        .iter()
        .all(|b| *b == 0xa7));
    // The same file under another name is still the same file.
    refused(
        create(&agent, "twice", &pool.join("alias.img")),
        "FAILED_PRECONDITION",
        "already the origin of volume pooled",
    );

    // Sizes no volume can have: the limit in the message, never INTERNAL.
    let huge = serde_json::json!({ "name": "huge", "size_bytes": i64::MAX.to_string() });
    refused(
        common::grpc_call(&agent.grpc, CREATE, &huge.to_string()),
        "OUT_OF_RANGE",
        "limit of 70368744177664 bytes (64 TiB)",
    );
    let huge_store = serde_json::json!({
        "name": "huge", "size_bytes": "1048576", "store_size_bytes": u64::MAX.to_string()
    });
    refused(
        common::grpc_call(&agent.grpc, CREATE, &huge_store.to_string()),
        "OUT_OF_RANGE",
        "store_size_bytes",
    );
    // The CLI shows the same refusal and fails.
    let out = std::process::Command::new(common::cli_bin())
        .args([
            "--endpoint",
            &agent.grpc,
            "volume",
            "create",
            "b",
            "--origin",
        ])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-origin"), "{err}");
    agent.stop_and_verify();
    // The file outside was never touched.
    assert!(std::fs::read(&secret).unwrap().iter().all(|b| *b == 0x5e));
}

/// A block device named by a pattern, the way operators allow `/dev/disk/by-id/...`: a loop
/// device over a file, allowed by `/dev/loop*`.
#[test]
fn a_block_device_allowed_by_pattern() {
    require_grpcio!();
    require_tools!("nbdinfo", "losetup");
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing.img");
    file_with(&backing, 16 << 20, 0x3c);
    let attach = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    if !attach.status.success() {
        eprintln!(
            "SKIP: losetup cannot attach a loop device here ({}); the pattern rule is covered by \
             the agent's unit tests",
            String::from_utf8_lossy(&attach.stderr).trim()
        );
        return;
    }
    let loopdev = String::from_utf8_lossy(&attach.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(loopdev.clone());

    // Without an entry for it, the device is refused.
    let data = tmp.path().join("data");
    let agent = common::Agent::start(&data, &["--default-volume-size", "4194304"]);
    wait_grpc(&agent);
    refused(
        create(&agent, "disk", Path::new(&loopdev)),
        "PERMISSION_DENIED",
        "--allow-origin",
    );
    agent.stop_and_verify();

    let agent = common::Agent::start(
        &data,
        &[
            "--default-volume-size",
            "4194304",
            "--allow-origin",
            "/dev/loop*",
        ],
    );
    wait_grpc(&agent);
    create(&agent, "disk", Path::new(&loopdev)).expect("a loop device allowed by pattern");
    let size = common::run_ok("nbdinfo", &["--size", &agent.uri("disk")]);
    assert_eq!(size.trim(), (16u64 << 20).to_string());
    // Deleting the volume leaves the device and its data alone.
    common::grpc_call(
        &agent.grpc,
        "multisnap.v1.VolumeService/DeleteVolume",
        r#"{"name":"disk"}"#,
    )
    .expect("delete");
    agent.stop_and_verify();
    assert!(std::fs::read(&backing).unwrap().iter().all(|b| *b == 0x3c));
}
