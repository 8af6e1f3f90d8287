//! Builds one store holding many exceptions across many snapshots and shows that resident
//! memory is bounded by the node cache (plus the allocator bitmap and a small constant), not by
//! the number of exceptions, and that `verify` of that store is quick.
//!
//! Method: an origin of `exceptions / snapshots` chunks; each round creates a snapshot and then
//! overwrites every origin chunk, so each round adds one exception per chunk. Copied chunk data
//! and origin data are dropped (see `multisnap_bench::DiscardChunks` / `NullOrigin`); all
//! metadata goes to a real sparse file.

use anyhow::{bail, Context, Result};
use clap::Parser;
use multisnap_bench::{mib, rss, DiscardChunks, NullOrigin, Rss};
use multisnap_store::{BlockDev, CreateOptions, FileDev, SnapshotId, Store, View};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: u64 = 64 * 1024;
const READ_SIZE: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "Index memory and verify time of a store with millions of exceptions")]
struct Args {
    /// Exceptions to build (rounded down to a multiple of --snapshots).
    #[arg(long, default_value_t = 10_000_000)]
    exceptions: u64,
    /// Snapshots (rounds); each round copies every origin chunk once.
    #[arg(long, default_value_t = 1000)]
    snapshots: u64,
    /// Node cache size, MiB, for the build and for the reopened store.
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// Directory for the origin and store files (removed afterwards unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of each origin write, MiB: one write's copies share one commit.
    #[arg(long, default_value_t = 64)]
    write_mib: u64,
    /// Random 4 KiB snapshot reads after the reopen.
    #[arg(long, default_value_t = 100_000)]
    reads: u64,
    /// Small smoke run: 200,000 exceptions over 100 snapshots.
    #[arg(long)]
    quick: bool,
    /// Keep the files.
    #[arg(long)]
    keep: bool,
    /// Also append the summary (Markdown) to this file.
    #[arg(long)]
    summary_out: Option<PathBuf>,
    /// Only reopen, read and verify the store already built in this directory (what a build
    /// runs in a child process; also for rerunning that phase on a kept store).
    #[arg(long)]
    reopen_dir: Option<PathBuf>,
}

struct Probe {
    label: &'static str,
    rss: Rss,
}

/// The origin and the store device, both dropping data I/O.
type Devs = (Arc<dyn BlockDev>, Arc<DiscardChunks<FileDev>>);

fn open_devs(dir: &Path, create: Option<(u64, u64)>) -> Result<Devs> {
    let (origin_path, store_path) = (dir.join("origin.img"), dir.join("store.img"));
    let (origin, store) = match create {
        Some((origin_bytes, store_bytes)) => (
            FileDev::create_sparse(&origin_path, origin_bytes)
                .with_context(|| format!("creating {}", origin_path.display()))?,
            FileDev::create_sparse(&store_path, store_bytes)
                .with_context(|| format!("creating {}", store_path.display()))?,
        ),
        None => (
            FileDev::open(&origin_path)
                .with_context(|| format!("opening {}", origin_path.display()))?,
            FileDev::open(&store_path)
                .with_context(|| format!("opening {}", store_path.display()))?,
        ),
    };
    let origin: Arc<dyn BlockDev> = Arc::new(NullOrigin::new(origin));
    let store = Arc::new(DiscardChunks::new(store, CHUNK)?);
    Ok((origin, store))
}

/// The store's dimensions, derived from the arguments once for both phases.
#[derive(Clone, Copy)]
struct Scale {
    /// Origin chunks; each round copies every one of them once.
    chunks: u64,
    /// Exceptions the build makes: `chunks` per snapshot.
    exceptions: u64,
    cache_bytes: usize,
}

impl Scale {
    fn of(args: &Args) -> Result<Scale> {
        if args.snapshots == 0 || args.exceptions < args.snapshots {
            bail!("need at least one snapshot and one exception per snapshot");
        }
        let chunks = args.exceptions / args.snapshots;
        Ok(Scale {
            chunks,
            exceptions: chunks * args.snapshots,
            cache_bytes: (args.cache_mib << 20) as usize,
        })
    }

    fn origin_bytes(&self) -> u64 {
        self.chunks * CHUNK
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.exceptions = 200_000;
        args.snapshots = 100;
        args.reads = args.reads.min(20_000);
    }
    let scale = Scale::of(&args)?;
    let exceptions = scale.exceptions;

    if let Some(dir) = args.reopen_dir.clone() {
        let out = reopen_phase(&args, &dir, scale)?;
        return emit(&args, &out);
    }

    let tmp = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::tempdir_in(d)?
        }
        None => tempfile::tempdir()?,
    };
    let dir = tmp.path().to_path_buf();
    let out = build_phase(&args, &dir, scale)?;
    emit(&args, &out)?;

    // The reopen runs in a fresh process so its resident memory owes nothing to the build
    // (the allocator keeps freed pages, so a same-process figure would overstate it).
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut child = std::process::Command::new(exe);
    child
        .arg("--reopen-dir")
        .arg(&dir)
        .args(["--exceptions", &exceptions.to_string()])
        .args(["--snapshots", &args.snapshots.to_string()])
        .args(["--cache-mib", &args.cache_mib.to_string()])
        .args(["--reads", &args.reads.to_string()]);
    if let Some(path) = &args.summary_out {
        child.arg("--summary-out").arg(path);
    }
    let status = child.status();
    if !matches!(&status, Ok(s) if s.success()) {
        // A 10M-exception build takes many minutes: keep it, so the reopen phase can be rerun
        // alone with `--reopen-dir`.
        let kept = tmp.keep();
        bail!(
            "the reopen phase failed ({status:?}); the store is kept in {}: rerun with \
             --reopen-dir {} --exceptions {exceptions} --snapshots {}",
            kept.display(),
            kept.display(),
            args.snapshots
        );
    }
    if args.keep {
        println!("files kept in {}", tmp.keep().display());
    }
    Ok(())
}

fn emit(args: &Args, out: &str) -> Result<()> {
    println!("\n{out}");
    if let Some(path) = &args.summary_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(out.as_bytes())?;
    }
    Ok(())
}

fn probe_table(out: &mut String, probes: &[Probe]) -> Result<()> {
    writeln!(out, "| point | VmRSS | VmHWM (peak so far) |")?;
    writeln!(out, "|---|---:|---:|")?;
    for p in probes {
        writeln!(
            out,
            "| {} | {} | {} |",
            p.label,
            mib(p.rss.current),
            mib(p.rss.peak)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn build_phase(args: &Args, dir: &Path, scale: Scale) -> Result<String> {
    let origin_bytes = scale.origin_bytes();
    // Every exception owns a data chunk; B+tree nodes (about 40 bytes per exception live, more
    // while commits shadow them) and the bitmap need room on top.
    let store_bytes = scale.exceptions * CHUNK + scale.exceptions * 512 + (1 << 30);
    let write_bytes = (args.write_mib << 20).clamp(CHUNK, origin_bytes);
    let mut probes = vec![Probe {
        label: "build process: start",
        rss: rss()?,
    }];
    println!(
        "building {} exceptions: {} snapshots x {} chunks of 64 KiB; origin {}, \
         store {} (sparse) in {}; cache {}",
        scale.exceptions,
        args.snapshots,
        scale.chunks,
        mib(origin_bytes),
        mib(store_bytes),
        dir.display(),
        mib(scale.cache_bytes as u64)
    );

    let (origin, store_dev) = open_devs(dir, Some((origin_bytes, store_bytes)))?;
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        volume_name: "bench".into(),
        origin_path: dir.join("origin.img").display().to_string(),
        cache_bytes: scale.cache_bytes,
        ..Default::default()
    };
    let store = Store::create(origin.clone(), store_dev.clone(), &opts)?;
    // Zeroes from the allocator's zeroed pages: the origin drops writes, so these pages are
    // never touched and never become resident.
    let data = vec![0u8; write_bytes as usize];
    let build_started = Instant::now();
    let mut last_report = Instant::now();
    for round in 1..=args.snapshots {
        store.create_snapshot(&format!("s{round}"))?;
        let mut off = 0;
        while off < origin_bytes {
            let n = write_bytes.min(origin_bytes - off) as usize;
            store.write_origin(off, &data[..n])?;
            off += n as u64;
        }
        if last_report.elapsed() > Duration::from_secs(30) || round == args.snapshots {
            last_report = Instant::now();
            let s = store.stats();
            let r = rss()?;
            let secs = build_started.elapsed().as_secs_f64();
            println!(
                "  round {round}/{}: {} exceptions, {:.0} s, {:.0} exceptions/s, RSS {} (peak {}), \
                 cache {}/{} nodes, {} misses, {} commits ({:.1} s in commits)",
                args.snapshots,
                s.exceptions,
                secs,
                s.exceptions as f64 / secs,
                mib(r.current),
                mib(r.peak),
                s.cache.nodes,
                s.cache.capacity_nodes,
                s.cache.misses,
                s.commits.count,
                s.commits.seconds_total
            );
        }
    }
    store.flush()?;
    let build_time = build_started.elapsed();
    let built = store.stats();
    if built.exceptions != scale.exceptions {
        bail!(
            "expected {} exceptions, the store counts {}",
            scale.exceptions,
            built.exceptions
        );
    }
    probes.push(Probe {
        label: "build process: after build",
        rss: rss()?,
    });
    drop(store);

    let store_blocks = built.store_bytes / 4096;
    let bitmap_bytes = store_blocks.div_ceil(8);
    let on_disk = allocated_bytes(&dir.join("store.img"));

    let mut out = String::new();
    writeln!(
        out,
        "| exceptions | snapshots | origin chunks | node cache | build | exceptions/s | commits | time in commits |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    writeln!(
        out,
        "| {} | {} | {} | {} ({} nodes) | {:.0} s | {:.0} | {} | {:.0} s |",
        scale.exceptions,
        args.snapshots,
        scale.chunks,
        mib(scale.cache_bytes as u64),
        built.cache.capacity_nodes,
        build_time.as_secs_f64(),
        scale.exceptions as f64 / build_time.as_secs_f64(),
        built.commits.count,
        built.commits.seconds_total
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Store: {} apparent, {} actually allocated on disk (metadata only: data chunks are \
         discarded). Allocator state in memory: bitmap {} (1 bit per 4 KiB store block; \
         chunk use is counted from it) — it scales with the store's size, not with the number \
         of exceptions. Build cache: {} hits / {} misses / {} evictions.",
        mib(built.store_bytes),
        on_disk.map(mib).unwrap_or_else(|| "?".into()),
        mib(bitmap_bytes),
        built.cache.hits,
        built.cache.misses,
        built.cache.evictions
    )?;
    writeln!(out)?;
    probe_table(&mut out, &probes)?;
    Ok(out)
}

fn reopen_phase(args: &Args, dir: &Path, scale: Scale) -> Result<String> {
    let origin_bytes = scale.origin_bytes();
    let mut probes = vec![Probe {
        label: "reopen process: start",
        rss: rss()?,
    }];
    let (origin, store_dev) = open_devs(dir, None)?;
    let open_started = Instant::now();
    let store = Store::open(origin, store_dev.clone(), scale.cache_bytes)?;
    let open_time = open_started.elapsed();
    probes.push(Probe {
        label: "reopen process: after Store::open",
        rss: rss()?,
    });
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut buf = vec![0u8; READ_SIZE];
    let reads_started = Instant::now();
    for _ in 0..args.reads {
        let chunk = rng.gen_range(0..scale.chunks);
        let snap = SnapshotId(rng.gen_range(1..=args.snapshots));
        let within = rng.gen_range(0..CHUNK / READ_SIZE as u64) * READ_SIZE as u64;
        store.read(View::Snapshot(snap), chunk * CHUNK + within, &mut buf)?;
    }
    let reads_time = reads_started.elapsed();
    let after_reads = store.stats();
    probes.push(Probe {
        label: "reopen process: after random reads",
        rss: rss()?,
    });
    drop(store);

    let verify_started = Instant::now();
    let report = multisnap_store::verify(&*store_dev, Some(origin_bytes))?;
    let verify_time = verify_started.elapsed();
    probes.push(Probe {
        label: "reopen process: after verify",
        rss: rss()?,
    });
    if !report.is_clean() {
        bail!("verify found problems: {:?}", report.problems);
    }
    if report.exceptions != scale.exceptions {
        bail!(
            "verify counted {} exceptions, expected {}",
            report.exceptions,
            scale.exceptions
        );
    }

    let mut out = String::new();
    probe_table(&mut out, &probes)?;
    writeln!(
        out,
        "Reopen: {:.2} s. {} random 4 KiB snapshot reads (random chunk, random snapshot): \
         {:.1} s ({:.0} reads/s), cache {} hits / {} misses / {} evictions, {} nodes cached.",
        open_time.as_secs_f64(),
        args.reads,
        reads_time.as_secs_f64(),
        args.reads as f64 / reads_time.as_secs_f64(),
        after_reads.cache.hits,
        after_reads.cache.misses,
        after_reads.cache.evictions,
        after_reads.cache.nodes
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "verify: {:.1} s, clean: {} exceptions, {} snapshots, {} B+tree nodes, {} used blocks.",
        verify_time.as_secs_f64(),
        report.exceptions,
        report.snapshots,
        report.nodes,
        report.used_blocks
    )?;
    writeln!(out)?;
    Ok(out)
}

/// Bytes the file really occupies on disk (it is sparse), if the platform says.
fn allocated_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}
