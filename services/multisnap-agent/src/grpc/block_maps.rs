//! `DeltaService.GetChangedRanges` and `GetAllocatedRanges`: a snapshot's block map, streamed
//! from `multisnap_replication::ranges` without reading any data.

use super::status::{blocking, from_replication};
use crate::volumes::Volume;
use multisnap_proto::v1 as pb;
use multisnap_replication::ranges::MapQuery;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

/// Ranges per message when the caller names no limit.
const DEFAULT_PER_MESSAGE: usize = 1024;
/// The most ranges a message carries (about 20 bytes each: well within gRPC's 4 MiB).
const MAX_PER_MESSAGE: usize = 16_384;

pub type RangesStream = Pin<Box<dyn Stream<Item = Result<pb::BlockRangesResponse, Status>> + Send>>;

/// What to map: a checked request of either RPC.
pub struct MapRequest {
    pub base: Option<String>,
    pub target: String,
    pub starting_offset: u64,
    pub max_results: u32,
}

/// Checks the request (errors are the call's status, before any message) and streams the
/// map from a blocking task; a client that goes away stops the walk at its next message.
pub async fn stream_map(v: Arc<Volume>, r: MapRequest) -> Result<RangesStream, Status> {
    let per_message = match r.max_results {
        0 => DEFAULT_PER_MESSAGE,
        n => (n as usize).min(MAX_PER_MESSAGE),
    };
    let vol = v.clone();
    let query = blocking(move || {
        MapQuery::new(&vol.store, r.base.as_deref(), &r.target, r.starting_offset)
            .map_err(from_replication)
    })
    .await?;
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let message = |ranges: Vec<pb::BlockRange>| pb::BlockRangesResponse {
            ranges,
            snapshot_size_bytes: query.target.size,
            chunk_size_bytes: v.store.chunk_size(),
        };
        let mut batch = Vec::with_capacity(per_message);
        let mut sent_any = false;
        for range in query.ranges(&v.store) {
            match range {
                Ok(r) => batch.push(pb::BlockRange {
                    offset: r.offset,
                    length: r.len,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "block map failed");
                    let _ = tx.blocking_send(Err(from_replication(e)));
                    return;
                }
            }
            if batch.len() == per_message {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(per_message));
                if tx.blocking_send(Ok(message(full))).is_err() {
                    return; // the client went away
                }
                sent_any = true;
            }
        }
        // Always one message at least, so the client learns the size of an empty map.
        if !batch.is_empty() || !sent_any {
            let _ = tx.blocking_send(Ok(message(batch)));
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
