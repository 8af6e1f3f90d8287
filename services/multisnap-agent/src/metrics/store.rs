//! Store statistics, read at scrape time from each volume's store.

use crate::volumes::Volumes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::sync::Arc;

pub(super) struct StoreCollector {
    pub(super) volumes: Arc<Volumes>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCollector").finish_non_exhaustive()
    }
}

/// One volume's numbers, taken under the store's lock once per scrape so every series of a
/// volume comes from the same instant.
struct Sample {
    volume: String,
    stats: multisnap_store::StoreStats,
    reclaim_scanned: u64,
    /// `[exported bytes, applied bytes, complete, incomplete, failed]` (see DeltaCounters).
    deltas: [u64; 5],
    receiving: bool,
    failed: bool,
    merge: Option<multisnap_store::MergeProgress>,
    hydration: Option<multisnap_store::HydrationProgress>,
}

enum Value {
    Counter(u64),
    CounterSeconds(f64),
    Gauge(u64),
}

/// A store metric: name without the unit and `_total` suffixes the encoder appends.
struct Def {
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    get: fn(&Sample) -> Value,
}

fn store_defs() -> Vec<Def> {
    use Value::{Counter as C, Gauge as G};
    let d = |name, unit, help, get| Def {
        name,
        unit,
        help,
        get,
    };
    let b = || Some(Unit::Bytes);
    vec![
        d("multisnap_cow_copies", None, "Origin chunks copied to the store before being overwritten (at most one per chunk whatever the number of snapshots).",
            |s| C(s.stats.copies_total)),
        d("multisnap_cow_copied", b(), "Bytes copied from the origin to the store.",
            |s| C(s.stats.bytes_copied_total)),
        d("multisnap_cow_kernel_copies", None, "Of those copies, the ones the kernel made since the volume was opened (copy_file_range between origin and store files of one filesystem; XFS and btrfs share the extent).",
            |s| C(s.stats.kernel_copies_total)),
        d("multisnap_cow_parked_writes", None, "Origin writes acknowledged before the commit of their copy-outs since the volume was opened (parked in memory until it lands, then written to the origin).",
            |s| C(s.stats.parked_writes_total)),
        d("multisnap_cow_parked_written", b(), "Bytes of those parked writes.",
            |s| C(s.stats.parked_bytes_total)),
        d("multisnap_cow_parked", b(), "Bytes of origin writes parked now, acknowledged but not yet in the origin.",
            |s| G(s.stats.parked_bytes)),
        d("multisnap_exceptions", None, "Exceptions in the store's index (chunk ranges kept for snapshots).",
            |s| G(s.stats.exceptions)),
        d("multisnap_snapshots", None, "Live snapshots of the volume.",
            |s| G(s.stats.snapshots)),
        d("multisnap_snapshots_invalidated", None, "Snapshots dropped by the invalidate-oldest store-full policy.",
            |s| C(s.stats.invalidated_total)),
        d("multisnap_cache_hits", None, "Index node lookups answered from the cache.",
            |s| C(s.stats.cache.hits)),
        d("multisnap_cache_misses", None, "Index node lookups that read the store.",
            |s| C(s.stats.cache.misses)),
        d("multisnap_cache_evictions", None, "Index nodes evicted from the cache.",
            |s| C(s.stats.cache.evictions)),
        d("multisnap_cache_nodes", None, "Index nodes in the cache.",
            |s| G(s.stats.cache.nodes)),
        d("multisnap_cache_capacity_nodes", None, "Index nodes the cache may hold.",
            |s| G(s.stats.cache.capacity_nodes)),
        d("multisnap_cache", b(), "Memory charged to the index nodes in the cache.",
            |s| G(s.stats.cache.nodes * multisnap_store::pdata::cache::NODE_MEMORY as u64)),
        d("multisnap_cache_capacity", b(), "Memory the index cache may use.",
            |s| G(s.stats.cache.capacity_nodes * multisnap_store::pdata::cache::NODE_MEMORY as u64)),
        d("multisnap_location_cache_hits", None, "Snapshot chunk lookups answered from the location cache, without descending the index.",
            |s| C(s.stats.locations.hits)),
        d("multisnap_location_cache_misses", None, "Snapshot chunk lookups that descended the index.",
            |s| C(s.stats.locations.misses)),
        d("multisnap_location_cache", b(), "Memory of the location cache (taken from the configured cache size).",
            |s| G(s.stats.locations.bytes)),
        d("multisnap_store_size", b(), "Size of the COW store.",
            |s| G(s.stats.store_bytes)),
        d("multisnap_store_used", b(), "Store space in use: data, metadata and the journal's reservation.",
            |s| G(s.stats.used_bytes)),
        d("multisnap_store_data", b(), "Store space holding data: copies preserved for snapshots and writable snapshots' own chunks.",
            |s| G(s.stats.data_bytes)),
        d("multisnap_store_metadata", b(), "Store space holding metadata: superblocks, allocator bitmaps and index nodes.",
            |s| G(s.stats.metadata_bytes)),
        d("multisnap_store_free", b(), "Store space available for new copies, in whole free chunks.",
            |s| G(s.stats.free_chunks * u64::from(s.stats.chunk_size))),
        d("multisnap_origin_size", b(), "Size of the origin volume.",
            |s| G(s.stats.origin_size)),
        d("multisnap_chunk_size", b(), "Copy-on-write unit of the volume.",
            |s| G(u64::from(s.stats.chunk_size))),
        d("multisnap_commits", None, "Store transactions committed.",
            |s| C(s.stats.commits.count)),
        d("multisnap_commit", Some(Unit::Seconds), "Time spent committing store transactions; divide by multisnap_commits_total for the mean commit latency.",
            |s| Value::CounterSeconds(s.stats.commits.seconds_total)),
        d("multisnap_journal_size", b(), "Size of the origin write journal in the store (0: the volume has none).",
            |s| G(s.stats.journal_size_bytes)),
        d("multisnap_journal_batches", None, "Volume flushes made durable by one journal batch instead of an origin sync.",
            |s| C(s.stats.journal_batches_total)),
        d("multisnap_journal_written", b(), "Origin bytes written to the journal by those batches.",
            |s| C(s.stats.journal_written_bytes_total)),
        d("multisnap_journal_discards", None, "Times a flush too big for one batch synced the origin itself and emptied the journal.",
            |s| C(s.stats.journal_discards_total)),
        d("multisnap_journal_retired_epochs", None, "Journal halves freed after the background origin sync that follows a filled half.",
            |s| C(s.stats.journal_retired_total)),
        d("multisnap_journal_waits", None, "Flushes that found both journal halves in use and waited for the origin sync (the journal is too small for the write rate).",
            |s| C(s.stats.journal_waits_total)),
        d("multisnap_store_generation", None, "Generation of the last committed superblock.",
            |s| G(s.stats.generation)),
        d("multisnap_reclaim_pending_snapshots", None, "Deleted snapshots whose space is still being reclaimed.",
            |s| G(s.stats.reclaim_pending)),
        d("multisnap_reclaim_scanned_chunks", None, "Origin chunk the reclamation scan has reached (moves while reclamation progresses).",
            |s| G(s.reclaim_scanned)),
        d("multisnap_reclaimed_chunks", None, "Store chunks freed by reclamation since the agent started.",
            |s| C(s.stats.chunks_reclaimed_total)),
        d("multisnap_delta_exported", b(), "Delta stream bytes sent by ExportDelta since the agent started.",
            |s| C(s.deltas[0])),
        d("multisnap_delta_applied", b(), "Delta stream bytes received by ApplyDelta since the agent started.",
            |s| C(s.deltas[1])),
        d("multisnap_delta_applies_completed", None, "ApplyDelta calls that created their snapshot.",
            |s| C(s.deltas[2])),
        d("multisnap_delta_applies_interrupted", None, "ApplyDelta calls whose stream ended before its trailer.",
            |s| C(s.deltas[3])),
        d("multisnap_delta_applies_failed", None, "ApplyDelta calls refused or failed (corrupt stream, wrong volume or base, store errors).",
            |s| C(s.deltas[4])),
        d("multisnap_volume_failed", None, "1 while the volume refuses writes and flushes after a failed write of its journal or metadata, flush or commit, until it is reopened: by the agent itself once a full host filesystem has room again, else by ReopenVolume (GetVolume says why).",
            |s| G(u64::from(s.failed))),
        d("multisnap_delta_apply_in_progress", None, "1 while the volume holds an unfinished delta apply (running, or kept for resumption).",
            |s| G(u64::from(s.receiving))),
        d("multisnap_revert_merge_in_progress", None, "1 while a rollback (RevertVolume) is being merged into the volume's origin.",
            |s| G(u64::from(s.merge.is_some()))),
        d("multisnap_revert_merged_chunks", None, "Origin chunks the rollback's merge has passed (it walks the origin in address order); 0 when none runs.",
            |s| G(s.merge.as_ref().map_or(0, |m| m.cursor))),
        d("multisnap_revert_total_chunks", None, "Origin chunks the rollback's merge walks (all of the origin's); 0 when none runs.",
            |s| G(s.merge.as_ref().map_or(0, |m| m.chunk_count))),
        d("multisnap_revert_copied_chunks", None, "Chunks rollbacks copied back into the origin since the agent started.",
            |s| C(s.stats.chunks_merged_total)),
        d("multisnap_clone_hydration_in_progress", None, "1 while the volume is a clone still copying its source snapshot's data.",
            |s| G(u64::from(s.hydration.is_some()))),
        d("multisnap_clone_hydrated_chunks", None, "Chunks of the source the clone's hydration has passed (it walks them in address order); 0 when none runs.",
            |s| G(s.hydration.as_ref().map_or(0, |h| h.cursor))),
        d("multisnap_clone_total_chunks", None, "Chunks of the source snapshot the clone's hydration walks; 0 when none runs.",
            |s| G(s.hydration.as_ref().map_or(0, |h| h.chunk_count))),
        d("multisnap_clone_source_attached", None, "1 while a hydrating clone is wired to its source volume (0: the source is not loaded and the hydration cannot proceed).",
            |s| G(u64::from(s.hydration.as_ref().is_some_and(|h| h.attached)))),
        d("multisnap_clone_copied_chunks", None, "Chunks clones copied from their sources since the agent started.",
            |s| C(s.stats.chunks_hydrated_total)),
        d("multisnap_clone_hydrated", b(), "Bytes of source data clones wrote into their origins since the agent started (blocks of zeros are not written).",
            |s| C(s.stats.bytes_hydrated_total)),
    ]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabel {
    volume: String,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let _span = tracing::debug_span!("collect_store_metrics").entered();
        let samples: Vec<Sample> = self
            .volumes
            .list()
            .iter()
            .map(|v| Sample {
                volume: v.name.clone(),
                stats: v.store.stats(),
                reclaim_scanned: v.store.reclaim_progress().scanned_chunk,
                merge: v.store.merge_progress(),
                hydration: v.store.hydration(),
                deltas: {
                    let d = &v.deltas;
                    let get = |a: &std::sync::atomic::AtomicU64| {
                        a.load(std::sync::atomic::Ordering::Relaxed)
                    };
                    [
                        get(&d.exported_bytes),
                        get(&d.applied_bytes),
                        get(&d.applies_complete),
                        get(&d.applies_incomplete),
                        get(&d.applies_failed),
                    ]
                },
                receiving: v.store.receive_pending(),
                failed: v.store.failure().is_some(),
            })
            .collect();
        for def in store_defs() {
            let Some(first) = samples.first() else { break };
            let ty = match (def.get)(first) {
                Value::Counter(_) | Value::CounterSeconds(_) => MetricType::Counter,
                Value::Gauge(_) => MetricType::Gauge,
            };
            let mut family =
                encoder.encode_descriptor(def.name, def.help, def.unit.as_ref(), ty)?;
            for s in &samples {
                let labels = VolumeLabel {
                    volume: s.volume.clone(),
                };
                let mut m = family.encode_family(&labels)?;
                match (def.get)(s) {
                    Value::Counter(v) => m.encode_counter::<VolumeLabel, u64, f64>(&v, None)?,
                    Value::CounterSeconds(v) => {
                        m.encode_counter::<VolumeLabel, f64, f64>(&v, None)?
                    }
                    Value::Gauge(v) => m.encode_gauge(&v)?,
                }
            }
        }
        // Latency histograms: the store keeps the buckets, so these are read at scrape time
        // like everything above.
        type Pick = fn(&Sample) -> &multisnap_store::LatencyStats;
        let histograms: [(&str, &str, Pick); 2] = [
            ("multisnap_commit_duration",
             "Latency of store commits (write new metadata, flush, flip the superblock, flush).",
             |s| &s.stats.commits),
            ("multisnap_flush_duration",
             "Latency of volume flushes (fdatasync of the origin, plus a commit when metadata changed since the last one). \
              NBD flush requests that arrive while one runs share it: compare the count with multisnap_nbd_requests_total{op=\"flush\"}.",
             |s| &s.stats.flushes),
        ];
        for (name, help, get) in histograms {
            if samples.is_empty() {
                break;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in &samples {
                let labels = VolumeLabel {
                    volume: s.volume.clone(),
                };
                let h = get(s);
                // The last bucket's bound is +Inf, which both encoders print as "+Inf".
                let mut m = family.encode_family(&labels)?;
                m.encode_histogram::<VolumeLabel>(h.seconds_total, h.count, &h.buckets, None)?;
            }
        }
        Ok(())
    }
}
