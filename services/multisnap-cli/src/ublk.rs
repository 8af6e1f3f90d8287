//! `multisnap ublk …`: UblkService (volumes and snapshots as local /dev/ublkbN devices).

use crate::exit::rpc;
use crate::output::{self, Format, Table};
use crate::Ctx;
use anyhow::Result;
use clap::Subcommand;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::ublk_service_client::UblkServiceClient;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum UblkCommand {
    /// Serve VOLUME's origin (or --snapshot NAME, read-only unless writable) as /dev/ublkbN
    /// on the agent's machine. Needs the kernel's ublk driver (modprobe ublk_drv).
    Attach {
        volume: String,
        /// A snapshot of VOLUME instead of its origin.
        #[arg(long)]
        snapshot: Option<String>,
        /// Hardware queues, each served by its own agent thread (default 1).
        #[arg(long)]
        queues: Option<u32>,
        /// Requests in flight per queue (default 64).
        #[arg(long)]
        depth: Option<u32>,
    },
    /// Stop and remove a device, given as /dev/ublkbN or N. Refused while it is mounted
    /// unless --force.
    Detach {
        device: String,
        /// Remove it even while in use (its filesystem then gets I/O errors).
        #[arg(long)]
        force: bool,
    },
    /// The devices the agent serves.
    List,
}

fn device_json(d: &pb::UblkDevice) -> Value {
    json!({
        "id": d.id,
        "device": d.device,
        "volume": d.volume,
        "snapshot": d.snapshot,
        "readOnly": d.read_only,
        "sizeBytes": d.size_bytes,
        "queues": d.queues,
        "depth": d.depth,
    })
}

pub async fn run(ctx: &Ctx, cmd: UblkCommand) -> Result<()> {
    match cmd {
        UblkCommand::Attach {
            volume,
            snapshot,
            queues,
            depth,
        } => attach(ctx, volume, snapshot, queues, depth).await,
        UblkCommand::Detach { device, force } => detach(ctx, device, force).await,
        UblkCommand::List => list(ctx).await,
    }
}

async fn attach(
    ctx: &Ctx,
    volume: String,
    snapshot: Option<String>,
    queues: Option<u32>,
    depth: Option<u32>,
) -> Result<()> {
    let what = match &snapshot {
        Some(s) => format!("{volume}@{s}"),
        None => volume.clone(),
    };
    let d = UblkServiceClient::new(ctx.channel.clone())
        .attach_ublk(pb::AttachUblkRequest {
            volume,
            snapshot: snapshot.unwrap_or_default(),
            queues: queues.unwrap_or(0),
            depth: depth.unwrap_or(0),
        })
        .await
        .map_err(rpc(format!("cannot attach {what} as a ublk device")))?
        .into_inner();
    match ctx.format {
        Format::Json => output::print_json(&device_json(&d)),
        Format::Table => output::print_details(&[
            ("device", d.device.clone()),
            ("volume", d.volume.clone()),
            (
                "snapshot",
                if d.snapshot.is_empty() {
                    "- (origin)".into()
                } else {
                    d.snapshot.clone()
                },
            ),
            ("read-only", if d.read_only { "yes" } else { "no" }.into()),
            ("size", output::bytes_detail(d.size_bytes)),
            ("queues", d.queues.to_string()),
            ("depth", d.depth.to_string()),
        ]),
    }?;
    Ok(())
}

async fn detach(ctx: &Ctx, device: String, force: bool) -> Result<()> {
    let (id, path) = match device.parse::<u32>() {
        Ok(n) => (n, String::new()),
        Err(_) => (0, device.clone()),
    };
    UblkServiceClient::new(ctx.channel.clone())
        .detach_ublk(pb::DetachUblkRequest {
            id,
            device: path,
            force,
        })
        .await
        .map_err(rpc(format!("cannot detach ublk device {device}")))?;
    match ctx.format {
        Format::Json => output::print_json(&json!({})),
        Format::Table => output::print_line(&format!("detached {device}")),
    }?;
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<()> {
    let devices = UblkServiceClient::new(ctx.channel.clone())
        .list_ublk(pb::ListUblkRequest {})
        .await
        .map_err(rpc("cannot list ublk devices".to_string()))?
        .into_inner()
        .devices;
    match ctx.format {
        Format::Json => output::print_json(&json!({
            "devices": devices.iter().map(device_json).collect::<Vec<_>>()
        })),
        Format::Table => {
            let mut t = Table::new(&[
                ("DEVICE", false),
                ("VOLUME", false),
                ("SNAPSHOT", false),
                ("RO", false),
                ("QUEUES", true),
                ("DEPTH", true),
            ]);
            for d in &devices {
                t.row(vec![
                    d.device.clone(),
                    d.volume.clone(),
                    if d.snapshot.is_empty() {
                        "-".into()
                    } else {
                        d.snapshot.clone()
                    },
                    if d.read_only { "yes" } else { "no" }.into(),
                    d.queues.to_string(),
                    d.depth.to_string(),
                ]);
            }
            t.print()
        }
    }?;
    Ok(())
}
