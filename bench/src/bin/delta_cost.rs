//! What an incremental delta costs to export: a volume full of data, snapshot A, a given
//! fraction of its chunks rewritten, snapshot B; then the A -> B export, with every byte read
//! from the origin and the store counted. Also the full export of B and the apply of both
//! streams into a fresh replica, as throughput.
//!
//! Then compression side by side: the full stream of the random volume and of a compressible
//! one (text and zero-heavy chunks, a quarter of the size), each exported and applied plain and
//! with zstd records, with the stream's size and the data rates.
//!
//! `cargo run --release -p multisnap-bench --bin delta_cost -- [--volume-mib 4096]
//!  [--change-percent 1] [--zstd-level 3] [--dir PATH]`

use anyhow::Result;
use clap::Parser;
use multisnap_bench::{mib, Counting};
use multisnap_delta::ZstdLevel;
use multisnap_replication::apply::{Applier, Outcome};
use multisnap_replication::export::{export, ExportPlan};
use multisnap_store::{CreateOptions, FileDev, Store, View};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Volume size in MiB (written in full before snapshot A).
    #[arg(long, default_value_t = 4096)]
    volume_mib: u64,
    /// Percentage of the volume's chunks rewritten between A and B.
    #[arg(long, default_value_t = 1.0)]
    change_percent: f64,
    /// zstd level of the compressed exports.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Directory for the files (default: a temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const CHUNK: u64 = 64 * 1024;

struct Devices {
    origin: Arc<Counting<FileDev>>,
    store_dev: Arc<Counting<FileDev>>,
    store: Arc<Store>,
}

fn devices(dir: &std::path::Path, name: &str, volume: u64) -> Result<Devices> {
    let origin = Arc::new(Counting::new(FileDev::create_sparse(
        &dir.join(format!("{name}-origin.img")),
        volume,
    )?));
    let store_dev = Arc::new(Counting::new(FileDev::create_sparse(
        &dir.join(format!("{name}-store.msnap")),
        volume / 4 + (256 << 20),
    )?));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        volume_name: name.into(),
        ..Default::default()
    };
    let store = Arc::new(Store::create(origin.clone(), store_dev.clone(), &opts)?);
    Ok(Devices {
        origin,
        store_dev,
        store,
    })
}

fn reopen(d: Devices) -> Result<Devices> {
    let Devices {
        origin,
        store_dev,
        store,
    } = d;
    store.flush()?;
    drop(store);
    let store = Arc::new(Store::open(origin.clone(), store_dev.clone(), 64 << 20)?);
    Ok(Devices {
        origin,
        store_dev,
        store,
    })
}

fn delta(a: [u64; 5], b: [u64; 5]) -> (u64, u64) {
    (b[0] - a[0], b[1] - a[1])
}

/// CPU seconds (user and system) this process has used so far, all its threads together,
/// ended ones included: what a phase costs the machine, beside the wall time it took (a
/// transfer between two agents on one machine needs both phases' CPU at once).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), counted from `state` as 0:
    // utime is 11, stime 12, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Exports `base -> target` of `d` into `path`, its records compressed at `zstd` if given;
/// prints the cost and returns the stream's size, the data bytes and the seconds it took.
fn export_to(
    d: &Devices,
    base: Option<&str>,
    target: &str,
    path: &std::path::Path,
    zstd: Option<ZstdLevel>,
) -> Result<(u64, u64, f64)> {
    let mut plan = ExportPlan::new(&d.store, base, target, &[])?;
    plan.compression = zstd;
    let (o0, s0) = (d.origin.snapshot(), d.store_dev.snapshot());
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let mut out = BufWriter::with_capacity(4 << 20, File::create(path)?);
    let trailer = export(&d.store, &plan, &mut out, |_| {})?;
    out.flush()?;
    let (took, cpu) = (started.elapsed(), cpu_seconds() - cpu0);
    let (o_ops, o_bytes) = delta(o0, d.origin.snapshot());
    let (s_ops, s_bytes) = delta(s0, d.store_dev.snapshot());
    let stream = std::fs::metadata(path)?.len();
    let volume = d.store.origin_size();
    println!(
        "export {} -> {target}: {} records, {} of data, stream {}; read origin {} in {o_ops} ops, \
         store {} in {s_ops} ops = {:.2}% of the volume; {:.2} s ({:.0} MiB/s of stream), \
         {cpu:.2} CPU s",
        base.unwrap_or("(full)"),
        trailer.record_count,
        mib(trailer.data_bytes),
        mib(stream),
        mib(o_bytes),
        mib(s_bytes),
        100.0 * (o_bytes + s_bytes) as f64 / volume as f64,
        took.as_secs_f64(),
        stream as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    Ok((stream, trailer.data_bytes, took.as_secs_f64()))
}

/// Applies the stream in `path` to `d`, durably; returns the seconds it took.
fn apply_from(d: &Devices, path: &std::path::Path) -> Result<f64> {
    let (started, cpu0) = (Instant::now(), cpu_seconds());
    let mut input = BufReader::new(File::open(path)?);
    let mut a = Applier::new(d.store.clone(), false, false)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Err(e) = a.feed(&buf[..n]) {
            return Err(a.fail(e).into());
        }
    }
    let Outcome::Complete(snap) = a.finish()? else {
        anyhow::bail!("stream incomplete");
    };
    d.store.flush()?;
    let (took, cpu) = (started.elapsed(), cpu_seconds() - cpu0);
    let stream = std::fs::metadata(path)?.len();
    println!(
        "apply -> {}: stream {} in {:.2} s ({:.0} MiB/s), durable, {cpu:.2} CPU s",
        snap.name,
        mib(stream),
        took.as_secs_f64(),
        stream as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    Ok(took.as_secs_f64())
}

/// Fills `d`'s origin with data zstd shrinks: per 64 KiB chunk, 40 KiB of log-like text (a
/// counter in every line, so no two chunks are equal) and 24 KiB of zeros.
fn fill_compressible(d: &Devices, volume: u64) -> Result<()> {
    let mut chunk = vec![0u8; CHUNK as usize];
    for c in 0..volume / CHUNK {
        let mut text = Vec::with_capacity(40 << 10);
        let mut line = 0u64;
        while text.len() < 40 << 10 {
            text.extend_from_slice(
                format!(
                    "2026-12-06T15:{:02}:{:02}Z volume=default chunk={c} line={line} state=ok\n",
                    line % 60,
                    c % 60
                )
                .as_bytes(),
            );
            line += 1;
        }
        chunk[..40 << 10].copy_from_slice(&text[..40 << 10]);
        chunk[40 << 10..].fill(0);
        d.store.write_origin(c * CHUNK, &chunk)?;
    }
    d.store.flush()?;
    Ok(())
}

/// The full stream of `d`'s snapshot `snap`, plain and compressed, each applied to a fresh
/// replica: one row per way, with the stream's size against the data and both data rates.
fn compare_compression(
    dir: &std::path::Path,
    label: &str,
    d: &Devices,
    snap: &str,
    level: ZstdLevel,
) -> Result<Vec<String>> {
    let volume = d.store.origin_size();
    let mut rows = Vec::new();
    for (way, zstd) in [("plain", None), ("zstd", Some(level))] {
        let path = dir.join(format!("{label}-{way}.delta"));
        let (stream, data, export_s) = export_to(d, None, snap, &path, zstd)?;
        let replica = devices(dir, &format!("{label}-{way}-replica"), volume)?;
        let apply_s = apply_from(&replica, &path)?;
        rows.push(format!(
            "| {label} | {way} | {} | {} | {:.3} | {:.0} | {:.0} |",
            mib(data),
            mib(stream),
            stream as f64 / data as f64,
            data as f64 / (1 << 20) as f64 / export_s,
            data as f64 / (1 << 20) as f64 / apply_s,
        ));
        drop(replica);
        let _ = std::fs::remove_file(&path);
    }
    Ok(rows)
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
    let chunks = volume / CHUNK;
    let mut rng = StdRng::seed_from_u64(1);
    let src = devices(&dir, "source", volume)?;

    // Fill the whole volume so that "reads a small fraction" means something.
    let started = Instant::now();
    let mut block = vec![0u8; 1 << 20];
    rng.fill(&mut block[..]);
    for (i, off) in (0..volume).step_by(1 << 20).enumerate() {
        block[..8].copy_from_slice(&(i as u64).to_le_bytes());
        src.store.write_origin(off, &block)?;
    }
    src.store.flush()?;
    println!(
        "filled {} in {:.1} s",
        mib(volume),
        started.elapsed().as_secs_f64()
    );
    src.store.create_snapshot("a")?;
    let changed = ((chunks as f64 * args.change_percent / 100.0).round() as u64).max(1);
    let mut order: Vec<u64> = (0..chunks).collect();
    order.shuffle(&mut rng);
    let mut chunk = vec![0u8; CHUNK as usize];
    for c in &order[..changed as usize] {
        rng.fill(&mut chunk[..]);
        src.store.write_origin(c * CHUNK, &chunk)?;
    }
    src.store.flush()?;
    src.store.create_snapshot("b")?;
    println!(
        "volume {} in {chunks} chunks of 64 KiB; {changed} chunks ({}%) rewritten between a and b",
        mib(volume),
        args.change_percent
    );

    // A cold index, as after an agent restart: every metadata block the export needs is read.
    let src = reopen(src)?;
    let inc = dir.join("a-b.delta");
    let full = dir.join("b.delta");
    export_to(&src, Some("a"), "b", &inc, None)?;
    export_to(&src, None, "a", &full, None)?;

    let dst = devices(&dir, "replica", volume)?;
    apply_from(&dst, &full)?;
    apply_from(&dst, &inc)?;
    // Spot-check the replica against the source.
    let b_src = src.store.snapshot_by_name("b")?.id;
    let b_dst = dst.store.snapshot_by_name("b")?.id;
    let (mut x, mut y) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    for _ in 0..2000 {
        let c = rng.gen_range(0..chunks);
        src.store.read(View::Snapshot(b_src), c * CHUNK, &mut x)?;
        dst.store.read(View::Snapshot(b_dst), c * CHUNK, &mut y)?;
        anyhow::ensure!(x == y, "replica differs at chunk {c}");
    }
    println!("replica spot-check: 2000 random chunks of b equal");
    drop(dst);
    let _ = std::fs::remove_file(&full);

    let level = ZstdLevel::new(args.zstd_level)
        .ok_or_else(|| anyhow::anyhow!("--zstd-level must be 1..=22"))?;
    let text_volume = (volume / 4).max(CHUNK);
    let text = devices(&dir, "text", text_volume)?;
    fill_compressible(&text, text_volume)?;
    text.store.create_snapshot("t")?;
    let mut rows = compare_compression(&dir, "random", &src, "a", level)?;
    rows.extend(compare_compression(&dir, "text+zeros", &text, "t", level)?);
    println!("\nfull streams, zstd level {}:", level.get());
    println!("| data | records | data | stream | stream/data | export MiB/s of data | apply MiB/s of data |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
