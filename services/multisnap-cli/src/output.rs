//! Rendering for people (aligned tables) and scripts (one JSON document per command).
//!
//! JSON field names are the proto's JSON names (lowerCamelCase) so documents line up with
//! what grpcurl or any proto3 JSON client prints. Unlike canonical proto3 JSON, 64-bit
//! integers are JSON numbers (sizes stay far below 2^53, and `jq` can do arithmetic on
//! them), enums are their proto names, timestamps RFC 3339 strings, and fields at their
//! default value are still printed so scripts never have to guess.

use crate::size::human;
use multisnap_proto::v1 as pb;
use serde_json::{json, Value};
use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document on stdout for scripts.
    Json,
}

fn policy_json(p: i32) -> Value {
    match pb::StoreFullPolicy::try_from(p) {
        Ok(p) => Value::from(p.as_str_name()),
        // Newer agent, older CLI: proto3 JSON says unknown enum values are numbers.
        Err(_) => Value::from(p),
    }
}

fn origin_cache_json(c: i32) -> Value {
    match pb::OriginCache::try_from(c) {
        Ok(c) => Value::from(c.as_str_name()),
        Err(_) => Value::from(c),
    }
}

fn state_json(s: i32) -> Value {
    match pb::SnapshotState::try_from(s) {
        Ok(s) => Value::from(s.as_str_name()),
        Err(_) => Value::from(s),
    }
}

pub fn volume_json(v: &pb::Volume) -> Value {
    json!({
        "name": v.name,
        "sizeBytes": v.size_bytes,
        "chunkSizeBytes": v.chunk_size_bytes,
        "storeSizeBytes": v.store_size_bytes,
        "storeUsedBytes": v.store_used_bytes,
        "storeDataBytes": v.store_data_bytes,
        "storeMetadataBytes": v.store_metadata_bytes,
        "storeJournalBytes": v.store_journal_bytes,
        "failure": v.failure,
        "storeFreeBytes": v.store_free_bytes,
        "snapshotCount": v.snapshot_count,
        "storeFullPolicy": policy_json(v.store_full_policy),
        "originCache": origin_cache_json(v.origin_cache),
        "originPath": v.origin_path,
        "storePath": v.store_path,
        "uuid": v.uuid,
        "exceptionCount": v.exception_count,
        "reclaimPending": v.reclaim_pending,
        "replicaOf": v.replica_of,
        "merge": v.merge.as_ref().map(merge_json),
        "hydration": v.hydration.as_ref().map(hydration_json),
        "labels": v.labels,
        "policy": v.policy.as_ref().map(crate::policy::policy_json),
        "mirror": v.mirror.as_ref().map(crate::mirror::mirror_json),
        "mirrors": v.mirrors.iter().map(crate::mirror::mirror_json).collect::<Vec<_>>(),
    })
}

pub fn hydration_json(h: &pb::Hydration) -> Value {
    json!({
        "sourceVolume": h.source_volume,
        "sourceSnapshot": h.source_snapshot,
        "hydratedChunks": h.hydrated_chunks,
        "totalChunks": h.total_chunks,
        "hydratedBytes": h.hydrated_bytes,
        "sourceAttached": h.source_attached,
    })
}

pub fn merge_json(m: &pb::MergeProgress) -> Value {
    json!({
        "snapshot": m.snapshot,
        "mergedChunks": m.merged_chunks,
        "totalChunks": m.total_chunks,
    })
}

pub fn snapshot_json(s: &pb::Snapshot) -> Value {
    let mut doc = json!({
        "id": s.id,
        "name": s.name,
        "volume": s.volume,
        "createdAt": s.created_at.as_ref().map(|t| t.to_string()),
        "writable": s.writable,
        "state": state_json(s.state),
        "nbdExport": s.nbd_export,
        "sourceSnapshotId": s.source_snapshot_id,
    });
    // An `optional` field: absent means "not computed", which is not the same as 0.
    if let Some(b) = s.exclusive_bytes {
        doc["exclusiveBytes"] = Value::from(b);
    }
    if !s.group.is_empty() {
        doc["group"] = Value::from(s.group.clone());
    }
    doc
}

pub fn print_json(doc: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, doc)?;
    writeln!(out)?;
    out.flush()
}

/// Plain text on stdout (confirmations in table mode).
pub fn print_line(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Columns padded to their widest cell; numbers-ish columns right-aligned.
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: (header, right-aligned).
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(self.render().as_bytes())?;
        out.flush()
    }
}

/// `key: value` lines for `show` commands.
pub fn print_details(fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|f| f.0.len()).max().unwrap_or(0) + 1;
    let mut out = io::stdout().lock();
    for (k, v) in fields {
        writeln!(out, "{:<width$} {v}", format!("{k}:"))?;
    }
    out.flush()
}

/// The CLI's own spelling of a policy, the one `--store-full-policy` accepts.
pub fn policy_word(p: i32) -> String {
    match pb::StoreFullPolicy::try_from(p) {
        Ok(pb::StoreFullPolicy::Unspecified) | Ok(pb::StoreFullPolicy::Error) => "error".into(),
        Ok(pb::StoreFullPolicy::InvalidateOldest) => "invalidate-oldest".into(),
        Err(_) => format!("unknown({p})"),
    }
}

/// The CLI's own spelling of an origin cache mode, the one `--origin-cache` accepts.
pub fn origin_cache_word(c: i32) -> String {
    match pb::OriginCache::try_from(c) {
        Ok(pb::OriginCache::Buffered) => "buffered".into(),
        Ok(pb::OriginCache::Direct) => "direct".into(),
        Err(_) => format!("unknown({c})"),
    }
}

pub fn state_word(s: i32) -> String {
    match pb::SnapshotState::try_from(s) {
        Ok(pb::SnapshotState::Ready) => "ready".into(),
        Ok(pb::SnapshotState::Deleting) => "deleting".into(),
        Ok(pb::SnapshotState::Invalid) => "invalid".into(),
        Ok(pb::SnapshotState::Unspecified) | Err(_) => format!("unknown({s})"),
    }
}

pub fn bytes_detail(b: u64) -> String {
    format!("{} ({b} bytes)", human(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[("NAME", false), ("SIZE", true)]);
        t.row(vec!["a".into(), "1 GiB".into()]);
        t.row(vec!["longer".into(), "64 KiB".into()]);
        assert_eq!(
            t.render(),
            "NAME      SIZE\na        1 GiB\nlonger  64 KiB\n"
        );
    }

    #[test]
    fn json_uses_proto_json_names() {
        let s = pb::Snapshot {
            id: 7,
            name: "s".into(),
            volume: "v".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            writable: true,
            state: pb::SnapshotState::Ready as i32,
            nbd_export: "v@s".into(),
            exclusive_bytes: None,
            source_snapshot_id: 3,
            size_bytes: 1 << 20,
            group: String::new(),
        };
        let j = snapshot_json(&s);
        assert_eq!(j["id"], 7);
        assert_eq!(j["nbdExport"], "v@s");
        assert_eq!(j["state"], "SNAPSHOT_STATE_READY");
        assert_eq!(j["createdAt"], "1970-01-01T00:00:00Z");
        assert!(j.get("exclusiveBytes").is_none());
        assert_eq!(j["sourceSnapshotId"], 3);
        let v = volume_json(&pb::Volume {
            store_full_policy: 2,
            origin_cache: 1,
            ..Default::default()
        });
        assert_eq!(v["storeFullPolicy"], "STORE_FULL_POLICY_INVALIDATE_OLDEST");
        assert_eq!(v["originCache"], "ORIGIN_CACHE_DIRECT");
        assert_eq!(origin_cache_word(1), "direct");
        assert_eq!(origin_cache_word(0), "buffered");
        assert_eq!(v["reclaimPending"], 0);
    }
}
