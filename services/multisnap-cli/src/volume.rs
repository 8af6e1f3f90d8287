//! `multisnap volume …`: VolumeService.

use crate::exit::rpc;
use crate::output::{self, bytes_detail, origin_cache_word, policy_word, Format, Table};
use crate::size::{human, parse_chunk_size, parse_size};
use crate::Ctx;
use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::volume_service_client::VolumeServiceClient;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Make a new volume: a sparse origin file (or an existing one) plus its store.
    ///
    /// With --from, the volume is a clone of another volume's snapshot (VOLUME@SNAPSHOT) or
    /// of its current contents (VOLUME): usable at once, its data copied in the background
    /// (`volume show` follows the hydration, --wait waits for it). Until the hydration ends
    /// the source snapshot and volume cannot be deleted (exit 5).
    Create(CreateArgs),
    /// List the agent's volumes.
    List,
    /// Show one volume, with its store usage.
    Show { name: String },
    /// Grow a volume to SIZE: its origin and, in proportion, its store.
    ///
    /// Snapshots keep the size they were taken with; NBD clients see the new size when they
    /// next connect. A smaller SIZE is refused (exit 4), as is one beyond what the store can
    /// grow to in place (8 times the size it was made with), and an origin attached as a ublk
    /// device (exit 5: detach it first).
    Resize {
        /// The volume's name.
        name: String,
        /// The new size, at least the current one: 10G, 512MiB, 1073741824 (as for create).
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Bring back a volume that stopped taking writes (`volume show` prints `state: refusing
    /// writes until reopened`), without restarting the agent.
    ///
    /// Its state is rebuilt from its files as on a start; NBD clients and ublk devices stay
    /// attached. Every flushed write is kept; writes never flushed may read as at the last
    /// flush. Refused (exit 5) for a volume that is not failed; if its files still fail, the
    /// volume stays failed and the error says why. A volume stopped by a full host filesystem
    /// is also reopened by the agent itself once there is space.
    Reopen {
        /// The volume's name.
        name: String,
    },
    /// Delete a volume, its store and (if the agent made it) its origin file.
    Delete {
        name: String,
        /// Delete even if the volume still has snapshots (otherwise refused, exit 5).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Volume name: 1-63 bytes of [A-Za-z0-9._-], not starting with '.' or '-'.
    name: String,
    /// Origin size, e.g. 10G, 512MiB, 1073741824. Required unless --origin or --from is given
    /// (a clone defaults to its source's size and may be larger).
    #[arg(long, value_parser = parse_size, required_unless_present_any = ["origin", "from"])]
    size: Option<u64>,
    /// Copy unit, a power of two from 4K to 1M [agent default: 64K].
    #[arg(long, value_parser = parse_chunk_size)]
    chunk_size: Option<u32>,
    /// An existing file or block device on the agent's machine to use as the origin.
    #[arg(long)]
    origin: Option<PathBuf>,
    /// Store size [agent default: the origin's size plus 1/8 plus 16 MiB].
    #[arg(long, value_parser = parse_size)]
    store_size: Option<u64>,
    /// What a write needing a copy does when the store is full.
    #[arg(long, value_enum)]
    store_full_policy: Option<Policy>,
    /// How the agent opens the origin: through the page cache (buffered, the default), or
    /// with O_DIRECT like qemu's cache=none (direct: the filesystem must support O_DIRECT and
    /// the size be a multiple of 4096). Fixed for the volume's life.
    #[arg(long, value_enum)]
    origin_cache: Option<OriginCacheArg>,
    /// Make a clone of VOLUME@SNAPSHOT, or of VOLUME's current contents.
    #[arg(long, value_name = "VOLUME[@SNAPSHOT]", value_parser = crate::hydration::parse_source, conflicts_with = "origin")]
    from: Option<pb::VolumeSource>,
    /// With --from: wait until the clone's data is all copied, with a progress bar.
    #[arg(long, requires = "from")]
    wait: bool,
    /// A label kept with the volume and shown by `volume show` (repeatable; fixed at creation).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OriginCacheArg {
    /// Through the host's page cache; flushes are journaled.
    Buffered,
    /// With O_DIRECT; a flush is the device's cache flush.
    Direct,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Policy {
    /// The write fails with ENOSPC and nothing changes.
    Error,
    /// The oldest snapshots are invalidated until the copy fits.
    InvalidateOldest,
}

pub async fn run(ctx: &Ctx, cmd: VolumeCommand) -> Result<()> {
    let mut client = VolumeServiceClient::new(ctx.channel.clone());
    match cmd {
        VolumeCommand::Create(a) => {
            let origin_path = match &a.origin {
                // The agent's working directory is not ours: send an absolute path.
                Some(p) => std::path::absolute(p)
                    .with_context(|| format!("cannot resolve {}", p.display()))?
                    .display()
                    .to_string(),
                None => String::new(),
            };
            let req = pb::CreateVolumeRequest {
                name: a.name.clone(),
                size_bytes: a.size.unwrap_or(0),
                chunk_size_bytes: a.chunk_size.unwrap_or(0),
                origin_path,
                store_size_bytes: a.store_size.unwrap_or(0),
                store_full_policy: match a.store_full_policy {
                    None => pb::StoreFullPolicy::Unspecified,
                    Some(Policy::Error) => pb::StoreFullPolicy::Error,
                    Some(Policy::InvalidateOldest) => pb::StoreFullPolicy::InvalidateOldest,
                } as i32,
                source: a.from.clone(),
                labels: a.labels.iter().cloned().collect(),
                origin_cache: match a.origin_cache {
                    None | Some(OriginCacheArg::Buffered) => pb::OriginCache::Buffered,
                    Some(OriginCacheArg::Direct) => pb::OriginCache::Direct,
                } as i32,
            };
            let mut v = client
                .create_volume(req)
                .await
                .map_err(rpc(format!("cannot create volume {:?}", a.name)))?
                .into_inner();
            if let (true, Some(h)) = (a.wait, v.hydration.clone()) {
                v = crate::hydration::wait(ctx, &a.name, &h).await?;
            }
            show(ctx.format, &v)
        }
        VolumeCommand::List => {
            let vols = client
                .list_volumes(pb::ListVolumesRequest {})
                .await
                .map_err(rpc("cannot list volumes"))?
                .into_inner()
                .volumes;
            match ctx.format {
                Format::Json => output::print_json(&serde_json::json!({
                    "volumes": vols.iter().map(output::volume_json).collect::<Vec<_>>()
                })),
                Format::Table => list_table(&vols).print(),
            }?;
            Ok(())
        }
        VolumeCommand::Show { name } => {
            let v = get(&mut client, &name).await?;
            show(ctx.format, &v)
        }
        VolumeCommand::Resize { name, size } => {
            let v = client
                .resize_volume(pb::ResizeVolumeRequest {
                    name: name.clone(),
                    size_bytes: size,
                })
                .await
                .map_err(rpc(format!("cannot resize volume {name:?}")))?
                .into_inner();
            show(ctx.format, &v)
        }
        VolumeCommand::Reopen { name } => {
            let v = client
                .reopen_volume(pb::ReopenVolumeRequest { name: name.clone() })
                .await
                .map_err(rpc(format!("cannot reopen volume {name:?}")))?
                .into_inner();
            show(ctx.format, &v)
        }
        VolumeCommand::Delete { name, force } => {
            client
                .delete_volume(pb::DeleteVolumeRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(rpc(format!("cannot delete volume {name:?}")))?;
            match ctx.format {
                Format::Json => output::print_json(&serde_json::json!({})),
                Format::Table => output::print_line(&format!("deleted volume {name}")),
            }?;
            Ok(())
        }
    }
}

pub async fn get(
    client: &mut VolumeServiceClient<tonic::transport::Channel>,
    name: &str,
) -> Result<pb::Volume> {
    Ok(client
        .get_volume(pb::GetVolumeRequest {
            name: name.to_string(),
        })
        .await
        .map_err(rpc(format!("cannot get volume {name:?}")))?
        .into_inner())
}

fn list_table(vols: &[pb::Volume]) -> Table {
    let mut t = Table::new(&[
        ("NAME", false),
        ("SIZE", true),
        ("CHUNK", true),
        ("STORE", true),
        ("DATA", true),
        ("FREE", true),
        ("SNAPSHOTS", true),
        ("POLICY", false),
        ("HYDRATED", true),
    ]);
    for v in vols {
        t.row(vec![
            v.name.clone(),
            human(v.size_bytes),
            human(v.chunk_size_bytes.into()),
            human(v.store_size_bytes),
            human(v.store_data_bytes),
            human(v.store_free_bytes),
            v.snapshot_count.to_string(),
            policy_word(v.store_full_policy),
            crate::hydration::column(v.hydration.as_ref()),
        ]);
    }
    t
}

/// `key=value` pairs in key order, or "-".
fn labels_detail(v: &pb::Volume) -> String {
    let mut pairs: Vec<String> = v.labels.iter().map(|(k, l)| format!("{k}={l}")).collect();
    pairs.sort();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(", ")
    }
}

fn show(format: Format, v: &pb::Volume) -> Result<()> {
    match format {
        Format::Json => output::print_json(&output::volume_json(v)),
        Format::Table => {
            let mut fields = vec![
                ("name", v.name.clone()),
                (
                    "rollback merge",
                    v.merge.as_ref().map_or_else(
                        || "-".into(),
                        |m| {
                            format!(
                                "to {}: {} of {} chunks",
                                m.snapshot, m.merged_chunks, m.total_chunks
                            )
                        },
                    ),
                ),
                (
                    "clone hydration",
                    crate::hydration::detail(v.hydration.as_ref()),
                ),
                ("uuid", v.uuid.clone()),
                (
                    "state",
                    if v.failure.is_empty() {
                        "healthy".to_string()
                    } else {
                        format!("refusing writes until reopened: {}", v.failure)
                    },
                ),
                ("size", bytes_detail(v.size_bytes)),
                ("chunk size", bytes_detail(v.chunk_size_bytes.into())),
                ("store size", bytes_detail(v.store_size_bytes)),
                ("store used", bytes_detail(v.store_used_bytes)),
                ("  data", bytes_detail(v.store_data_bytes)),
                ("  metadata", bytes_detail(v.store_metadata_bytes)),
                ("  journal", bytes_detail(v.store_journal_bytes)),
                ("store free", bytes_detail(v.store_free_bytes)),
                ("snapshots", v.snapshot_count.to_string()),
                ("exceptions", v.exception_count.to_string()),
                ("reclaim pending", v.reclaim_pending.to_string()),
                ("store-full policy", policy_word(v.store_full_policy)),
                ("origin cache", origin_cache_word(v.origin_cache)),
                (
                    "snapshot policy",
                    v.policy
                        .as_ref()
                        .map_or_else(|| "-".into(), crate::policy::summary),
                ),
            ];
            // One line per mirror, in the order they were set.
            fields.extend(
                v.mirrors
                    .iter()
                    .map(|m| ("mirror", crate::mirror::summary(m))),
            );
            if v.mirrors.is_empty() {
                fields.push(("mirror", "-".into()));
            }
            fields.extend([
                ("origin", v.origin_path.clone()),
                ("store", v.store_path.clone()),
                ("nbd export", v.name.clone()),
                ("labels", labels_detail(v)),
            ]);
            output::print_details(&fields)
        }
    }?;
    Ok(())
}
