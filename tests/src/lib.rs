//! The end-to-end tests' harness: run the real agent and CLI binaries on a temporary data
//! directory and drive them with real clients. Each file beside `src/` is one scenario.

pub mod csi;
pub mod loopfs;
pub mod mirror;
pub mod policy_clock;
pub use csi::{CsiDriver, CSI_NODE};
pub mod vm;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The agent binary that this `cargo test` run built (see [`workspace_bin`]).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("multisnap-agent", "services/multisnap-agent"))
        .clone()
}

/// The `multisnap` CLI binary that this `cargo test` run built (see [`workspace_bin`]).
pub fn cli_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("multisnap", "services/multisnap-cli"))
        .clone()
}

/// The `multisnap-csi` binary that this `cargo test` run built (see [`workspace_bin`]).
pub fn csi_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("multisnap-csi", "services/multisnap-csi"))
        .clone()
}

/// A binary of another package of the workspace, from target/<profile>/ beside this test's own
/// executable (target/<profile>/deps/<test>-<hash>). Cargo gives `CARGO_BIN_EXE_*` only to a
/// package's own tests, but it builds a package's binaries whenever that package's integration
/// tests are built (the agent and the CLI each have one for that reason), and `cargo test`
/// builds everything before it runs any test: so `cargo test --workspace` always leaves fresh
/// binaries there, and so does `cargo test --workspace --test usage --test <scenario>`. A
/// narrower run (`cargo test -p multisnap-tests`) may find none, or ones older than their
/// sources: this panics then, naming the command that builds them, rather than test an old
/// binary. Freshness is judged the way cargo judges it, by the modification times of the
/// sources that the build's dep-info file lists.
fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lies in target/<profile>/deps");
    let bin = profile_dir.join(name);
    // The binaries' own `usage` tests make cargo build them in the same run.
    let rebuild = "run `cargo test --workspace`, or one scenario with the binaries' own tests: \
                   `cargo test --workspace --test usage --test <scenario>`";
    let meta = std::fs::metadata(&bin)
        .unwrap_or_else(|_| panic!("{} was not built: {rebuild}", bin.display()));
    let built = meta.modified().expect("file times");
    match dep_info_of(&profile_dir.join("deps"), name, &meta) {
        Some(listed) => {
            if let Some(newer) = source_newer_than(&listed, built) {
                panic!("{} is older than {newer}: {rebuild}", bin.display());
            }
        }
        None => eprintln!(
            "note: cannot tell whether {} is fresh: no dep-info beside its build in deps/",
            bin.display()
        ),
    }
    // The dep-info lists the binary's own crate only; a change in a workspace library it
    // links (the store, say) shows as a source of that library newer than the binary.
    let root = repo_root();
    let mut dirs = vec![root.join("proto")];
    workspace_deps(&root, &root.join(package), &mut dirs);
    for dir in dirs {
        if let Some(newer) = newest_source_after(&dir, built) {
            panic!(
                "{} is older than {}: {rebuild}",
                bin.display(),
                newer.display()
            );
        }
    }
    bin
}

/// The folders of the workspace libraries `package` depends on (not dev-dependencies),
/// followed through their own manifests, added to `dirs`.
fn workspace_deps(root: &Path, package: &Path, dirs: &mut Vec<PathBuf>) {
    let manifest = std::fs::read_to_string(package.join("Cargo.toml")).unwrap_or_default();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        let Some(name) = line
            .split(['.', ' ', '='])
            .next()
            .filter(|n| in_deps && n.starts_with("multisnap-"))
        else {
            continue;
        };
        let dir = root.join("crates").join(name);
        if dir.is_dir() && !dirs.contains(&dir) {
            dirs.push(dir.clone());
            workspace_deps(root, &dir, dirs);
        }
    }
}

/// A source file (`.rs`, `.proto`, `Cargo.toml`) under `dir` modified after `built`, skipping
/// fuzz targets (not part of the build).
fn newest_source_after(dir: &Path, built: SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "fuzz" && name != "target" {
                if let Some(found) = newest_source_after(&path, built) {
                    return Some(found);
                }
            }
        } else if (name.ends_with(".rs") || name.ends_with(".proto") || name == "Cargo.toml")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        {
            return Some(path);
        }
    }
    None
}

/// The dep-info file of the build that cargo linked (hard-linked) to target/<profile>/NAME:
/// deps/<crate>-<hash>.d beside the deps/<crate>-<hash> with the same inode. (Cargo writes no
/// target/<profile>/NAME.d for a binary built only for integration tests.)
fn dep_info_of(deps: &Path, name: &str, bin: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{}-", name.replace('-', "_"));
    std::fs::read_dir(deps).ok()?.flatten().find_map(|entry| {
        let file = entry.file_name();
        let file = file.to_str()?;
        let same = std::fs::metadata(entry.path())
            .is_ok_and(|m| m.ino() == bin.ino() && m.dev() == bin.dev());
        (file.starts_with(&prefix) && !file.ends_with(".d") && same)
            .then(|| std::fs::read_to_string(deps.join(format!("{file}.d"))).ok())?
    })
}

/// The first source named by a dep-info text's first rule (`target: src1 src2 ...`, spaces in
/// names escaped as `\ `, workspace sources relative to the repository root) that was modified
/// after `built`.
fn source_newer_than(dep_info: &str, built: SystemTime) -> Option<String> {
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    let mut names = Vec::new();
    let mut name = String::new();
    let mut chars = sources.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => name.extend(chars.next()),
            ' ' => names.extend((!name.is_empty()).then(|| std::mem::take(&mut name))),
            c => name.push(c),
        }
    }
    names.extend((!name.is_empty()).then_some(name));
    let root = repo_root();
    names.into_iter().find(|n| {
        std::fs::metadata(root.join(n))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > built)
    })
}

/// The Python interpreter the tests run: the virtual environment `.ci/install-deps` makes at
/// .venv/ (grpcio, grpcio-reflection, prometheus-client, pyyaml, and Debian's libnbd bindings
/// through its system site packages), else Debian's own python3 (then the tests that need those
/// modules skip). Never whichever python3 comes first on PATH, which may lack them.
pub fn python_path() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("/usr/bin/python3")
    }
}

/// A command running [`python_path`].
pub fn python() -> Command {
    Command::new(python_path())
}

/// A command running the gRPC reflection client tests/grpc/grpcurl.py; add its arguments.
pub fn grpcurl() -> Command {
    let mut cmd = python();
    cmd.arg(repo_root().join("tests/grpc/grpcurl.py"));
    cmd
}

/// Calls a gRPC method (`package.Service/Method`) with a JSON body through grpcurl.py at
/// `addr`: Ok(the JSON reply), or Err((status code name, message)) when the call failed.
pub fn grpc_call(
    addr: &str,
    method: &str,
    body: &str,
) -> Result<serde_json::Value, (String, String)> {
    let out = grpcurl()
        .args([addr, "call", method, body])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "{method}: not JSON: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match v.get("error") {
        Some(code) if !out.status.success() => Err((
            code.as_str().unwrap_or_default().to_string(),
            v["message"].as_str().unwrap_or_default().to_string(),
        )),
        _ => Ok(v),
    }
}

/// Whether [`python_path`] can import every module in `modules`.
pub fn python_has(modules: &[&str]) -> bool {
    python()
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
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

/// A test that cannot run because something `bash .ci/install-deps` installs is missing:
/// SKIP on a developer's machine, a failure under CI (env `CI`, which .ci/run sets), where a
/// silently skipped test would pass without checking anything.
pub fn missing_dependency(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what}: CI must have it (bash .ci/install-deps installs it)");
    }
    eprintln!("SKIP: {what} (bash .ci/install-deps installs it)");
}

/// [`missing_dependency`] with `format!` arguments.
#[macro_export]
macro_rules! missing_dependency {
    ($($arg:tt)*) => {
        $crate::missing_dependency(&format!($($arg)*))
    };
}

#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+) => {
        for t in [$($tool),+] {
            if !$crate::have(t) {
                $crate::missing_dependency(&format!("{t} is not installed"));
                return;
            }
        }
    };
}

pub struct Agent {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    /// NBD TCP address (a free port unless `extra` named one; `none` when turned off).
    pub nbd: String,
    /// NBD unix socket (DATA_DIR/nbd.sock unless `extra` named one).
    pub nbd_socket: PathBuf,
    /// gRPC address (a free port unless `extra` named one).
    pub grpc: String,
    /// Metrics address (a free port unless `extra` named one).
    pub metrics: String,
}

/// The address `extra` gives for `flag` (`none` turns that listener off), or a fresh free
/// loopback port added to `cmd`.
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
        Agent::spawn(Command::new(agent_bin()), data_dir, extra)
    }

    /// Starts the agent under `umask` (through `sh`, which sets it and then becomes the agent),
    /// as a service manager or a careless shell might.
    pub fn start_with_umask(data_dir: &Path, extra: &[&str], umask: u32) -> Agent {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
            .arg(agent_bin());
        Agent::spawn(cmd, data_dir, extra)
    }

    /// Runs `cmd` (the agent binary, or a wrapper that execs it with the arguments added
    /// here) on `data_dir` and waits until it serves.
    fn spawn(mut cmd: Command, data_dir: &Path, extra: &[&str]) -> Agent {
        // Tests run in parallel: never let two agents fight over a default port.
        cmd.arg("--data-dir").arg(data_dir);
        let nbd = listen_arg(&mut cmd, extra, "--nbd-listen");
        let nbd_socket = match extra.iter().position(|a| *a == "--nbd-socket") {
            Some(i) => PathBuf::from(extra[i + 1]),
            None => data_dir.join("nbd.sock"),
        };
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
            nbd_socket,
            grpc,
            metrics,
        };
        agent.wait_ready();
        agent
    }

    /// Waits until NBD is served, on TCP (unless turned off) and on its unix socket, and gRPC
    /// on its unix socket (bound last; a test with gRPC on TCP waits for it with `wait_grpc`).
    fn wait_ready(&self) {
        let grpc_socket = self.data_dir.join("grpc.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        let tcp = self.nbd.parse::<SocketAddr>().ok();
        while Instant::now() < deadline {
            let tcp_up = match tcp {
                Some(addr) => TcpStream::connect(addr).is_ok(),
                None => true,
            };
            if tcp_up
                && UnixStream::connect(&self.nbd_socket).is_ok()
                && UnixStream::connect(&grpc_socket).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "agent did not start listening on {}, {} and {}",
            self.nbd,
            self.nbd_socket.display(),
            grpc_socket.display()
        );
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.nbd, export)
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            export,
            self.nbd_socket.display()
        )
    }

    /// SIGTERM, a clean exit, then an offline `verify` that must pass and find every journal
    /// empty (a clean stop leaves each origin file complete on its own).
    pub fn stop_and_verify(self) {
        let report = self.stop_and_verify_report();
        assert!(!report.contains("journal holds"), "verify: {report}");
    }

    /// SIGTERM, a clean exit, then an offline `verify` that must pass; its report.
    pub fn stop_and_verify_report(self) -> String {
        let dir = self.data_dir.clone();
        let status = self.stop();
        assert!(status.success(), "agent exit after SIGTERM: {status:?}");
        let v = agent_cmd(&dir, &["verify"]);
        let report = String::from_utf8_lossy(&v.stdout).into_owned();
        assert!(v.status.success(), "verify: {report}");
        report
    }

    /// Calls a gRPC method through the reflection client (tests/grpc/grpcurl.py); panics
    /// with the status if it fails. Returns the JSON response.
    pub fn grpc(&self, method: &str, body: &str) -> String {
        let out = grpcurl()
            .args([&self.grpc, "call", method, body])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{method} {body}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of one series (`name{labels}` exactly as exposed) on the agent's /metrics,
    /// scraped with curl; 0 when the series is absent.
    /// The names of the agent's volumes (gRPC ListVolumes), sorted.
    pub fn volume_names(&self) -> Vec<String> {
        let reply = self.grpc("multisnap.v1.VolumeService/ListVolumes", "{}");
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        let mut names: Vec<String> = reply["volumes"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|v| v["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn metric(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.scrape()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// The agent's /metrics, scraped with curl.
    fn scrape(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.metrics)])
            .output()
            .expect("curl");
        assert!(out.status.success(), "scraping /metrics failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sum of every series of `family` whose labels include each of `labels`
    /// (`volume="v"`): a family split by a label the caller does not care about.
    pub fn metric_sum(&self, family: &str, labels: &[&str]) -> f64 {
        let prefix = format!("{family}{{");
        self.scrape()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| rest.rsplit_once("} "))
            .filter(|(set, _)| labels.iter().all(|l| set.split(',').any(|x| x == *l)))
            .map(|(_, v)| v.trim().parse::<f64>().expect("a number"))
            .sum()
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
    output_ok(Command::new(cmd).args(args))
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a prepared command; it must succeed. Returns its stdout.
pub fn output_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
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

/// qemu-io on a raw NBD export, read-write, when a command is expected to fail: its stdout and
/// stderr together (qemu-io reports a failed request there, often with exit status 0).
pub fn qemu_io_output(uri: &str, cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .arg(uri)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-io: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// Checks with `qemu-img compare` that the raw image file `image` and the NBD export at `uri`
/// hold the same bytes.
pub fn qemu_img_compare(image: &Path, uri: &str) {
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            image.to_str().unwrap(),
            uri,
        ],
    );
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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the repository")
        .to_path_buf()
}

/// The workspace version (Cargo.toml's `[workspace.package]`): every binary's version and the
/// tag deploy/images/build.sh gives the images.
pub fn workspace_version() -> String {
    std::fs::read_to_string(repo_root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("the workspace version")
}

/// What a binary's `--version` says (`NAME VERSION (COMMIT)`), as (VERSION, COMMIT); `cmd` is
/// the binary, or a command that runs it (in a container, say).
pub fn reported_version(mut cmd: Command) -> (String, String) {
    let line = output_ok(cmd.arg("--version"));
    let parsed = line.trim().split_once(' ').and_then(|(_, rest)| {
        let (version, commit) = rest.split_once(" (")?;
        Some((version.to_string(), commit.strip_suffix(')')?.to_string()))
    });
    parsed.unwrap_or_else(|| panic!("--version printed {line:?}, not NAME VERSION (COMMIT)"))
}

/// The commit the binaries of this build should report: `MULTISNAP_COMMIT` when it overrides
/// the build's commit, else the one checked out in this repository (12 hex digits); None
/// outside a git checkout.
pub fn expected_commit() -> Option<String> {
    if let Ok(commit) = std::env::var("MULTISNAP_COMMIT") {
        return Some(commit.trim().to_string());
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Python grpcio with reflection, the client the gRPC tests script with.
pub fn have_grpcio() -> bool {
    python_has(&["grpc", "grpc_reflection"])
}

#[macro_export]
macro_rules! require_grpcio {
    () => {
        if !$crate::have_grpcio() {
            $crate::missing_dependency("python grpcio/grpcio-reflection missing");
            return;
        }
    };
}

/// A throwaway PKI for NBD over TLS in `dir`, made by tests/tls/make-pki.sh (openssl): CA,
/// server certificate for localhost/127.0.0.1, a client certificate, and `other-ca/` with a
/// client of another CA. `dir` is laid out as libnbd's and qemu's client directories expect.
pub fn make_tls_pki(dir: &Path) {
    let script = repo_root().join("tests/tls/make-pki.sh");
    output_ok(Command::new("sh").arg(script).arg(dir));
}

/// `multisnap` against `agent`'s gRPC address, whatever MULTISNAP_ENDPOINT says.
pub fn cli(agent: &Agent, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .arg("--endpoint")
        .arg(format!("http://{}", agent.grpc))
        .args(args)
        .env_remove("MULTISNAP_ENDPOINT")
        .output()
        .expect("cannot run multisnap")
}

/// [`cli`] that must succeed; its stdout.
pub fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let out = cli(agent, args);
    assert!(
        out.status.success(),
        "multisnap {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sha256 of a file, in hex.
pub fn sha256(path: &Path) -> String {
    run_ok("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `agent`'s export copied whole to `to` with nbdcopy, and its sha256.
pub fn copy_sha(agent: &Agent, export: &str, to: &Path) -> String {
    run_ok("nbdcopy", &[&agent.uri(export), to.to_str().unwrap()]);
    sha256(to)
}

/// The names of `volume`'s ready snapshots on `agent`, sorted (`multisnap snapshot list`;
/// deleted ones stay listed while their space is reclaimed, and are left out).
pub fn ready_snapshots(agent: &Agent, volume: &str) -> Vec<String> {
    let out = cli_ok(agent, &["--output", "json", "snapshot", "list", volume]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("snapshot list is JSON");
    let mut names: Vec<String> = list["snapshots"]
        .as_array()
        .expect("a snapshots array")
        .iter()
        .filter(|s| s["state"] == "SNAPSHOT_STATE_READY")
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}
