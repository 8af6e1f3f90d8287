//! multisnap-agent: the node agent. Serves every volume in its data directory — the origin as
//! NBD export `VOLUME`, each snapshot as `VOLUME@SNAPSHOT` — and checks stores offline with
//! `verify`. On SIGTERM or SIGINT it stops accepting, lets in-flight requests finish, flushes
//! and commits every volume, and exits 0.

mod clones;
mod datadir;
mod groups;
mod grpc;
mod io_errors;
mod listen;
mod metrics;
mod mirror;
mod nbd_exports;
mod nbd_tls;
mod origin_policy;
mod permissions;
mod policy;
mod reclaimer;
mod stream_messages;
mod ublk_devices;
mod verify_cmd;
mod volume_labels;
mod volume_reopen;
mod volume_resize;
mod volumes;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use listen::{Gid, SocketMode, TcpListen};
use multisnap_nbd::{CancellationToken, ServerConfig};
use multisnap_store::FullPolicy;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use volumes::{NewVolume, Volumes};

#[derive(Parser)]
#[command(
    name = "multisnap-agent",
    version = multisnap_build_info::VERSION_LINE,
    about = "multisnap node agent"
)]
struct Cli {
    /// Directory holding the volumes (created if missing).
    #[arg(long, global = true, env = "MULTISNAP_DATA_DIR")]
    data_dir: Option<PathBuf>,

    #[command(flatten)]
    serve: ServeArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TCP address for NBD (loopback unless told otherwise), or `none` to serve NBD only on
    /// the unix socket. Anyone who reaches it can read and write every volume: loopback lets
    /// in every local user (see the README's Security section).
    #[arg(
        long,
        env = "MULTISNAP_NBD_LISTEN",
        default_value = "127.0.0.1:10809",
        value_name = "ADDR|none"
    )]
    nbd_listen: TcpListen,
    /// TCP address for the gRPC API, or `none` to serve it only on DATA_DIR/grpc.sock.
    #[arg(
        long,
        env = "MULTISNAP_GRPC_LISTEN",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR|none"
    )]
    grpc_listen: TcpListen,
    /// PEM certificate chain: serve gRPC over TLS on the TCP address (needs --grpc-tls-key).
    #[arg(long, env = "MULTISNAP_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// PEM private key for --grpc-tls-cert.
    #[arg(long, env = "MULTISNAP_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// PEM CA: accept only gRPC clients with a certificate it signed (mutual TLS).
    #[arg(long, env = "MULTISNAP_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    grpc_tls_client_ca: Option<PathBuf>,
    /// TCP address for Prometheus metrics (served at /metrics), or `none` for no metrics
    /// endpoint.
    #[arg(
        long,
        env = "MULTISNAP_METRICS_LISTEN",
        default_value = "127.0.0.1:9500",
        value_name = "ADDR|none"
    )]
    metrics_listen: TcpListen,
    /// NBD connections served at once, TCP and unix together; a client beyond it is told
    /// "too many connections" (NBD_REP_ERR_POLICY). The agent raises its open-file limit to fit.
    #[arg(long, env = "MULTISNAP_NBD_MAX_CONNECTIONS", default_value_t = multisnap_nbd::DEFAULT_MAX_CONNECTIONS)]
    nbd_max_connections: usize,
    /// Seconds an NBD client that has begun a request gets to send the rest of it (and to
    /// read a batch of replies) before its connection is closed; 0: wait forever. Idle clients
    /// are never cut.
    #[arg(long, env = "MULTISNAP_NBD_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    nbd_request_timeout_secs: u64,
    #[command(flatten)]
    nbd_tls: nbd_tls::NbdTlsArgs,
    /// Unix socket for NBD [default: DATA_DIR/nbd.sock].
    #[arg(long, env = "MULTISNAP_NBD_SOCKET")]
    nbd_socket: Option<PathBuf>,
    /// Permission bits (octal) of the NBD and gRPC unix sockets, whatever the umask. A client
    /// needs write permission to connect: 0660 lets in the agent's user and --socket-group.
    #[arg(
        long,
        env = "MULTISNAP_SOCKET_MODE",
        default_value = "0660",
        value_name = "MODE"
    )]
    socket_mode: SocketMode,
    /// Group (name or GID) given the NBD and gRPC unix sockets, so that its members can
    /// connect; the data directory then becomes mode 0710 of this group, which lets them reach
    /// the sockets in it but not list it. Without it the data directory is 0700.
    #[arg(long, env = "MULTISNAP_SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<Gid>,
    /// Bytes of index caches per volume: 1/32 for the location cache of snapshot reads, the
    /// rest for exception-index nodes.
    #[arg(long, env = "MULTISNAP_CACHE_BYTES", default_value_t = 64 << 20)]
    cache_bytes: usize,
    /// Origin write journal of each volume made from now on, in bytes (0: none), at most a
    /// quarter of the origin. A flush writes the origin writes since the last one there in one
    /// sequential write; the default store size grows by the journal's size.
    #[arg(long, env = "MULTISNAP_JOURNAL_BYTES", default_value_t = multisnap_store::journal::DEFAULT_JOURNAL_BYTES)]
    journal_bytes: u64,
    /// How the first write to a chunk after a snapshot copies the chunk's old data into the
    /// store. `kernel`: copy_file_range(2) where origin and store are files of one filesystem
    /// (XFS and btrfs share the extent instead of copying it), reads and writes otherwise;
    /// `memory`: always reads and writes.
    #[arg(long, env = "MULTISNAP_COPY_OUT", value_enum, default_value_t = CopyOut::Kernel)]
    copy_out: CopyOut,
    /// Bytes per second each round of clone hydrations may copy, across all clones (0: as fast
    /// as the disks allow). A limit leaves bandwidth to the volumes' own I/O.
    #[arg(long, env = "MULTISNAP_HYDRATION_BYTES_PER_SEC", default_value_t = 0)]
    hydration_bytes_per_sec: u64,
    /// Where CreateVolume may take an existing origin from, besides the data directory
    /// (repeat, or separate with commas): a directory (everything under it), a file or block
    /// device, or a pattern such as `/dev/disk/by-id/nvme-*`. Symlinks and `..` are resolved
    /// before judging; the agent's own files are never allowed.
    #[arg(long, env = "MULTISNAP_ALLOW_ORIGIN", value_delimiter = ',')]
    allow_origin: Vec<String>,
    /// Size of the `default` volume made in an empty data directory.
    #[arg(long, default_value_t = 1 << 30)]
    default_volume_size: u64,
    /// Chunk size of the `default` volume.
    #[arg(long, default_value_t = 64 * 1024)]
    default_chunk_size: u32,
    /// How the `default` volume opens its origin: through the page cache, or with O_DIRECT
    /// (as `multisnap volume create --origin-cache` does for other volumes).
    #[arg(long, value_enum, default_value_t = DefaultOriginCache::Buffered)]
    default_origin_cache: DefaultOriginCache,
    /// Tests only: the snapshot policies' clock is the Unix seconds written in this file
    /// (read at every look, about 20 times a second) instead of the system clock.
    #[arg(long, hide = true, value_name = "PATH")]
    test_clock_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DefaultOriginCache {
    Buffered,
    Direct,
}

#[derive(Subcommand)]
enum Command {
    /// Check every store in the data directory offline; exit 0 when all are clean.
    Verify,
    /// Manage snapshots offline (the agent must not be running on this data directory).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Create a read-only snapshot of VOLUME named NAME.
    Create { volume: String, name: String },
    /// List the snapshots of VOLUME.
    List { volume: String },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let Some(data_dir) = cli.data_dir.clone() else {
        eprintln!("error: --data-dir DIR is required (or set MULTISNAP_DATA_DIR)");
        return ExitCode::from(2);
    };
    let result = match cli.command {
        Some(Command::Verify) => match verify_cmd::run(&data_dir) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
        Some(Command::Snapshot(cmd)) => snapshot_offline(&data_dir, &cli.serve, cmd),
        None => serve(&data_dir, &cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the data directory and every volume in it. Serving (`secure`) first brings an
/// existing directory to the modes a new one gets: it may have been made under a looser umask
/// by an earlier version, and it must be private before a volume is made or a socket bound.
/// `--copy-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CopyOut {
    Kernel,
    Memory,
}

fn load_volumes(data_dir: &Path, args: &ServeArgs, secure: bool) -> Result<Volumes> {
    volumes::allow_kernel_copy(args.copy_out == CopyOut::Kernel);
    let dir = datadir::DataDir::open_locked(data_dir)?;
    if secure {
        permissions::secure_data_dir(data_dir, args.socket_group)?;
    }
    let policy = origin_policy::OriginPolicy::new(data_dir, &args.allow_origin)?;
    tracing::info!(allowed = %policy.describe(), "origins allowed for new volumes");
    Volumes::load(dir, policy, args.cache_bytes, args.journal_bytes)
}

fn snapshot_offline(data_dir: &Path, args: &ServeArgs, cmd: SnapshotCommand) -> Result<()> {
    let volumes = load_volumes(data_dir, args, false)?;
    let volume_name = match &cmd {
        SnapshotCommand::Create { volume, .. } | SnapshotCommand::List { volume } => volume,
    };
    let volume = volumes
        .get(volume_name)
        .with_context(|| format!("no volume named {volume_name} in {}", data_dir.display()))?;
    match cmd {
        SnapshotCommand::Create { name, .. } => {
            let info = volume.store.create_snapshot(&name)?;
            volume.store.flush()?;
            println!(
                "created snapshot {} (id {}) of volume {}",
                info.name, info.id.0, volume.name
            );
        }
        SnapshotCommand::List { .. } => {
            println!(
                "{:>8}  {:<32}  {:<10}  CREATED (unix s)",
                "ID", "NAME", "STATE"
            );
            for s in volume.store.list_snapshots() {
                let secs = s
                    .created_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                println!(
                    "{:>8}  {:<32}  {:<10}  {secs}",
                    s.id.0,
                    s.name,
                    format!("{:?}", s.state).to_lowercase()
                );
            }
        }
    }
    Ok(())
}

fn serve(data_dir: &Path, args: &ServeArgs) -> Result<()> {
    // First line of every start: which build is running, for the logs of a fleet.
    tracing::info!(
        version = multisnap_build_info::VERSION,
        commit = multisnap_build_info::COMMIT,
        "multisnap-agent starting"
    );
    if args.grpc_tls_cert.is_some() && args.grpc_listen.addr().is_none() {
        anyhow::bail!(
            "--grpc-tls-cert secures the gRPC TCP listener, which --grpc-listen none turns off; \
             give one or the other"
        );
    }
    // Before the volumes are opened: unusable certificate files fail the start at once.
    let nbd_tls = args.nbd_tls.load(args.nbd_listen.addr().is_some())?;
    raise_open_file_limit(args.nbd_max_connections);
    let volumes = Arc::new(load_volumes(data_dir, args, true)?);
    if volumes.is_empty() {
        volumes.create(&NewVolume {
            name: "default".into(),
            size_bytes: args.default_volume_size,
            chunk_size: args.default_chunk_size,
            store_size_bytes: None,
            origin_path: None,
            full_policy: FullPolicy::Error,
            origin_cache: match args.default_origin_cache {
                DefaultOriginCache::Buffered => multisnap_store::OriginCache::Buffered,
                DefaultOriginCache::Direct => multisnap_store::OriginCache::Direct,
            },
            labels: Default::default(),
        })?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("multisnap")
        .build()
        .context("cannot start the async runtime")?;
    let stop_background = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reclaimer = reclaimer::spawn(
        volumes.clone(),
        stop_background.clone(),
        clones::Throttle::new(args.hydration_bytes_per_sec),
    );
    let recovery = volume_reopen::spawn_recovery(volumes.clone(), stop_background.clone());
    let ublk = Arc::new(ublk_devices::UblkDevices::new(volumes.clone(), data_dir));
    let clock: Arc<dyn policy::clock::Clock> = match &args.test_clock_file {
        Some(path) => {
            tracing::warn!(path = %path.display(), "snapshot policies run on a test clock");
            Arc::new(policy::clock::FileClock { path: path.clone() })
        }
        None => Arc::new(policy::clock::SystemClock),
    };
    let scheduler = Arc::new(policy::scheduler::Scheduler::new(
        clock,
        policy::holds::Holds::standard(ublk.clone()),
    ));
    let policies = scheduler
        .clone()
        .spawn(volumes.clone(), stop_background.clone());
    let served = runtime.block_on(serve_async(
        data_dir,
        args,
        nbd_tls,
        volumes.clone(),
        ublk.clone(),
        scheduler.clone(),
    ));
    // Clean removal of every ublk device before the final flush.
    ublk.stop_all();
    // No policy snapshot after this point: the volumes are about to be flushed.
    stop_background.store(true, std::sync::atomic::Ordering::Release);
    scheduler.wake();
    let _ = policies.join();
    let _ = reclaimer.join();
    let _ = recovery.join();
    served?;
    // Every frontend has stopped; make everything acknowledged durable.
    volumes.flush_all()?;
    tracing::info!("all volumes flushed and committed; exiting");
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each NBD connection holds a socket
/// (and a volume's files are a few more), and the usual soft default of 1024 would refuse
/// clients with EMFILE well before `--nbd-max-connections`.
fn raise_open_file_limit(nbd_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    // Sockets for the connections, plus room for volumes, listeners and the runtime.
    let wanted = nbd_connections as u64 + 256;
    if lim.rlim_cur < wanted {
        tracing::warn!(
            open_files = lim.rlim_cur,
            nbd_max_connections = nbd_connections,
            "the open-file limit is below what --nbd-max-connections needs; clients may be refused with EMFILE (raise LimitNOFILE / ulimit -n)"
        );
    }
}

/// How long a stop waits for clients to finish their requests and close their connections
/// before it closes them: well inside Kubernetes' default 30 s grace period, so the volumes'
/// clean stop that follows is done before the SIGKILL.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve_async(
    data_dir: &Path,
    args: &ServeArgs,
    nbd_tls: Option<multisnap_nbd::NbdTls>,
    volumes: Arc<Volumes>,
    ublk: Arc<ublk_devices::UblkDevices>,
    scheduler: Arc<policy::scheduler::Scheduler>,
) -> Result<()> {
    // Before anything is served: a SIGTERM that comes as soon as a client sees a listener
    // must stop the agent cleanly (flushing every volume), not kill it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    let provider: Arc<dyn multisnap_nbd::ExportProvider> =
        Arc::new(nbd_exports::NbdProvider::new(volumes.clone()));
    let access = permissions::SocketAccess {
        mode: args.socket_mode,
        group: args.socket_group,
    };

    let tcp = match args.nbd_listen.addr() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for NBD on {addr}"))?,
        ),
        None => None,
    };
    let sock_path = args
        .nbd_socket
        .clone()
        .unwrap_or_else(|| data_dir.join("nbd.sock"));
    let unix = permissions::bind_unix_socket(&sock_path, access)
        .with_context(|| format!("cannot listen for NBD on {}", sock_path.display()))?;
    tracing::info!(tcp = %args.nbd_listen, unix = %sock_path.display(), socket_mode = %args.socket_mode, socket_group = ?args.socket_group.map(|g| g.0), "serving NBD");
    if let Some(tls) = &nbd_tls {
        tracing::info!(tcp = %tls.tcp, unix = %tls.unix, client_certificates = tls.mutual(), "NBD over TLS");
    }

    let mut tasks: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    let metrics = metrics::Metrics::new(volumes.clone(), scheduler.clone());
    // ublk devices a previous agent left in the kernel are taken over now that their metrics
    // exist, before the control plane can attach new ones.
    ublk.set_metrics(metrics.ublk.clone());
    let u = ublk.clone();
    tokio::task::spawn_blocking(move || u.recover())
        .await
        .context("ublk recovery failed")?;
    // One config for both listeners, so they share one connection limit.
    let nbd_config = ServerConfig {
        observer: Some(metrics.nbd.clone() as Arc<dyn multisnap_nbd::Observer>),
        request_timeout: (args.nbd_request_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(args.nbd_request_timeout_secs)),
        connections: Arc::new(multisnap_nbd::ConnectionSlots::new(
            args.nbd_max_connections,
        )),
        tls: nbd_tls,
        ..ServerConfig::default()
    };
    if let Some(tcp) = tcp {
        let (p, sd, cfg) = (provider.clone(), shutdown.clone(), nbd_config.clone());
        tasks.spawn(async move { Ok(multisnap_nbd::serve_tcp(tcp, p, cfg, sd).await?) });
    }
    let (sd, cfg) = (shutdown.clone(), nbd_config);
    tasks.spawn(async move { Ok(multisnap_nbd::serve_unix(unix, provider, cfg, sd).await?) });
    // Like gRPC, a metrics port that cannot be bound is logged, not fatal: block I/O matters more.
    if let Some(addr) = args.metrics_listen.addr() {
        let (reg, sd) = (metrics.registry.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(addr, reg, sd).await {
                tracing::error!(error = format!("{e:#}"), "no metrics endpoint");
            }
            Ok(())
        });
    } else {
        tracing::info!("no metrics endpoint (--metrics-listen none)");
    }
    let grpc_sock = data_dir.join("grpc.sock");
    let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(
            grpc::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.grpc_tls_client_ca.clone(),
            }
            .server_config()?,
        ),
        _ => None,
    };
    let listeners = grpc::bind(args.grpc_listen.addr(), &grpc_sock, access).await?;
    let mirrors = Arc::new(mirror::worker::MirrorWorker::new(
        mirror::backoff::Backoff::STANDARD,
    ));
    let (v, sd, m) = (volumes.clone(), shutdown.clone(), mirrors.clone());
    tasks.spawn(async move {
        m.run(v, sd).await;
        Ok(())
    });
    let (v, sd) = (volumes.clone(), shutdown.clone());
    tasks.spawn(async move {
        let workers = grpc::Workers { scheduler, mirrors };
        grpc::serve(v, ublk, workers, listeners, tls, &grpc_sock, sd).await
    });

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "listener ended with an error"),
                Err(e) => tracing::warn!(error = %e, "listener task failed"),
            }
        }
    })
    .await;
    if drained.is_err() {
        // A client that keeps its connection (a stopped process, one that never reads the
        // server's goodbye) must not keep the volumes from their clean stop, which comes next
        // and has to finish before a service manager's SIGKILL.
        tracing::warn!(
            seconds = SHUTDOWN_DRAIN.as_secs(),
            "clients still connected after the shutdown began; closing their connections"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let _ = std::fs::remove_file(&sock_path);
    Ok(())
}
