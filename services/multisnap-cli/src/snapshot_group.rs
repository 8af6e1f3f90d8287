//! `multisnap snapshot group …`: snapshots of several volumes cut at one instant
//! (SnapshotService's group calls).

use crate::exit::rpc;
use crate::output::{self, state_word, Format, Table};
use crate::Ctx;
use anyhow::Result;
use clap::Subcommand;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::snapshot_service_client::SnapshotServiceClient;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Snapshot every VOLUME at one instant as NAME: each write acknowledged before the call is
    /// in every member, none that starts after it in any. Each member is VOLUME@NAME.
    /// Idempotent: the same NAME with the same volumes returns the group and exits 0.
    Create {
        /// 1-128 bytes of [A-Za-z0-9._-], not starting with '.' or '-'.
        name: String,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// List the snapshot groups, by name.
    List,
    /// Show one group and its members.
    Show { name: String },
    /// Delete a group and its members (their space is reclaimed in the background).
    Delete { name: String },
}

pub async fn run(
    ctx: &Ctx,
    client: &mut SnapshotServiceClient<Channel>,
    cmd: GroupCommand,
) -> Result<()> {
    match cmd {
        GroupCommand::Create { name, volumes } => {
            let g = client
                .create_snapshot_group(pb::CreateSnapshotGroupRequest {
                    name: name.clone(),
                    volumes,
                })
                .await
                .map_err(rpc(format!("cannot create snapshot group {name:?}")))?
                .into_inner();
            show(ctx.format, &g)
        }
        GroupCommand::List => {
            let groups = client
                .list_snapshot_groups(pb::ListSnapshotGroupsRequest {})
                .await
                .map_err(rpc("cannot list snapshot groups".to_string()))?
                .into_inner()
                .groups;
            match ctx.format {
                Format::Json => output::print_json(&json!({
                    "groups": groups.iter().map(group_json).collect::<Vec<_>>()
                })),
                Format::Table => list_table(&groups).print(),
            }?;
            Ok(())
        }
        GroupCommand::Show { name } => {
            let g = client
                .get_snapshot_group(pb::GetSnapshotGroupRequest { name: name.clone() })
                .await
                .map_err(rpc(format!("cannot get snapshot group {name:?}")))?
                .into_inner();
            show(ctx.format, &g)
        }
        GroupCommand::Delete { name } => {
            client
                .delete_snapshot_group(pb::DeleteSnapshotGroupRequest { name: name.clone() })
                .await
                .map_err(rpc(format!("cannot delete snapshot group {name:?}")))?;
            match ctx.format {
                Format::Json => output::print_json(&json!({ "deleted": name })),
                Format::Table => output::print_line(&format!(
                    "deleted snapshot group {name} and its members; their space is reclaimed in the background"
                )),
            }?;
            Ok(())
        }
    }
}

fn created(g: &pb::SnapshotGroup) -> String {
    g.created_at
        .as_ref()
        .map_or_else(|| "-".into(), |t| t.to_string())
}

fn group_json(g: &pb::SnapshotGroup) -> serde_json::Value {
    json!({
        "name": g.name,
        "createdAt": g.created_at.as_ref().map(|t| t.to_string()),
        "members": g.members.iter().map(output::snapshot_json).collect::<Vec<_>>(),
    })
}

fn list_table(groups: &[pb::SnapshotGroup]) -> Table {
    let mut t = Table::new(&[("NAME", false), ("CREATED", false), ("VOLUMES", false)]);
    for g in groups {
        let volumes: Vec<&str> = g.members.iter().map(|m| m.volume.as_str()).collect();
        // Whole seconds read better in a table, as in `snapshot list`.
        let created = g.created_at.as_ref().map_or_else(
            || "-".into(),
            |t| {
                prost_types::Timestamp {
                    seconds: t.seconds,
                    nanos: 0,
                }
                .to_string()
            },
        );
        t.row(vec![g.name.clone(), created, volumes.join(",")]);
    }
    t
}

fn show(format: Format, g: &pb::SnapshotGroup) -> Result<()> {
    match format {
        Format::Json => output::print_json(&group_json(g)),
        Format::Table => {
            output::print_details(&[("name", g.name.clone()), ("created", created(g))])?;
            let mut t = Table::new(&[
                ("VOLUME", false),
                ("ID", true),
                ("STATE", false),
                ("NBD EXPORT", false),
            ]);
            for m in &g.members {
                t.row(vec![
                    m.volume.clone(),
                    m.id.to_string(),
                    state_word(m.state),
                    m.nbd_export.clone(),
                ]);
            }
            t.print()
        }
    }?;
    Ok(())
}
