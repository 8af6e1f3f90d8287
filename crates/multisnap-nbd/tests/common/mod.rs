//! Shared harness for the integration tests: a server over in-memory
//! exports on a random loopback port and a temp unix socket, plus helpers to
//! run the real Debian clients against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use multisnap_nbd::testing::{MemExport, MemProvider};
use multisnap_nbd::{serve_tcp, serve_unix, CancellationToken, ExportProvider, ServerConfig};
use tokio::task::JoinHandle;

pub const DISK_SIZE: u64 = 16 * 1024 * 1024;
pub const RO_SIZE: u64 = 1024 * 1024;

pub struct TestServer {
    pub port: u16,
    pub socket: PathBuf,
    pub disk: Arc<MemExport>,
    pub ro: Arc<MemExport>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Exports: `disk` (16 MiB, read-write, the default) and `ro` (1 MiB of
    /// 0x5a, read-only).
    pub async fn start() -> TestServer {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let disk = Arc::new(MemExport::new(DISK_SIZE, false));
        let ro = Arc::new(MemExport::new(RO_SIZE, true));
        ro.fill(0, RO_SIZE, 0x5a);
        let mut p = MemProvider::new();
        p.add("disk", disk.clone(), Some("scratch disk"));
        p.add("ro", ro.clone(), Some("read-only image"));
        p.set_default("disk");
        let provider: Arc<dyn ExportProvider> = Arc::new(p);

        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nbd.sock");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        let unix = tokio::net::UnixListener::bind(&socket).expect("bind unix");
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(serve_tcp(
                tcp,
                provider.clone(),
                config.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(serve_unix(unix, provider, config, shutdown.clone())),
        ];
        TestServer {
            port,
            socket,
            disk,
            ro,
            shutdown,
            tasks,
            _dir: dir,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, export)
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{}?socket={}", export, self.socket.display())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cancels the server and checks that both listeners return promptly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let r = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server did not shut down within 20s")
                .expect("server task panicked");
            r.expect("server returned an error");
        }
    }
}

/// Path of a client tool, or `None` after printing why the test is skipped.
pub fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    println!("SKIP: {name} is not installed (apt-get install -y qemu-utils libnbd-bin)");
    None
}

/// nbdsh's path, or `None` after printing why the test is skipped: nbdsh
/// is missing, or Debian's python3 cannot import libnbd's bindings (nbdsh
/// needs them).
pub fn nbdsh() -> Option<PathBuf> {
    let nbdsh = tool("nbdsh")?;
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIP: /usr/bin/python3 cannot import nbd (apt-get install -y python3-libnbd)");
        return None;
    }
    Some(nbdsh)
}

/// nbdsh setting that asks for the base:allocation metadata context, which
/// BLOCK_STATUS needs; it must come before the handle connects.
pub const WITH_BASE_ALLOCATION: &str = r#"h.add_meta_context("base:allocation")"#;

/// Runs `script` in nbdsh with its handle `h` connected to `uri`, after the
/// handshake settings in `before_connect` (e.g. [`WITH_BASE_ALLOCATION`]).
/// A script reports a wrong result by raising, or by printing a line with
/// "UNEXPECTED"; this fails the test unless nbdsh exits 0 and the script
/// ran to its end without such a line. Returns nbdsh's stdout.
pub async fn nbdsh_script(nbdsh: &Path, uri: &str, before_connect: &str, script: &str) -> String {
    let full = format!("{before_connect}\nh.connect_uri(\"{uri}\")\n{script}\nprint(\"ok\")\n");
    let out = run_ok(nbdsh, &["-c", &full]).await;
    assert!(
        out.lines().last() == Some("ok") && !out.contains("UNEXPECTED"),
        "{out}"
    );
    out
}

/// Runs a client with a timeout so a server hang fails the test instead of
/// hanging it. Debian's /usr/bin comes first on PATH so nbdsh finds the
/// python3 that has the libnbd bindings.
pub async fn run(prog: &Path, args: &[&str]) -> Output {
    let path = format!(
        "/usr/bin:/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let child = tokio::process::Command::new(prog)
        .args(args)
        .env("PATH", path)
        .env("LIBNBD_DEBUG", "0")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .unwrap_or_else(|_| panic!("{} {:?} timed out", prog.display(), args))
        .expect("spawn client")
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs and asserts success, returning stdout.
pub async fn run_ok(prog: &Path, args: &[&str]) -> String {
    let o = run(prog, args).await;
    assert!(
        o.status.success(),
        "{} failed\n{}",
        prog.display(),
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs qemu-io on `uri` as a raw image with one `-c` per command and asserts that it exited
/// 0 and that its output names no failure: a command that fails, or a `-P` read whose pattern
/// does not match, only prints so. Returns stdout.
pub async fn qemu_io_ok(qio: &Path, uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for c in commands {
        args.extend(["-c", c]);
    }
    let out = run_ok(qio, &args).await;
    assert!(
        !out.contains("failed") && !out.contains("verification"),
        "{out}"
    );
    out
}

/// qemu-io prints I/O failures on stdout/stderr but may still exit 0, so
/// scripted checks look for its failure messages too.
pub fn qemu_io_failed(o: &Output) -> bool {
    let all = text(o);
    !o.status.success() || all.contains("failed") || all.contains("Pattern verification")
}

// --- A tiny raw-socket client for tests that must send what real clients won't. ---

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;

/// Connects and reads the greeting; sends `client_flags`.
pub async fn raw_greet(addr: &str, client_flags: u32) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    greet(&mut s, client_flags).await;
    s
}

/// Reads the greeting on an open connection; sends `client_flags`.
pub async fn greet<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, client_flags: u32) {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.expect("greeting");
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    s.write_all(&client_flags.to_be_bytes())
        .await
        .expect("flags");
}

pub async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, opt: u32, data: &[u8]) {
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).await.expect("send option");
}

/// Reads one option reply: (option, reply type, data).
pub async fn read_option_reply<S: AsyncRead + Unpin>(
    s: &mut S,
) -> std::io::Result<(u32, u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await?;
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        OPT_REPLY_MAGIC
    );
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).await?;
    Ok((opt, typ, d))
}

pub fn go_payload(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

/// Full handshake with NBD_OPT_GO and simple replies; returns the socket in
/// transmission phase.
pub async fn raw_go(addr: &str, export: &str) -> TcpStream {
    let mut s = raw_greet(addr, 3).await;
    go(&mut s, export).await;
    s
}

/// Sends NBD_OPT_GO for `export` and reads its NBD_REP_INFO replies up to
/// the ACK, after which the socket is in transmission phase.
pub async fn go<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, export: &str) {
    send_option(s, 7, &go_payload(export)).await;
    loop {
        let (_, typ, _) = read_option_reply(s).await.expect("GO reply");
        if typ == 1 {
            return;
        }
        assert_eq!(typ, 3, "unexpected GO reply type {typ:#x}");
    }
}

pub async fn send_request<S: AsyncWrite + Unpin>(
    s: &mut S,
    flags: u16,
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
) {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    s.write_all(&b).await.expect("send request");
}

/// Reads a simple reply header: (error, handle).
pub async fn read_simple_reply<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u32, u64)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await?;
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    Ok((
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    ))
}

/// True if the server closed the connection (EOF or reset) within 5 s.
pub async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
