//! `multisnap snapshot …`: SnapshotService.

use crate::block_maps::{self, Map};
use crate::exit::rpc;
use crate::output::{self, state_word, Format, Table};
use crate::size::parse_size;
use crate::{reclaim, revert, Ctx};
use anyhow::Result;
use clap::Subcommand;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot VOLUME as NAME. Idempotent: if the snapshot exists (same --writable), it is
    /// returned and the exit code is 0.
    Create {
        volume: String,
        /// 1-128 bytes of [A-Za-z0-9._-], not starting with '.' or '-'.
        name: String,
        /// Let the snapshot take writes of its own (private to it).
        #[arg(long)]
        writable: bool,
    },
    /// List the snapshots of VOLUME, oldest first.
    List { volume: String },
    /// Show one snapshot.
    Show { volume: String, name: String },
    /// The byte ranges where TARGET differs from the older BASE (whole chunks), from the
    /// exception index without reading data: what an incremental backup copies.
    Diff {
        volume: String,
        base: String,
        target: String,
        /// Start at this byte (the end of the last range seen, to continue); K, M, G, T
        /// suffixes as for sizes.
        #[arg(long, default_value = "0", value_parser = parse_size)]
        from: u64,
    },
    /// The byte ranges of SNAPSHOT that hold data (the rest reads as zeros).
    Map {
        volume: String,
        snapshot: String,
        /// Start at this byte.
        #[arg(long, default_value = "0", value_parser = parse_size)]
        from: u64,
    },
    /// Delete a snapshot at once; its space is reclaimed in the background.
    Delete {
        volume: String,
        name: String,
        /// Wait, with a progress bar, until the volume has no space left to reclaim.
        #[arg(long)]
        wait: bool,
    },
    /// Roll VOLUME's origin back to SNAPSHOT in place: the origin reads as the snapshot at
    /// once, every snapshot keeps its contents, and the data is copied back in the background.
    /// Refused while a ublk device serves the origin (detach it first) and for a writable
    /// snapshot.
    Revert {
        volume: String,
        snapshot: String,
        /// Wait, with a progress bar, until the data is merged into the origin.
        #[arg(long)]
        wait: bool,
    },
    /// Snapshot groups: several volumes cut at one instant.
    #[command(subcommand)]
    Group(crate::snapshot_group::GroupCommand),
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCommand) -> Result<()> {
    let mut client = SnapshotServiceClient::new(ctx.channel.clone());
    match cmd {
        SnapshotCommand::Create {
            volume,
            name,
            writable,
        } => {
            let s = client
                .create_snapshot(pb::CreateSnapshotRequest {
                    volume: volume.clone(),
                    name: name.clone(),
                    writable,
                })
                .await
                .map_err(rpc(format!("cannot create snapshot {volume}@{name}")))?
                .into_inner();
            show(ctx.format, &s)
        }
        SnapshotCommand::List { volume } => {
            let snaps = client
                .list_snapshots(pb::ListSnapshotsRequest {
                    volume: volume.clone(),
                })
                .await
                .map_err(rpc(format!("cannot list snapshots of {volume:?}")))?
                .into_inner()
                .snapshots;
            match ctx.format {
                Format::Json => output::print_json(&serde_json::json!({
                    "snapshots": snaps.iter().map(output::snapshot_json).collect::<Vec<_>>()
                })),
                Format::Table => list_table(&snaps).print(),
            }?;
            Ok(())
        }
        SnapshotCommand::Show { volume, name } => {
            let s = client
                .get_snapshot(pb::GetSnapshotRequest {
                    volume: volume.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(rpc(format!("cannot get snapshot {volume}@{name}")))?
                .into_inner();
            show(ctx.format, &s)
        }
        SnapshotCommand::Diff {
            volume,
            base,
            target,
            from,
        } => block_maps::run(ctx, volume, Map::Changed { base, target }, from).await,
        SnapshotCommand::Map {
            volume,
            snapshot,
            from,
        } => block_maps::run(ctx, volume, Map::Allocated { snapshot }, from).await,
        SnapshotCommand::Delete { volume, name, wait } => {
            let mut pending = client
                .delete_snapshot(pb::DeleteSnapshotRequest {
                    volume: volume.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(rpc(format!("cannot delete snapshot {volume}@{name}")))?
                .into_inner()
                .reclaim_pending;
            if wait {
                pending = reclaim::wait(ctx, &volume, pending).await?;
            }
            match ctx.format {
                Format::Json => output::print_json(&serde_json::json!({
                    "reclaimPending": pending
                })),
                Format::Table if wait => output::print_line(&format!(
                    "deleted snapshot {volume}@{name}; its space is reclaimed"
                )),
                Format::Table => output::print_line(&format!(
                    "deleted snapshot {volume}@{name}; {pending} snapshot(s) of {volume} \
                     still being reclaimed (--wait waits for them)"
                )),
            }?;
            Ok(())
        }
        SnapshotCommand::Revert {
            volume,
            snapshot,
            wait,
        } => revert::run(ctx, &mut client, &volume, &snapshot, wait).await,
        SnapshotCommand::Group(cmd) => crate::snapshot_group::run(ctx, &mut client, cmd).await,
    }
}

fn list_table(snaps: &[pb::Snapshot]) -> Table {
    let mut t = Table::new(&[
        ("ID", true),
        ("NAME", false),
        ("STATE", false),
        ("WRITABLE", false),
        ("CREATED", false),
        ("NBD EXPORT", false),
    ]);
    for s in snaps {
        t.row(vec![
            s.id.to_string(),
            s.name.clone(),
            state_word(s.state),
            if s.writable { "yes" } else { "no" }.into(),
            created(s),
            s.nbd_export.clone(),
        ]);
    }
    t
}

fn created(s: &pb::Snapshot) -> String {
    s.created_at
        .as_ref()
        .map(|t| {
            // Whole seconds read better in a table; JSON keeps the full timestamp.
            prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn show(format: Format, s: &pb::Snapshot) -> Result<()> {
    match format {
        Format::Json => output::print_json(&output::snapshot_json(s)),
        Format::Table => {
            let mut fields = vec![
                ("id", s.id.to_string()),
                ("name", s.name.clone()),
                ("volume", s.volume.clone()),
                (
                    "created",
                    s.created_at
                        .as_ref()
                        .map_or_else(|| "-".into(), |t| t.to_string()),
                ),
                ("writable", if s.writable { "yes" } else { "no" }.into()),
                ("state", state_word(s.state)),
                ("nbd export", s.nbd_export.clone()),
            ];
            if let Some(b) = s.exclusive_bytes {
                fields.push(("exclusive", output::bytes_detail(b)));
            }
            if !s.group.is_empty() {
                fields.push(("group", s.group.clone()));
            }
            output::print_details(&fields)
        }
    }?;
    Ok(())
}
