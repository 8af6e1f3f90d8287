//! `multisnap-agent verify --data-dir DIR`: checks every store in DIR offline.

use crate::datadir::{DataDir, STORE_FILE};
use anyhow::Result;
use multisnap_store::{read_superblock, verify, BlockDev, FileDev};
use std::path::Path;

/// Prints a report per volume; returns whether every store is clean.
pub fn run(data_dir: &Path) -> Result<bool> {
    let dir = DataDir::open_locked(data_dir)?;
    let names = dir.volume_names()?;
    if names.is_empty() {
        println!("no volumes found under {}", dir.volumes_dir().display());
        return Ok(false);
    }
    let mut all_clean = true;
    for name in names {
        let vdir = dir.volume_dir(&name);
        let store_path = vdir.join(STORE_FILE);
        let started = std::time::Instant::now();
        let dev = match FileDev::open(&store_path) {
            Ok(d) => d,
            Err(e) => {
                println!(
                    "volume {name}: PROBLEM: cannot open {}: {e}",
                    store_path.display()
                );
                all_clean = false;
                continue;
            }
        };
        let origin_size = read_superblock(&dev).ok().map(|sb| {
            let p = Path::new(&sb.origin_path);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                vdir.join(p)
            };
            match FileDev::open(&p).and_then(|o| o.size()) {
                Ok(size) => Ok(size),
                Err(e) => Err(format!("cannot open origin {}: {e}", p.display())),
            }
        });
        let origin_size = match origin_size {
            Some(Ok(s)) => Some(s),
            Some(Err(msg)) => {
                println!("volume {name}: PROBLEM: {msg}");
                all_clean = false;
                None
            }
            None => None,
        };
        match verify(&dev, origin_size) {
            Ok(report) => {
                let secs = started.elapsed().as_secs_f64();
                if report.is_clean() {
                    println!(
                        "volume {name}: clean (generation {}, {} snapshots, {} exceptions, {} index nodes, {} blocks in use; {secs:.2}s)",
                        report.generation, report.snapshots, report.exceptions, report.nodes, report.used_blocks
                    );
                    if let Some((cursor, chunks)) = report.hydration {
                        println!(
                            "volume {name}: a clone still hydrating: {cursor} of {chunks} chunks copied, {} ahead of the cursor; its other chunks read its source volume's snapshot, which the agent resumes copying",
                            report.hydration_marks
                        );
                    }
                    if report.journal_batches > 0 {
                        println!(
                            "volume {name}: its journal holds {} batch(es), {} bytes of flushed origin writes the origin file may lack; starting the agent applies them",
                            report.journal_batches, report.journal_bytes
                        );
                    }
                } else {
                    all_clean = false;
                    println!(
                        "volume {name}: {} problem(s) (generation {}):",
                        report.problems.len(),
                        report.generation
                    );
                    for p in &report.problems {
                        println!("  PROBLEM: {p}");
                    }
                }
            }
            Err(e) => {
                all_clean = false;
                println!("volume {name}: PROBLEM: {e}");
            }
        }
    }
    Ok(all_clean)
}
