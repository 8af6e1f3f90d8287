//! Origin write throughput at the store level against the number of snapshots: 64 KiB writes
//! over a 256 MiB origin, (a) each the first write to its chunk after the latest snapshot (one
//! copy-out plus one commit per write) and (b) overwrites of chunks already copied (no copy),
//! with 1, 16, 64 and 1,000 snapshots; plus the same writes to a plain file as a baseline.
//!
//! Files live in $MULTISNAP_BENCH_DIR, else the system temp dir. Real files throughout: unlike
//! `index_scale`, nothing is discarded here.

use anyhow::Result;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use multisnap_bench::{bench_dir, fill};
use multisnap_store::{BlockDev, CreateOptions, FileDev, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const CHUNK: u64 = 64 * 1024;
const WRITE: usize = 64 * 1024;
const ORIGIN: u64 = 256 << 20;
/// Sparse; only copied chunks and metadata take disk space.
const STORE: u64 = 32 << 30;
const FILL: usize = 4 << 20;
const SNAPSHOT_COUNTS: [u64; 4] = [1, 16, 64, 1000];

struct Fixture {
    _dir: TempDir,
    store: Store,
    chunks: u64,
    /// Next chunk for a copying write; every chunk from here on is uncopied since the latest
    /// snapshot.
    cursor: u64,
    snapshots_made: u64,
}

impl Fixture {
    /// A store with `snapshots` snapshots. Between snapshots a random 512 KiB range is
    /// overwritten, so the index holds exceptions for many snapshots, as it would in use.
    fn new(snapshots: u64) -> Result<Fixture> {
        let dir = bench_dir()?;
        let origin = Arc::new(FileDev::create_sparse(&dir.path().join("origin"), ORIGIN)?);
        fill(&*origin, ORIGIN, 0xa5)?;
        let dev = Arc::new(FileDev::create_sparse(&dir.path().join("store"), STORE)?);
        let store = Store::create(origin, dev, &CreateOptions::default())?;
        let chunks = ORIGIN / CHUNK;
        let mut rng = StdRng::seed_from_u64(snapshots);
        let between = vec![0x5au8; 8 * CHUNK as usize];
        for i in 1..=snapshots {
            store.create_snapshot(&format!("s{i}"))?;
            if i < snapshots {
                let at = rng.gen_range(0..chunks - 8) * CHUNK;
                store.write_origin(at, &between)?;
            }
        }
        Ok(Fixture {
            _dir: dir,
            store,
            chunks,
            cursor: 0,
            snapshots_made: snapshots,
        })
    }

    /// Starts a new copy pass: a fresh snapshot makes every chunk need a copy again.
    fn new_pass(&mut self) -> Result<()> {
        self.snapshots_made += 1;
        self.store
            .create_snapshot(&format!("s{}", self.snapshots_made))?;
        self.cursor = 0;
        Ok(())
    }

    /// `iters` writes, each the first to its chunk since the latest snapshot. Snapshot
    /// creation between passes is not timed.
    fn copying_writes(&mut self, iters: u64, data: &[u8]) -> Result<Duration> {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            if self.cursor == self.chunks {
                self.new_pass()?;
            }
            let copies = self.store.stats().copies_total;
            let started = Instant::now();
            self.store.write_origin(self.cursor * CHUNK, data)?;
            timed += started.elapsed();
            anyhow::ensure!(
                self.store.stats().copies_total == copies + 1,
                "a first write after a snapshot must copy exactly once"
            );
            self.cursor += 1;
        }
        Ok(timed)
    }

    /// Copies every chunk not yet copied since the latest snapshot, in large writes (shared
    /// commits), so that later writes need no copy.
    fn copy_the_rest(&mut self) -> Result<()> {
        let data = vec![0x3cu8; FILL];
        let mut off = self.cursor * CHUNK;
        // Up to the next FILL boundary in chunk-sized writes, then FILL-sized ones.
        while off < ORIGIN && !off.is_multiple_of(FILL as u64) {
            self.store.write_origin(off, &data[..CHUNK as usize])?;
            off += CHUNK;
        }
        while off < ORIGIN {
            self.store.write_origin(off, &data)?;
            off += FILL as u64;
        }
        self.cursor = self.chunks;
        Ok(())
    }

    fn overwrites(&mut self, iters: u64, start: &mut u64, data: &[u8]) -> Result<Duration> {
        let copies = self.store.stats().copies_total;
        let started = Instant::now();
        for _ in 0..iters {
            self.store.write_origin(*start * CHUNK, data)?;
            *start = (*start + 1) % self.chunks;
        }
        let timed = started.elapsed();
        anyhow::ensure!(
            self.store.stats().copies_total == copies,
            "overwrites of copied chunks must not copy"
        );
        Ok(timed)
    }
}

fn raw_writes(
    dev: &FileDev,
    iters: u64,
    pos: &mut u64,
    data: &[u8],
    sync: bool,
) -> Result<Duration> {
    let chunks = ORIGIN / CHUNK;
    let started = Instant::now();
    for _ in 0..iters {
        dev.write_at(data, *pos * CHUNK)?;
        if sync {
            dev.flush()?;
        }
        *pos = (*pos + 1) % chunks;
    }
    Ok(started.elapsed())
}

fn origin_writes(c: &mut Criterion) {
    let data = vec![0x77u8; WRITE];
    let mut group = c.benchmark_group("origin_write_64KiB");
    group.throughput(Throughput::Bytes(WRITE as u64));

    let dir = bench_dir().expect("bench temp dir");
    let raw = FileDev::create_sparse(&dir.path().join("raw"), ORIGIN).expect("raw file");
    fill(&raw, ORIGIN, 0xa5).expect("filling the raw file");
    let mut pos = 0;
    group.bench_function("raw_file/write", |b| {
        b.iter_custom(|iters| raw_writes(&raw, iters, &mut pos, &data, false).expect("raw write"))
    });
    group.bench_function("raw_file/write+fdatasync", |b| {
        b.iter_custom(|iters| raw_writes(&raw, iters, &mut pos, &data, true).expect("raw write"))
    });
    drop(raw);
    drop(dir);

    for snapshots in SNAPSHOT_COUNTS {
        let mut fx = Fixture::new(snapshots).expect("bench store");
        group.bench_with_input(BenchmarkId::new("copy", snapshots), &snapshots, |b, _| {
            b.iter_custom(|iters| fx.copying_writes(iters, &data).expect("copying write"))
        });
        fx.copy_the_rest().expect("copying the rest");
        let mut start = 0;
        group.bench_with_input(
            BenchmarkId::new("overwrite", snapshots),
            &snapshots,
            |b, _| {
                b.iter_custom(|iters| fx.overwrites(iters, &mut start, &data).expect("overwrite"))
            },
        );
    }
    group.finish();
}

fn config() -> Criterion {
    // Ten configurations; about 7 s each plus store setup keeps the whole run to a few minutes.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = origin_writes
}
criterion_main!(benches);
