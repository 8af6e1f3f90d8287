//! What a snapshot read costs over an origin read inside the store, without NBD, the network
//! stack or a second process in the way: random 4 KiB reads over a 256 MiB origin whose every
//! other chunk was overwritten after the newest of N snapshots (so half of that snapshot's
//! reads go to the store, half to the origin), for N = 1 and 1,000, from the page cache; plus
//! the same reads of a plain file.
//!
//! Files live in $MULTISNAP_BENCH_DIR, else the system temp dir.

use anyhow::{Context, Result};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use multisnap_bench::{bench_dir, fill};
use multisnap_store::{BlockDev, CreateOptions, FileDev, SnapshotId, Store, View};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CHUNK: u64 = 64 * 1024;
const READ: usize = 4096;
const ORIGIN: u64 = 256 << 20;
const STORE: u64 = 32 << 30;
const SNAPSHOT_COUNTS: [u64; 2] = [1, 1000];

/// Random 4 KiB-aligned offsets over the origin, the same sequence for every case.
struct Offsets(u64);

impl Offsets {
    fn next(&mut self) -> u64 {
        // xorshift64: cheap next to the reads it feeds
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (ORIGIN / READ as u64)) * READ as u64
    }
}

fn timed_reads(
    iters: u64,
    offsets: &mut Offsets,
    mut read: impl FnMut(u64) -> Result<()>,
) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        read(offsets.next()).expect("read");
    }
    started.elapsed()
}

/// A store with `snapshots` snapshots, a few chunks changed between each, and every other
/// chunk overwritten after the newest. Returns the store and the newest snapshot.
fn store_with(dir: &TempDir, snapshots: u64) -> Result<(Store, SnapshotId)> {
    let origin = Arc::new(FileDev::create_sparse(&dir.path().join("origin"), ORIGIN)?);
    fill(&*origin, ORIGIN, 0xa5)?;
    let dev = Arc::new(FileDev::create_sparse(&dir.path().join("store"), STORE)?);
    let store = Store::create(origin, dev, &CreateOptions::default())?;
    let chunks = ORIGIN / CHUNK;
    let between = vec![0x5au8; 8 * CHUNK as usize];
    let mut newest = None;
    for i in 1..=snapshots {
        newest = Some(store.create_snapshot(&format!("s{i}"))?.id);
        if i < snapshots {
            store.write_origin((i * 37 % (chunks - 8)) * CHUNK, &between)?;
        }
    }
    let data = vec![0x3cu8; CHUNK as usize];
    for chunk in (0..chunks).step_by(2) {
        store.write_origin(chunk * CHUNK, &data)?;
    }
    store.flush()?;
    Ok((store, newest.context("no snapshot made")?))
}

fn snapshot_reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_4KiB");
    group.throughput(Throughput::Bytes(READ as u64));
    let mut buf = vec![0u8; READ];

    let dir = bench_dir().expect("bench temp dir");
    let raw = FileDev::create_sparse(&dir.path().join("raw"), ORIGIN).expect("raw file");
    fill(&raw, ORIGIN, 0xa5).expect("filling the raw file");
    let mut offsets = Offsets(1);
    group.bench_function("raw_file", |b| {
        b.iter_custom(|iters| {
            timed_reads(iters, &mut offsets, |off| Ok(raw.read_at(&mut buf, off)?))
        })
    });
    drop(raw);

    for snapshots in SNAPSHOT_COUNTS {
        let dir = bench_dir().expect("bench temp dir");
        let (store, snap) = store_with(&dir, snapshots).expect("bench store");
        for (name, view) in [("origin", View::Origin), ("snapshot", View::Snapshot(snap))] {
            let mut offsets = Offsets(1);
            group.bench_with_input(BenchmarkId::new(name, snapshots), &snapshots, |b, _| {
                b.iter_custom(|iters| {
                    timed_reads(iters, &mut offsets, |off| {
                        Ok(store.read(view, off, &mut buf)?)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = snapshot_reads
}
criterion_main!(benches);
