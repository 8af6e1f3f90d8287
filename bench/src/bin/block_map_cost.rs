//! What a changed-block map costs (CSI GetMetadataDelta, `multisnap snapshot diff`): a sparse
//! volume with data and older snapshots, snapshot A, a given amount of scattered 64 KiB chunks
//! rewritten, snapshot B, more writes after B; then, on a cold index (the store reopened),
//! the A -> B map exactly as the agent computes it (`multisnap_replication::ranges`), with
//! every byte read from the origin and the store counted. The map is checked against the
//! chunks the bench wrote, so a wrong answer fails the run instead of looking cheap. The
//! allocated map of B (GetMetadataAllocated) is measured the same way for comparison.
//!
//! `cargo run --release -p multisnap-bench --bin block_map_cost -- [--volume-mib 4096]
//!  [--changed-mib 64] [--dir PATH]`

use anyhow::{ensure, Result};
use clap::Parser;
use multisnap_bench::{mib, Counting};
use multisnap_replication::ranges::MapQuery;
use multisnap_store::{CreateOptions, FileDev, Store};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Volume size in MiB (a sparse origin file).
    #[arg(long, default_value_t = 4096)]
    volume_mib: u64,
    /// Data rewritten between A and B, in MiB of whole 64 KiB chunks at random places; the
    /// same amount is written before the older snapshot, between it and A, and after B.
    #[arg(long, default_value_t = 64)]
    changed_mib: u64,
    /// Directory for the files (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const CHUNK: u64 = 64 * 1024;

/// Writes random data to `chunks` (origin chunk numbers).
fn write_chunks(store: &Store, chunks: &[u64], rng: &mut StdRng) -> Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    for c in chunks {
        rng.fill(&mut buf[..]);
        store.write_origin(c * CHUNK, &buf)?;
    }
    store.flush()?;
    Ok(())
}

/// Runs one map of `query` and prints its cost; returns the chunks it lists.
fn measure(
    label: &str,
    store: &Store,
    query: &MapQuery,
    origin: &Counting<FileDev>,
    dev: &Counting<FileDev>,
) -> Result<BTreeSet<u64>> {
    let (o0, s0) = (origin.snapshot(), dev.snapshot());
    let started = Instant::now();
    let mut listed = BTreeSet::new();
    let (mut ranges, mut bytes) = (0u64, 0u64);
    for r in query.ranges(store) {
        let r = r?;
        ranges += 1;
        bytes += r.len;
        listed.extend(r.offset / CHUNK..r.end().div_ceil(CHUNK));
    }
    let took = started.elapsed();
    let (o1, s1) = (origin.snapshot(), dev.snapshot());
    let read = (o1[1] - o0[1]) + (s1[1] - s0[1]);
    println!(
        "{label}: {ranges} ranges, {} listed; read origin {} KiB in {} ops, store {} KiB in {} \
         ops = {:.4}% of the volume; {:.1} ms",
        mib(bytes),
        (o1[1] - o0[1]) >> 10,
        o1[0] - o0[0],
        (s1[1] - s0[1]) >> 10,
        s1[0] - s0[0],
        100.0 * read as f64 / store.origin_size() as f64,
        took.as_secs_f64() * 1000.0
    );
    Ok(listed)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let volume = args.volume_mib << 20;
    let per_step = ((args.changed_mib << 20) / CHUNK) as usize;
    let chunks = volume / CHUNK;
    ensure!(
        per_step > 0 && 4 * per_step as u64 <= chunks,
        "--changed-mib out of range"
    );
    let origin_path = dir.join("cbt-origin.img");
    let store_path = dir.join("cbt-store.msnap");
    let origin = Arc::new(Counting::new(FileDev::create_sparse(&origin_path, volume)?));
    let dev = Arc::new(Counting::new(FileDev::create_sparse(
        &store_path,
        volume / 4 + (256 << 20),
    )?));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        volume_name: "cbt".into(),
        ..Default::default()
    };
    let store = Store::create(origin.clone(), dev.clone(), &opts)?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut order: Vec<u64> = (0..chunks).collect();
    let started = Instant::now();
    // Each step picks its own random chunks; they may overlap earlier steps' (as real
    // workloads do), which gives the index exceptions of every age.
    let mut step = |rng: &mut StdRng| -> Vec<u64> {
        order.shuffle(rng);
        order[..per_step].to_vec()
    };
    let before = step(&mut rng);
    write_chunks(&store, &before, &mut rng)?;
    store.create_snapshot("older")?;
    let between = step(&mut rng);
    write_chunks(&store, &between, &mut rng)?;
    store.create_snapshot("a")?;
    let changed = step(&mut rng);
    write_chunks(&store, &changed, &mut rng)?;
    store.create_snapshot("b")?;
    let after = step(&mut rng);
    write_chunks(&store, &after, &mut rng)?;
    println!(
        "volume {} (sparse) in {chunks} chunks of 64 KiB; 4 x {} written at random chunks \
         (before `older`, before `a`, between `a` and `b`, after `b`) in {:.1} s",
        mib(volume),
        mib(per_step as u64 * CHUNK),
        started.elapsed().as_secs_f64()
    );

    // A cold index, as after an agent restart.
    let reopen = |store: Store| -> Result<Store> {
        store.flush()?;
        drop(store);
        Ok(Store::open(origin.clone(), dev.clone(), 64 << 20)?)
    };
    let store = reopen(store)?;
    let delta = MapQuery::new(&store, Some("a"), "b", 0)?;
    let listed = measure("delta a -> b (cold index)", &store, &delta, &origin, &dev)?;
    let want: BTreeSet<u64> = changed.iter().copied().collect();
    ensure!(
        listed == want,
        "the delta lists {} chunks, the bench wrote {} between a and b",
        listed.len(),
        want.len()
    );
    measure("delta a -> b (warm index)", &store, &delta, &origin, &dev)?;
    let store = reopen(store)?;
    let allocated = MapQuery::new(&store, None, "b", 0)?;
    measure(
        "allocated b (cold index)",
        &store,
        &allocated,
        &origin,
        &dev,
    )?;
    println!(
        "delta checked: exactly the {} chunks written between a and b",
        want.len()
    );
    Ok(())
}
