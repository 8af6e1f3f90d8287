//! Shared helpers for the end-to-end tests: run the real agent binary on a temporary data
//! directory and drive it with real clients.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_multisnap-agent"))
}

/// A free loopback port (racy by nature, but the agent fails loudly if it is taken).
pub fn free_port() -> u16 {
    // The kernel may hand the same port to two bind(0) calls once the first is closed, and
    // this process runs tests in parallel: never give out a port twice (CI once saw one
    // agent's gRPC port be another's NBD port).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether a client tool is installed; tests print why they skip when it is not.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+) => {
        for t in [$($tool),+] {
            if !common::have(t) {
                eprintln!("SKIP: {t} is not installed (bash .ci/install-deps installs it)");
                return;
            }
        }
    };
}

pub struct Agent {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub nbd: SocketAddr,
    /// gRPC address (a free port unless `extra` named one).
    pub grpc: String,
    /// Metrics address (a free port unless `extra` named one).
    pub metrics: String,
}

/// The address `extra` gives for `flag`, or a fresh free loopback port added to `cmd`.
fn listen_arg(cmd: &mut Command, extra: &[&str], flag: &str) -> String {
    match extra.iter().position(|a| *a == flag) {
        Some(i) => extra.get(i + 1).map(|s| s.to_string()).unwrap_or_default(),
        None => {
            let addr = format!("127.0.0.1:{}", free_port());
            cmd.arg(flag).arg(&addr);
            addr
        }
    }
}

impl Agent {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Agent {
        let port = free_port();
        let nbd: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Tests run in parallel: never let two agents fight over a default port.
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--nbd-listen")
            .arg(nbd.to_string());
        let grpc = listen_arg(&mut cmd, extra, "--grpc-listen");
        let metrics = listen_arg(&mut cmd, extra, "--metrics-listen");
        let child = cmd
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start multisnap-agent");
        let agent = Agent {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            nbd,
            grpc,
            metrics,
        };
        agent.wait_ready();
        agent
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(self.nbd).is_ok() && self.data_dir.join("nbd.sock").exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not start listening on {}", self.nbd);
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.nbd, export)
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            export,
            self.data_dir.join("nbd.sock").display()
        )
    }

    /// SIGTERM, a clean exit, then an offline `verify` that must pass and find every journal
    /// empty (a clean stop leaves each origin file complete on its own).
    pub fn stop_and_verify(self) {
        let dir = self.data_dir.clone();
        let status = self.stop();
        assert!(status.success(), "agent exit after SIGTERM: {status:?}");
        let v = agent_cmd(&dir, &["verify"]);
        let report = String::from_utf8_lossy(&v.stdout);
        assert!(v.status.success(), "verify: {report}");
        assert!(!report.contains("journal holds"), "verify: {report}");
    }

    /// Calls a gRPC method through the reflection client (tests/grpc/grpcurl.py); panics
    /// with the status if it fails. Returns the JSON response.
    pub fn grpc(&self, method: &str, body: &str) -> String {
        let out = Command::new("python3")
            .arg(repo_root().join("tests/grpc/grpcurl.py"))
            .args([&self.grpc, "call", method, body])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{method} {body}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: the agent dies where it stands, like a crashed node.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9 the agent");
            let _ = c.wait();
        }
    }

    /// Waits until the gRPC listener accepts connections.
    pub fn wait_grpc(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.grpc).is_err() {
            assert!(Instant::now() < deadline, "agent's gRPC never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not exit within 60s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "kill -TERM failed"
    );
}

/// Runs a command, returning its output (never panics on failure exit: tests assert on it).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// qemu-io on a raw NBD export, read-write: each of `cmds` is one `-c` command; must succeed.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    qemu_io_args(uri, false, cmds)
}

/// qemu-io on a raw NBD export opened read-only (`-r`).
pub fn qemu_io_ro(uri: &str, cmds: &[&str]) -> String {
    qemu_io_args(uri, true, cmds)
}

fn qemu_io_args(uri: &str, read_only: bool, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    args.push(uri);
    for c in cmds {
        args.extend(["-c", c]);
    }
    run_ok("qemu-io", &args)
}

/// Runs the agent binary with a subcommand (offline tools).
pub fn agent_cmd(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("cannot run multisnap-agent")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Python grpcio with reflection, the client the gRPC tests script with.
pub fn have_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[macro_export]
macro_rules! require_grpcio {
    () => {
        if !common::have_grpcio() {
            eprintln!("SKIP: python grpcio/grpcio-reflection missing (bash .ci/install-deps installs them)");
            return;
        }
    };
}

/// The CLI binary sits next to the agent's in target/<profile>/, but Cargo only exposes
/// CARGO_BIN_EXE_* for the package's own binaries, so it is found from our own location.
pub fn cli_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        // target/<profile>/deps/cli-HASH -> target/<profile>/multisnap
        let profile_dir = exe.parent()?.parent()?;
        let bin = profile_dir.join("multisnap");
        if bin.exists() {
            return Some(bin);
        }
        // `cargo test -p multisnap-agent` does not build other packages' binaries.
        let target_dir = profile_dir.parent()?;
        let profile = profile_dir.file_name()?.to_str()?;
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args(["build", "-p", "multisnap-cli", "--bin", "multisnap"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let ok = build.status().map(|s| s.success()).unwrap_or(false);
        (ok && bin.exists()).then_some(bin)
    })
    .clone()
}

#[macro_export]
macro_rules! require_cli {
    () => {
        match common::cli_bin() {
            Some(b) => b,
            None => {
                eprintln!("SKIP: the multisnap CLI binary could not be found or built");
                return;
            }
        }
    };
}
