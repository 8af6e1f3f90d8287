//! `multisnap snapshot diff` and `snapshot map`: a snapshot's block map (DeltaService's
//! GetChangedRanges and GetAllocatedRanges), printed as byte ranges.

use crate::exit::rpc;
use crate::output::{self, Format, Table};
use crate::size::human;
use crate::Ctx;
use anyhow::Result;
use multisnap_proto::v1 as pb;
use multisnap_proto::v1::delta_service_client::DeltaServiceClient;
use tonic::Streaming;

/// Which map to print.
pub enum Map {
    Changed { base: String, target: String },
    Allocated { snapshot: String },
}

pub async fn run(ctx: &Ctx, volume: String, map: Map, starting_offset: u64) -> Result<()> {
    let mut client = DeltaServiceClient::new(ctx.channel.clone());
    let (what, stream) = match map {
        Map::Changed { base, target } => {
            let what = format!("what changed in {volume} from {base} to {target}");
            let reply = client
                .get_changed_ranges(pb::GetChangedRangesRequest {
                    volume: volume.clone(),
                    base_snapshot: base,
                    target_snapshot: target,
                    starting_offset,
                    max_results: 0,
                })
                .await
                .map_err(rpc(format!("cannot list {what}")))?;
            (what, reply.into_inner())
        }
        Map::Allocated { snapshot } => {
            let what = format!("the allocated ranges of {volume}@{snapshot}");
            let reply = client
                .get_allocated_ranges(pb::GetAllocatedRangesRequest {
                    volume: volume.clone(),
                    snapshot,
                    starting_offset,
                    max_results: 0,
                })
                .await
                .map_err(rpc(format!("cannot list {what}")))?;
            (what, reply.into_inner())
        }
    };
    let map = collect(stream, &what).await?;
    print(ctx.format, &map)
}

struct Collected {
    ranges: Vec<pb::BlockRange>,
    size: u64,
    chunk: u32,
}

async fn collect(mut stream: Streaming<pb::BlockRangesResponse>, what: &str) -> Result<Collected> {
    let mut map = Collected {
        ranges: Vec::new(),
        size: 0,
        chunk: 0,
    };
    while let Some(m) = stream
        .message()
        .await
        .map_err(rpc(format!("cannot list {what}")))?
    {
        map.size = m.snapshot_size_bytes;
        map.chunk = m.chunk_size_bytes;
        map.ranges.extend(m.ranges);
    }
    Ok(map)
}

fn print(format: Format, map: &Collected) -> Result<()> {
    let total: u64 = map.ranges.iter().map(|r| r.length).sum();
    match format {
        Format::Json => output::print_json(&serde_json::json!({
            "ranges": map.ranges.iter().map(|r| serde_json::json!({
                "offset": r.offset,
                "length": r.length,
            })).collect::<Vec<_>>(),
            "totalBytes": total,
            "snapshotSizeBytes": map.size,
            "chunkSizeBytes": map.chunk,
        })),
        Format::Table => {
            let mut t = Table::new(&[("OFFSET", true), ("LENGTH", true), ("SIZE", true)]);
            for r in &map.ranges {
                t.row(vec![
                    r.offset.to_string(),
                    r.length.to_string(),
                    human(r.length),
                ]);
            }
            t.print()?;
            let share = if map.size == 0 {
                0.0
            } else {
                100.0 * total as f64 / map.size as f64
            };
            output::print_line(&format!(
                "{} range(s), {} of {} ({share:.2}%)",
                map.ranges.len(),
                human(total),
                human(map.size)
            ))
        }
    }?;
    Ok(())
}
