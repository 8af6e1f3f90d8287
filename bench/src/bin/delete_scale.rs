//! Deleting a snapshot that owns a million exceptions: how long reclamation takes, how much
//! store I/O it does, how much space comes back, and how long origin writes wait meanwhile.
//!
//! `cargo run --release -p multisnap-bench --bin delete_scale -- [--exceptions N] [--dir PATH]`
//!
//! Data chunks are discarded (see `multisnap_bench::DiscardChunks`): reclamation only touches
//! metadata, which goes to a real file.

use anyhow::{Context, Result};
use clap::Parser;
use multisnap_bench::{mib, Counting, DiscardChunks, NullOrigin};
use multisnap_store::{BlockDev, CreateOptions, FileDev, Store, View};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Exceptions owned by the snapshot that gets deleted.
    #[arg(long, default_value_t = 1_000_000)]
    exceptions: u64,
    /// Other snapshots kept alive (each with a few exceptions of its own).
    #[arg(long, default_value_t = 50)]
    others: u64,
    /// Node cache size in MiB.
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Directory for the sparse files (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const CHUNK: u64 = 64 * 1024;

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let n = args.exceptions;
    let origin_bytes = n * CHUNK;
    let store_bytes = (2 * n + n / 5 + 4096) * CHUNK;
    let origin_path = dir.join("delete_scale.origin");
    let store_path = dir.join("delete_scale.store");
    let _ = std::fs::remove_file(&origin_path);
    let _ = std::fs::remove_file(&store_path);
    let origin: Arc<dyn BlockDev> = Arc::new(NullOrigin::new(FileDev::create_sparse(
        &origin_path,
        origin_bytes,
    )?));
    let counting = Arc::new(Counting::new(DiscardChunks::new(
        FileDev::create_sparse(&store_path, store_bytes)?,
        CHUNK,
    )?));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        cache_bytes: args.cache_mib << 20,
        ..Default::default()
    };
    let store = Arc::new(Store::create(origin, counting.clone(), &opts).context("create")?);

    let started = Instant::now();
    let victim = store.create_snapshot("victim")?;
    let buf = vec![0u8; 1024 * CHUNK as usize];
    let mut off = 0;
    while off < origin_bytes {
        let len = (origin_bytes - off).min(buf.len() as u64) as usize;
        store.write_origin(off, &buf[..len])?;
        off += len as u64;
    }
    for i in 0..args.others {
        store.create_snapshot(&format!("keep-{i}"))?;
        let at = (i * 7919 % (n / 2)) * CHUNK;
        store.write_origin(at, &buf[..(64 * CHUNK) as usize])?;
    }
    store.flush()?;
    let built = store.stats();
    println!(
        "built: {} exceptions, {} snapshots, store used {} in {:.1}s",
        built.exceptions,
        built.snapshots,
        mib(built.used_bytes),
        started.elapsed().as_secs_f64()
    );

    // Origin writes keep running while the snapshot is deleted and reclaimed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let data = vec![7u8; 4096];
            let mut worst = Duration::ZERO;
            let mut count = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let t = Instant::now();
                // Mostly chunks the newest snapshot already preserved; the first write to each
                // other chunk copies it once.
                let at = ((i * 104_729) % (n / 2)) * CHUNK + 8192;
                if store.write_origin(at, &data).is_ok() {
                    count += 1;
                }
                let mut b = [0u8; 4096];
                let _ = store.read(View::Origin, at, &mut b);
                worst = worst.max(t.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            (count, worst)
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let io_before = counting.snapshot();
    let t_delete = Instant::now();
    store.delete_snapshot(victim.id)?;
    let delete_call = t_delete.elapsed();
    let mut steps = 0u64;
    let mut last_report = Instant::now();
    loop {
        let p = store.reclaim_step(512)?;
        steps += 1;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            println!(
                "  reclaiming: chunk {}/{} scanned, {} chunks freed",
                p.scanned_chunk, p.chunk_count, p.chunks_freed
            );
        }
        if p.is_idle() {
            break;
        }
    }
    store.flush()?;
    let reclaim = t_delete.elapsed();
    let io_after = counting.snapshot();
    stop.store(true, Ordering::Release);
    let (writes_during, worst) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    let after = store.stats();

    let report = format!(
        "delete_scale: snapshot owning {n} exceptions, {} other snapshots kept, 64 KiB chunks, {} MiB node cache\n\
         - exceptions before/after: {} -> {}\n\
         - store used before/after: {} -> {} ({} returned)\n\
         - delete_snapshot call: {:.1} ms (the snapshot is gone from then on)\n\
         - background reclamation: {:.2} s in {steps} steps of <= 512 removals\n\
         - store I/O during reclamation: {} reads ({}), {} writes ({}), {} flushes\n\
         - origin 4 KiB write+read pairs meanwhile: {writes_during}, worst pair latency {:.1} ms\n",
        args.others,
        args.cache_mib,
        built.exceptions,
        after.exceptions,
        mib(built.used_bytes),
        mib(after.used_bytes),
        mib(built.used_bytes.saturating_sub(after.used_bytes)),
        delete_call.as_secs_f64() * 1e3,
        reclaim.as_secs_f64(),
        io_after[0] - io_before[0],
        mib(io_after[1] - io_before[1]),
        io_after[2] - io_before[2],
        mib(io_after[3] - io_before[3]),
        io_after[4] - io_before[4],
        worst.as_secs_f64() * 1e3,
    );
    print!("{report}");
    drop(store);
    let _ = std::fs::remove_file(&origin_path);
    let _ = std::fs::remove_file(&store_path);
    Ok(())
}
