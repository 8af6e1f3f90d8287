//! `multisnap`: the command-line client of the agent's gRPC API (`multisnap.v1`), for people
//! (tables, progress bars) and scripts (`--output json`, documented exit codes).

mod block_maps;
mod delta;
mod endpoint;
mod exit;
mod hydration;
mod mirror;
mod output;
mod policy;
mod reclaim;
mod replicate;
mod revert;
mod size;
mod snapshot;
mod snapshot_group;
mod stream_cost;
mod ublk;
mod volume;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "multisnap",
    version = multisnap_build_info::VERSION_LINE,
    about = "Manage multisnap volumes and snapshots through the agent's gRPC API",
    after_help = exit::HELP
)]
struct Cli {
    /// The agent: http://HOST:PORT or unix:/path/to/DATA_DIR/grpc.sock (the only way in to an
    /// agent started with --grpc-listen none).
    #[arg(
        long,
        global = true,
        env = "MULTISNAP_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_parser = endpoint::parse
    )]
    endpoint: endpoint::Target,
    /// Output format: human tables, or one JSON document for scripts.
    #[arg(long, short, global = true, value_enum, default_value = "table")]
    output: output::Format,
    /// Limit for connecting and for each call, e.g. 30s, 500ms, 2m (a bare number is seconds).
    #[arg(long, global = true, default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Volumes: an origin plus its copy-on-write store.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots: point-in-time views of a volume (NBD export VOLUME@NAME).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Deltas between snapshots: export to a file or stdout, apply from one, resume state.
    #[command(subcommand)]
    Delta(delta::DeltaCommand),
    /// Copy a volume's newest (or --snapshot) snapshot to another agent, sending only what
    /// changed since the newest snapshot both hold.
    Replicate(replicate::ReplicateArgs),
    /// ublk: a volume or snapshot as a local block device /dev/ublkbN on the agent's machine.
    #[command(subcommand)]
    Ublk(ublk::UblkCommand),
    /// Snapshot policies: a volume's snapshots taken on a schedule and pruned by retention.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Mirrors: a volume's new snapshots sent by its agent to another agent as they appear.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
}

/// What every command needs: a connected channel and how to print.
pub struct Ctx {
    pub channel: tonic::transport::Channel,
    pub format: output::Format,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("{s:?}: the timeout must be positive"));
    }
    Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{s:?}: {e}"))
}

async fn run(cli: Cli) -> Result<()> {
    // Delta streams run as long as they need to; other calls are bounded by --timeout.
    let streaming = matches!(cli.command, Command::Delta(_) | Command::Replicate(_));
    let channel = endpoint::connect(&cli.endpoint, cli.timeout, streaming).await?;
    let ctx = Ctx {
        channel,
        format: cli.output,
    };
    match cli.command {
        Command::Volume(cmd) => volume::run(&ctx, cmd).await,
        Command::Snapshot(cmd) => snapshot::run(&ctx, cmd).await,
        Command::Delta(cmd) => delta::run(&ctx, cmd).await,
        Command::Replicate(args) => replicate::run(&ctx, args, cli.timeout).await,
        Command::Ublk(cmd) => ublk::run(&ctx, cmd).await,
        Command::Policy(cmd) => policy::run(&ctx, cmd).await,
        Command::Mirror(cmd) => mirror::run(&ctx, cmd).await,
    }
}

/// The error chain on one line, like anyhow's `{:#}`, minus the repeats hyper's nested
/// connect errors produce ("tcp connect error: tcp connect error: …").
fn message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multisnap: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multisnap: {}", message(&e));
            exit::code_for(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
