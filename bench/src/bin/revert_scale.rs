//! Rolling a volume back to a snapshot (`Store::revert_to`) at growing volume sizes: how long
//! the call takes (the origin reads as the snapshot from then on), and how long the background
//! merge then takes for the same number of changed chunks.
//!
//! `cargo run --release -p multisnap-bench --bin revert_scale -- [--sizes-gib 1,64,1024] [--changed N]`
//!
//! The origin is a `NullOrigin` (a sparse file never touched) and data chunks are discarded
//! (`DiscardChunks`), so the figures are the store's own work: index and commits, on a real
//! metadata file.

use anyhow::{Context, Result};
use clap::Parser;
use multisnap_bench::{Counting, DiscardChunks, NullOrigin};
use multisnap_store::{BlockDev, CreateOptions, FileDev, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Volume sizes to try, in GiB.
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 64, 1024])]
    sizes_gib: Vec<u64>,
    /// Chunks written after the snapshot (spread over the volume), i.e. what the merge copies.
    #[arg(long, default_value_t = 10_000)]
    changed: u64,
    /// Rollbacks per size (each on a fresh store); the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory for the sparse files (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const CHUNK: u64 = 64 * 1024;

struct Round {
    call: Duration,
    merge: Duration,
    merge_steps: u64,
    store_writes: u64,
}

fn one_round(dir: &std::path::Path, size: u64, changed: u64) -> Result<Round> {
    let chunks = size / CHUNK;
    let origin_path = dir.join("revert_scale.origin");
    let store_path = dir.join("revert_scale.store");
    let _ = std::fs::remove_file(&origin_path);
    let _ = std::fs::remove_file(&store_path);
    let origin: Arc<dyn BlockDev> =
        Arc::new(NullOrigin::new(FileDev::create_sparse(&origin_path, size)?));
    let store_bytes = size / 8 + (4 * changed + 8192) * CHUNK;
    let counting = Arc::new(Counting::new(DiscardChunks::new(
        FileDev::create_sparse(&store_path, store_bytes)?,
        CHUNK,
    )?));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        cache_bytes: 64 << 20,
        ..Default::default()
    };
    let store = Store::create(origin, counting.clone(), &opts).context("create")?;
    let base = store.create_snapshot("base")?;
    let data = vec![9u8; 4096];
    let stride = (chunks / changed.max(1)).max(1);
    for i in 0..changed.min(chunks) {
        store.write_origin(i * stride * CHUNK, &data)?;
    }
    store.flush()?;

    let t = Instant::now();
    store.revert_to(base.id)?;
    let call = t.elapsed();
    let writes_before = counting.snapshot()[2];
    let t = Instant::now();
    let mut merge_steps = 0;
    while store.merge_step(256)?.is_some() {
        merge_steps += 1;
    }
    store.flush()?;
    Ok(Round {
        call,
        merge: t.elapsed(),
        merge_steps,
        store_writes: counting.snapshot()[2] - writes_before,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    println!(
        "revert_scale: {} chunks of 64 KiB changed after the snapshot, median of {} rounds",
        args.changed, args.rounds
    );
    println!("| volume | revert_to call | merge until idle | merge steps | store writes during the merge |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for gib in &args.sizes_gib {
        let mut rounds = (0..args.rounds)
            .map(|_| one_round(&dir, gib << 30, args.changed))
            .collect::<Result<Vec<_>>>()?;
        rounds.sort_by_key(|r| r.call);
        let m = &rounds[rounds.len() / 2];
        println!(
            "| {gib} GiB | {:.2} ms | {:.2} s | {} | {} |",
            m.call.as_secs_f64() * 1e3,
            m.merge.as_secs_f64(),
            m.merge_steps,
            m.store_writes
        );
    }
    Ok(())
}
