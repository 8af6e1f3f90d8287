//! The agent's container image: deploy/images/Containerfile built with podman, the agent run in
//! its container with a data directory mounted from the host, and checked from the host with
//! real clients over the unix sockets it serves there: nbdinfo for NBD, grpcio by reflection for
//! gRPC. The image is saved as an OCI archive, the artifact a user would push.
//!
//! The image is built from this test run's agent binary, with the loader and libraries it names
//! copied in beside it; deploy/images/build.sh puts a static (crt-static) binary there instead
//! and nothing else. Building that here would be a second full release build of the agent and
//! its dependencies (about six minutes on two cores), for a difference in linking only, which
//! build.sh itself refuses to get wrong (it checks that the binary needs no loader).
//!
//! podman runs as on these machines (see `PODMAN_CONF`): runc, explicit rlimits, no network,
//! storage in the test's own directory, so nothing outside it is touched.

use multisnap_tests::{self as common, require_tools};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// containers.conf for a sandbox without CAP_SYS_RESOURCE and with hybrid cgroups: crun
/// refuses the cgroups (runc does not), podman's default rlimits cannot be set (these can), and
/// the container needs no network (the default one would add a bridge and firewall chains).
const PODMAN_CONF: &str = r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"#;

/// podman with its configuration and storage under `dir`.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("containers.conf"), PODMAN_CONF).unwrap();
        // vfs: plain directories, so the temporary directory goes away without unmounting.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("root").display(),
            dir.join("run").display()
        );
        std::fs::write(dir.join("storage.conf"), storage).unwrap();
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .args(args);
        cmd
    }

    fn ok(&self, args: &[&str]) -> String {
        common::output_ok(&mut self.cmd(args))
    }
}

/// The files `ldd` says `bin` loads (the loader too), each by the absolute path it is loaded from.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = common::run_ok("ldd", &[bin.to_str().unwrap()]);
    out.lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The build context deploy/images/Containerfile expects, with this run's agent binary.
fn agent_context(dir: &Path) -> PathBuf {
    let root = dir.join("agent");
    let bin = root.join("usr/local/bin/multisnap-agent");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(common::agent_bin(), &bin).unwrap();
    for lib in shared_libraries(&common::agent_bin()) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Copies what a symlink names under the symlink's own name, the name the loader asks for.
        std::fs::copy(&lib, &to).unwrap();
    }
    dir.to_path_buf()
}

/// Where the OCI archive is kept after the test: beside the test build, in target/images/.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    profile_dir.parent().unwrap().join("images")
}

fn wait_for(path: &Path, podman: &Podman, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if Instant::now() > deadline {
            let logs = podman.cmd(&["logs", name]).output().unwrap();
            panic!(
                "{} did not appear; the container's log:\n{}",
                path.display(),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the container whatever happens to the test.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.cmd(&["rm", "-f", &self.name]).output();
    }
}

#[test]
fn the_agent_image_serves_nbd_and_grpc_on_unix_sockets_in_a_host_directory() {
    require_tools!("podman", "runc", "nbdinfo", "ldd");
    if !common::have_grpcio() {
        multisnap_tests::missing_dependency!("grpcio with reflection is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    let (version, commit) = common::reported_version(Command::new(common::agent_bin()));
    let image = format!("localhost/multisnap-agent:{version}");
    let containerfile = common::repo_root().join("deploy/images/Containerfile");
    let context = agent_context(&tmp.path().join("context"));
    let started = Instant::now();
    podman.ok(&[
        "build",
        "-q",
        "-f",
        containerfile.to_str().unwrap(),
        "--target",
        "agent",
        "-t",
        &image,
        context.to_str().unwrap(),
    ]);
    eprintln!("podman build: {:?}", started.elapsed());

    // The image's binary names the commit this checkout is at.
    let (in_image, in_image_commit) =
        common::reported_version(podman.cmd(&["run", "--rm", &image]));
    assert_eq!(
        (in_image.as_str(), in_image_commit.as_str()),
        (version.as_str(), commit.as_str())
    );
    if let Some(head) = common::expected_commit() {
        assert_eq!(in_image_commit, head);
    }

    // The agent in its container, its data directory on the host, listening on unix sockets only.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let name = format!("multisnap-agent-test-{}", std::process::id());
    let mount = format!("{}:/var/lib/multisnap", data.display());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        &mount,
        &image,
        "--data-dir=/var/lib/multisnap",
        "--nbd-listen=none",
        "--grpc-listen=none",
        "--metrics-listen=none",
        "--default-volume-size=67108864",
    ]);
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    let (nbd_sock, grpc_sock) = (data.join("nbd.sock"), data.join("grpc.sock"));
    wait_for(&nbd_sock, &podman, &name);
    wait_for(&grpc_sock, &podman, &name);

    let uri = format!("nbd+unix:///default?socket={}", nbd_sock.display());
    let info = common::run_ok("nbdinfo", &["--json", &uri]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["exports"][0]["export-size"], 67108864, "{info}");
    assert_eq!(info["exports"][0]["export-name"], "default", "{info}");

    let grpc = format!("unix:{}", grpc_sock.display());
    let services = common::output_ok(common::grpcurl().args([&grpc, "list"]));
    assert!(
        services.contains("multisnap.v1.VolumeService"),
        "{services}"
    );
    let volumes = common::grpc_call(&grpc, "multisnap.v1.VolumeService/ListVolumes", "{}")
        .unwrap_or_else(|e| panic!("ListVolumes over {grpc}: {e:?}"));
    assert_eq!(volumes["volumes"][0]["name"], "default", "{volumes}");

    // SIGTERM through podman: the agent flushes, commits and exits 0, having said which build it was.
    podman.ok(&["stop", "-t", "30", &name]);
    let code = podman.ok(&["wait", &name]);
    let logs = podman.cmd(&["logs", &name]).output().unwrap();
    let log = String::from_utf8_lossy(&logs.stderr);
    assert_eq!(code.trim(), "0", "{log}");
    assert!(log.contains(&format!("commit=\"{commit}\"")), "{log}");
    assert!(log.contains("all volumes flushed and committed"), "{log}");
    drop(container);

    // The OCI archive: an oci-layout, an index, and the image's blobs.
    let artifacts = artifact_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    let archive = artifacts.join(format!("multisnap-agent-{version}.oci.tar"));
    let _ = std::fs::remove_file(&archive);
    podman.ok(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        &image,
    ]);
    let listing = common::run_ok("tar", &["tf", archive.to_str().unwrap()]);
    for entry in ["oci-layout", "index.json", "blobs/sha256/"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == entry),
            "{entry} missing: {listing}"
        );
    }
    eprintln!(
        "saved {} ({} bytes)",
        archive.display(),
        std::fs::metadata(&archive).unwrap().len()
    );
}
