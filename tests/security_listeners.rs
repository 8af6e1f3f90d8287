//! Who can reach the agent's listeners and files on a node (the README's Security section): a
//! second, unprivileged local user is refused on the unix sockets and cannot read volume data,
//! a member of `--socket-group` is let in, `none` turns each TCP listener off while the CLI
//! and NBD clients go on over the unix sockets, and the modes hold under umask 000.
//!
//! The agent runs as root and the other users are made with setpriv (uid and gid 65534, the
//! usual `nobody`), so these tests need root; without it they skip and say why.

use common::*;
use multisnap_tests as common;
use std::collections::HashSet;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user (and group) the refused client runs as.
const OTHER_USER: u32 = 65534;
/// The socket group of the tests: a bare GID, so no group has to be added to the system.
const SOCKET_GID: u32 = 64123;

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

macro_rules! require_root {
    () => {
        if !running_as_root() {
            eprintln!(
                "SKIP: these tests start the agent as root and clients as another user \
                 (setpriv); run them as root (CI does)"
            );
            return;
        }
        require_tools!("setpriv", "nbdinfo");
    };
}

/// A temporary directory that other users may enter, so that only the modes the agent sets
/// keep them out (tempfile makes its directories 0700, which alone would keep every other user
/// out of everything beneath and leave these tests unable to fail).
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Runs `program` as [`OTHER_USER`], with no supplementary groups or with `group` alone.
fn as_other_user(group: Option<u32>, program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={OTHER_USER}"))
        .arg(format!("--regid={OTHER_USER}"));
    match group {
        Some(g) => cmd.arg(format!("--groups={g}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg("--").arg(program).args(args);
    cmd.env("HOME", "/").output().expect("setpriv")
}

fn assert_refused(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what} was let in: {}",
        describe(out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{what} failed, but not for permissions: {}",
        describe(out)
    );
}

fn assert_let_in(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} was refused: {}",
        describe(out)
    );
}

fn nbdinfo() -> PathBuf {
    PathBuf::from("nbdinfo")
}

fn cat() -> PathBuf {
    PathBuf::from("cat")
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn assert_mode(path: &Path, mode: u32) {
    assert_eq!(
        format!("{:04o}", mode_of(path)),
        format!("{mode:04o}"),
        "mode of {}",
        path.display()
    );
}

fn unix_endpoint(data_dir: &Path) -> String {
    format!("unix:{}", data_dir.join("grpc.sock").display())
}

/// The CLI against the agent's gRPC unix socket, as root.
fn cli_unix(data_dir: &Path, args: &[&str]) -> String {
    output_ok(
        Command::new(cli_bin())
            .arg("--endpoint")
            .arg(unix_endpoint(data_dir))
            .args(args),
    )
}

/// TCP sockets that process `pid` holds in the listening state, by inode (from /proc): the
/// proof that it serves no TCP at all, whatever the port.
fn tcp_listeners_of(pid: u32) -> HashSet<u64> {
    let mut listening = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st 0A is TCP_LISTEN; field 9 is the socket's inode.
            if f.len() > 9 && f[3] == "0A" {
                listening.extend(f[9].parse::<u64>().ok());
            }
        }
    }
    let mut held = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
        {
            held.extend(inode.parse::<u64>().ok());
        }
    }
    listening.intersection(&held).copied().collect()
}

fn agent_pid(agent: &Agent) -> u32 {
    agent.child.as_ref().expect("running agent").id()
}

#[test]
fn another_user_is_refused_and_files_are_private_under_umask_000() {
    require_root!();
    let tmp = open_tempdir();
    let data = tmp.path().join("data");
    let agent = Agent::start_with_umask(&data, &[], 0);
    // The other user can run both clients: a refusal below is the agent's doing.
    assert_let_in(
        &as_other_user(None, &nbdinfo(), &["--version"]),
        "nbdinfo --version",
    );
    assert_let_in(
        &as_other_user(None, &cli_bin(), &["--version"]),
        "multisnap --version",
    );
    // A volume made at run time, beside the `default` one made at start.
    cli_unix(&data, &["volume", "create", "v2", "--size", "16M"]);
    run_ok("nbdinfo", &[&agent.unix_uri("v2")]);

    for volume in ["default", "v2"] {
        let out = as_other_user(None, &nbdinfo(), &[&agent.unix_uri(volume)]);
        assert_refused(&out, "another user on the NBD unix socket");
        let origin = data.join("volumes").join(volume).join("origin.img");
        let out = as_other_user(None, &cat(), &[origin.to_str().unwrap()]);
        assert_refused(&out, "another user reading origin.img");
    }
    let endpoint = unix_endpoint(&data);
    let out = as_other_user(
        None,
        &cli_bin(),
        &["--endpoint", &endpoint, "volume", "list"],
    );
    assert_refused(&out, "another user on the gRPC unix socket");
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    // Loopback TCP is no boundary, as the README says: the same user gets in there.
    let out = as_other_user(None, &nbdinfo(), &[&agent.uri("default")]);
    assert_let_in(&out, "another user on NBD TCP");
    assert!(
        tcp_listeners_of(agent_pid(&agent)).len() >= 3,
        "NBD, gRPC and metrics TCP listeners are found"
    );

    assert_mode(&data, 0o700);
    assert_mode(&data.join("volumes"), 0o700);
    for volume in ["default", "v2"] {
        let dir = data.join("volumes").join(volume);
        assert_mode(&dir, 0o700);
        assert_mode(&dir.join("origin.img"), 0o600);
        assert_mode(&dir.join("store.msnap"), 0o600);
    }
    assert_mode(&data.join("agent.lock"), 0o600);
    assert_mode(&data.join("nbd.sock"), 0o660);
    assert_mode(&data.join("grpc.sock"), 0o660);
    let dir = data.clone();
    assert!(agent.stop().success());
    // Written at every stop (the ublk devices to take over: none here).
    assert_mode(&dir.join("ublk.state"), 0o600);
}

#[test]
fn socket_group_members_are_let_in_and_no_one_else() {
    require_root!();
    let tmp = open_tempdir();
    let data = tmp.path().join("data");
    // The NBD socket outside the data directory, in a directory everyone may enter: there
    // only its own mode and group decide.
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nbd_sock = run_dir.join("nbd.sock");
    let gid = SOCKET_GID.to_string();
    let agent = Agent::start_with_umask(
        &data,
        &[
            "--socket-group",
            &gid,
            "--nbd-socket",
            nbd_sock.to_str().unwrap(),
        ],
        0,
    );
    let uri = agent.unix_uri("default");
    let endpoint = unix_endpoint(&data);
    let list = ["--endpoint", endpoint.as_str(), "volume", "list"];

    let out = as_other_user(None, &nbdinfo(), &[&uri]);
    assert_refused(&out, "a user outside the socket group on the NBD socket");
    let out = as_other_user(None, &cli_bin(), &list);
    assert_refused(&out, "a user outside the socket group on the gRPC socket");

    let out = as_other_user(Some(SOCKET_GID), &nbdinfo(), &[&uri]);
    assert_let_in(&out, "a socket group member on the NBD socket");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1073741824"));
    let out = as_other_user(Some(SOCKET_GID), &cli_bin(), &list);
    assert_let_in(&out, "a socket group member on the gRPC socket");
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
    // The group reaches the sockets, not the volumes' files.
    let origin = data.join("volumes/default/origin.img");
    let out = as_other_user(Some(SOCKET_GID), &cat(), &[origin.to_str().unwrap()]);
    assert_refused(&out, "a socket group member reading origin.img");

    assert_mode(&data, 0o710);
    assert_mode(&data.join("volumes"), 0o700);
    for sock in [nbd_sock.as_path(), &data.join("grpc.sock")] {
        assert_mode(sock, 0o660);
        assert_eq!(std::fs::metadata(sock).unwrap().gid(), SOCKET_GID);
    }
    assert_eq!(std::fs::metadata(&data).unwrap().gid(), SOCKET_GID);
    agent.stop_and_verify();
}

/// Whether something accepts TCP connections on loopback `port`.
fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_ok()
}

#[test]
fn tcp_listeners_off_leave_only_the_unix_sockets() {
    require_root!();
    let help = run_ok(agent_bin().to_str().unwrap(), &["--help"]);
    for flag in ["--nbd-listen <ADDR|none>", "--grpc-listen <ADDR|none>"] {
        assert!(help.contains(flag), "--help documents {flag}: {help}");
    }
    let tmp = open_tempdir();
    let data = tmp.path().join("data");
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let nbd_sock = run_dir.join("nbd.sock");
    let defaults = [10809, 50051, 9500];
    // A default port already taken by something else on this machine proves nothing.
    let free_before: Vec<u16> = defaults.into_iter().filter(|p| !listening(*p)).collect();
    let agent = Agent::start(
        &data,
        &[
            "--nbd-listen",
            "none",
            "--grpc-listen",
            "none",
            "--metrics-listen",
            "none",
            "--nbd-socket",
            nbd_sock.to_str().unwrap(),
            "--socket-mode",
            "0666",
        ],
    );
    let found = tcp_listeners_of(agent_pid(&agent));
    assert!(found.is_empty(), "TCP listeners left: {found:?}");
    for port in &free_before {
        assert!(
            !listening(*port),
            "something listens on default port {port}"
        );
    }
    if free_before.len() < defaults.len() {
        eprintln!("note: default ports taken before the agent started were not checked");
    }
    // The CLI and NBD clients go on over the unix sockets.
    cli_unix(&data, &["snapshot", "create", "default", "s1"]);
    assert!(cli_unix(&data, &["snapshot", "list", "default"]).contains("s1"));
    run_ok("nbdinfo", &[&agent.unix_uri("default@s1")]);
    // --socket-mode 0666 lets every local user in, in a directory they may enter.
    assert_mode(&nbd_sock, 0o666);
    let out = as_other_user(None, &nbdinfo(), &[&agent.unix_uri("default")]);
    assert_let_in(&out, "another user on a 0666 NBD socket");
    agent.stop_and_verify();
}

/// Runs the agent binary on `data_dir` with `args` and no TCP listeners; it must exit within
/// 30 s (a start that is refused). Returns its output.
fn agent_refused(data_dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(agent_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--nbd-listen", "none", "--metrics-listen", "none"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the agent started instead of refusing: {}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    out
}

#[test]
fn an_existing_open_data_dir_is_tightened() {
    require_root!();
    let tmp = open_tempdir();
    let data = tmp.path().join("data");
    Agent::start(&data, &[]).stop_and_verify();
    // As an earlier version, or a careless hand, left it: everything open to everyone.
    let origin = data.join("volumes/default/origin.img");
    for (path, mode) in [
        (data.clone(), 0o777),
        (data.join("volumes"), 0o777),
        (data.join("volumes/default"), 0o755),
        (origin.clone(), 0o666),
        (data.join("volumes/default/store.msnap"), 0o644),
        (data.join("agent.lock"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let agent = Agent::start(&data, &[]);
    assert_mode(&data, 0o700);
    assert_mode(&data.join("volumes"), 0o700);
    assert_mode(&data.join("volumes/default"), 0o700);
    assert_mode(&origin, 0o600);
    assert_mode(&data.join("volumes/default/store.msnap"), 0o600);
    assert_mode(&data.join("agent.lock"), 0o600);
    agent.stop_and_verify();

    // TLS settings for a gRPC TCP listener that is turned off are a mistake, not ignored.
    let out = agent_refused(
        &tmp.path().join("tls"),
        &[
            "--grpc-listen",
            "none",
            "--grpc-tls-cert",
            "/nonexistent/cert.pem",
            "--grpc-tls-key",
            "/nonexistent/key.pem",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--grpc-listen none"),
        "{}",
        describe(&out)
    );
}
