//! The container images: deploy/images/Containerfile built with podman, each saved as an OCI
//! archive, the artifact a user would push.
//! - The agent's, run in its container with a data directory mounted from the host, and checked
//!   from the host with real clients over the unix sockets it serves there: nbdinfo for NBD,
//!   grpcio by reflection for gRPC.
//! - The CSI driver's, on a base of this machine's own node tools (deploy/images/
//!   node-root-from-host.sh, as build.sh's NODE_BASE_FROM=host; the debootstrap base downloads
//!   about 100 MB): its mkfs and blkid run on files in a host directory, and the driver in its
//!   container serves CSI on a socket in a host directory for an agent on the host.
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

/// Puts `bin` into the build context `dir` at `<stage>/usr/local/bin/<name>`, with the loader
/// and the libraries it names at their own paths beside it, as the Containerfile's `stage` copies
/// `<stage>/` to the image's root.
fn add_binary(dir: &Path, stage: &str, bin: &Path) {
    let root = dir.join(stage);
    let to = root.join("usr/local/bin").join(bin.file_name().unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(bin, &to).unwrap();
    for lib in shared_libraries(bin) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Copies what a symlink names under the symlink's own name, the name the loader asks for.
        std::fs::copy(&lib, &to).unwrap();
    }
}

/// The build context deploy/images/Containerfile expects, with this run's agent binary.
fn agent_context(dir: &Path) -> PathBuf {
    add_binary(dir, "agent", &common::agent_bin());
    dir.to_path_buf()
}

/// Where the OCI archive is kept after the test: beside the test build, in target/images/.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    profile_dir.parent().unwrap().join("images")
}

/// Waits until the container `name` serves on the unix socket `path` (a socket file may exist
/// before its server listens).
fn wait_for(path: &Path, podman: &Podman, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            let logs = podman.cmd(&["logs", name]).output().unwrap();
            panic!(
                "nothing served {}; the container's log:\n{}",
                path.display(),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds the Containerfile's `stage` from `context` as `image`, with `extra` arguments.
fn build_stage(podman: &Podman, stage: &str, image: &str, context: &Path, extra: &[&str]) {
    let containerfile = common::repo_root().join("deploy/images/Containerfile");
    let started = Instant::now();
    let mut args = vec!["build", "-q", "-f", containerfile.to_str().unwrap()];
    args.extend(["--target", stage, "-t", image]);
    args.extend(extra);
    args.push(context.to_str().unwrap());
    podman.ok(&args);
    eprintln!("podman build --target {stage}: {:?}", started.elapsed());
}

/// The image's binary names this build's version and the commit this checkout is at.
fn check_version_in(podman: &Podman, image: &str, bin: &Path) {
    let (version, commit) = common::reported_version(Command::new(bin));
    let (in_image, in_image_commit) = common::reported_version(podman.cmd(&["run", "--rm", image]));
    assert_eq!(
        (in_image.as_str(), in_image_commit.as_str()),
        (version.as_str(), commit.as_str())
    );
    if let Some(head) = common::expected_commit() {
        assert_eq!(in_image_commit, head);
    }
}

/// Saves `image` as an OCI archive `file` in [`artifact_dir`] and checks its layout: an
/// oci-layout, an index, and the image's blobs.
fn save_oci_archive(podman: &Podman, image: &str, file: &str) {
    let artifacts = artifact_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    let archive = artifacts.join(file);
    let _ = std::fs::remove_file(&archive);
    podman.ok(&[
        "save",
        "-q",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        image,
    ]);
    let listing = common::run_ok("tar", &["tf", archive.to_str().unwrap()]);
    for entry in ["oci-layout", "index.json", "blobs/sha256/"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == entry),
            "{entry} missing: {listing}"
        );
    }
    let size = podman.ok(&["image", "inspect", "--format", "{{.Size}}", image]);
    eprintln!(
        "saved {} ({} bytes; image {} bytes)",
        archive.display(),
        std::fs::metadata(&archive).unwrap().len(),
        size.trim()
    );
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

/// podman's storage applies an image layer by remounting `/` in a private mount namespace,
/// which fails ("remount /, flags: 0x44000: invalid argument") where `/` is not a mount point:
/// a chroot such as a build sandbox. A machine or VM always has `/` mounted.
fn podman_cannot_apply_layers_here() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let root_mounted = mountinfo
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some("/"));
    if !root_mounted {
        eprintln!("SKIP: / is not a mount point here (a chroot): podman cannot apply image layers");
    }
    !root_mounted
}

#[test]
fn the_agent_image_serves_nbd_and_grpc_on_unix_sockets_in_a_host_directory() {
    require_tools!("podman", "runc", "nbdinfo", "ldd");
    if podman_cannot_apply_layers_here() {
        return;
    }
    if !common::have_grpcio() {
        multisnap_tests::missing_dependency!("grpcio with reflection is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    let (version, commit) = common::reported_version(Command::new(common::agent_bin()));
    let image = format!("localhost/multisnap-agent:{version}");
    let context = agent_context(&tmp.path().join("context"));
    build_stage(&podman, "agent", &image, &context, &[]);
    check_version_in(&podman, &image, &common::agent_bin());

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

    save_oci_archive(
        &podman,
        &image,
        &format!("multisnap-agent-{version}.oci.tar"),
    );
}

/// The CSI image's base made from this machine's tools by deploy/images/node-root-from-host.sh
/// (what build.sh does with NODE_BASE_FROM=host), imported into `podman`'s storage as `name`.
fn import_node_base(podman: &Podman, dir: &Path, name: &str) {
    let started = Instant::now();
    let rootfs = dir.join("node-root");
    let script = common::repo_root().join("deploy/images/node-root-from-host.sh");
    common::output_ok(Command::new("bash").arg(script).arg(&rootfs));
    let tarball = dir.join("node-root.tar");
    let (rootfs, tarball) = (rootfs.to_str().unwrap(), tarball.to_str().unwrap());
    common::run_ok("tar", &["-C", rootfs, "-cf", tarball, "."]);
    podman.ok(&["import", "-q", tarball, name]);
    eprintln!(
        "node base from this machine's tools: {:?}",
        started.elapsed()
    );
}

/// Formats an image file in the host directory `work` with the image's own mkfs (mounted at
/// /work), and checks that the image's blkid and the host's blkid both read that filesystem.
fn check_mkfs_in(podman: &Podman, image: &str, work: &Path, fs_type: &str, mkfs: &[&str]) {
    let file = format!("{fs_type}.img");
    // Sparse; mkfs.xfs refuses filesystems under 300 MB.
    std::fs::File::create(work.join(&file))
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let mount = format!("{}:/work", work.display());
    let in_container = format!("/work/{file}");
    let mut run = vec!["run", "--rm", "-v", &mount, "--entrypoint", mkfs[0], image];
    run.extend(&mkfs[1..]);
    run.push(&in_container);
    podman.ok(&run);
    let blkid_args = ["-p", "-o", "value", "-s", "TYPE"];
    let mut run = vec!["run", "--rm", "-v", &mount, "--entrypoint", "blkid", image];
    run.extend(blkid_args);
    run.push(&in_container);
    assert_eq!(podman.ok(&run).trim(), fs_type, "blkid in the image");
    let on_host = work.join(&file);
    let mut host_args = blkid_args.to_vec();
    host_args.push(on_host.to_str().unwrap());
    assert_eq!(
        common::run_ok("blkid", &host_args).trim(),
        fs_type,
        "blkid on the host"
    );
}

#[test]
fn the_csi_image_formats_with_its_own_tools_and_serves_csi_for_an_agent() {
    require_tools!(
        "podman",
        "runc",
        "ldd",
        "tar",
        "blkid",
        "mkfs.ext4",
        "mkfs.xfs",
        "nbd-client"
    );
    if podman_cannot_apply_layers_here() {
        return;
    }
    if !common::have_grpcio() {
        multisnap_tests::missing_dependency!("grpcio with reflection is missing");
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::new(&tmp.path().join("podman"));
    let base = "localhost/multisnap-node-base:test";
    import_node_base(&podman, tmp.path(), base);
    let (version, _) = common::reported_version(Command::new(common::csi_bin()));
    let image = format!("localhost/multisnap-csi:{version}");
    let context = tmp.path().join("context");
    add_binary(&context, "csi", &common::csi_bin());
    let base_arg = format!("NODE_BASE={base}");
    build_stage(
        &podman,
        "csi",
        &image,
        &context,
        &["--build-arg", &base_arg],
    );
    check_version_in(&podman, &image, &common::csi_bin());

    // The node tools NodeStageVolume runs, run in the image on files in a host directory.
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    check_mkfs_in(&podman, &image, &work, "ext4", &["mkfs.ext4", "-q", "-F"]);
    check_mkfs_in(&podman, &image, &work, "xfs", &["mkfs.xfs", "-q", "-f"]);
    // The rest load their libraries and start: each names itself (their work needs a block
    // device, which an unprivileged container does not get).
    for (tool, flag, says) in [
        ("mount", "--version", "mount from util-linux"),
        ("umount", "--version", "umount from util-linux"),
        ("nbd-client", "--version", "This is nbd-client"),
        ("resize2fs", "-h", "resize2fs 1."),
        ("xfs_growfs", "-V", "xfs_growfs version"),
    ] {
        let out = podman
            .cmd(&["run", "--rm", "--entrypoint", tool, &image, flag])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(says), "{tool} {flag} in the image: {said}");
    }

    // The driver in its container against the agent on the host: the data directory mounted
    // where the chart mounts it, the CSI socket in a host directory mounted at /csi.
    let data = tmp.path().join("data");
    let agent = common::Agent::start(&data, &[]);
    let csi_dir = tmp.path().join("csi");
    std::fs::create_dir(&csi_dir).unwrap();
    let name = format!("multisnap-csi-test-{}", std::process::id());
    let data_mount = format!("{}:/var/lib/multisnap", data.display());
    let csi_mount = format!("{}:/csi", csi_dir.display());
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "-v",
        &data_mount,
        "-v",
        &csi_mount,
        &image,
        "--node-name=node-1",
    ]);
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };
    let socket = csi_dir.join("csi.sock");
    wait_for(&socket, &podman, &name);
    let csi = format!("unix:{}", socket.display());
    let call = |method: &str, body: &str| {
        common::grpc_call(&csi, method, body)
            .unwrap_or_else(|e| panic!("{method} over {csi}: {e:?}"))
    };
    let info = call("csi.v1.Identity/GetPluginInfo", "{}");
    assert_eq!(info["name"], "csi.multisnap.dev", "{info}");
    assert_eq!(info["vendor_version"], version.as_str(), "{info}");
    let probe = call("csi.v1.Identity/Probe", "{}");
    assert_eq!(probe["ready"], true, "{probe}");

    let create = r#"{"name":"pvc-image","capacity_range":{"required_bytes":"1048576"},
        "volume_capabilities":[{"mount":{"fs_type":"ext4"},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}]}"#;
    let volume = call("csi.v1.Controller/CreateVolume", create);
    let id = volume["volume"]["volume_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("node-1/csi-"), "{volume}");
    let agent_name = id.split('/').nth(1).unwrap();
    assert!(
        agent.volume_names().contains(&agent_name.to_string()),
        "{volume}"
    );
    call(
        "csi.v1.Controller/DeleteVolume",
        &format!(r#"{{"volume_id":"{id}"}}"#),
    );
    assert_eq!(agent.volume_names(), ["default"]);

    // SIGTERM through podman: the driver stops serving and exits 0.
    podman.ok(&["stop", "-t", "30", &name]);
    let code = podman.ok(&["wait", &name]);
    let logs = podman.cmd(&["logs", &name]).output().unwrap();
    assert_eq!(
        code.trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    drop(container);
    agent.stop_and_verify();

    save_oci_archive(&podman, &image, &format!("multisnap-csi-{version}.oci.tar"));
    eprintln!("CSI image test: {:?}", started.elapsed());
}
