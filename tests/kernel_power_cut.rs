//! Real power cuts: the agent runs in the qemu guest (tests/vm/guest-powercut.sh) on ext4 on a
//! virtio disk that the host writes through to a file, and the host kills qemu with SIGKILL at
//! a random moment while the guest creates and deletes volumes, writes and flushes through the
//! kernel nbd client, takes and deletes snapshots (reclamation runs behind them), exports
//! deltas and applies them to replicas, and writes
//! files with fsync on ext4 inside a volume. Whatever the guest kernel had not handed to the
//! disk is lost, as in a power cut: page cache, unjournalled metadata, directories never
//! synced. This is what killing the agent cannot catch.
//!
//! The guest prints `VMCUT` facts after each call returns and, on the next boot, `VMCHECK`
//! facts about what it finds; this test keeps the model and judges:
//! - a volume whose CreateVolume returned exists, one whose DeleteVolume returned does not;
//! - every 4 KiB block holds the generation its last acknowledged (flushed) write put there
//!   or a later one, never a torn or misplaced block, never zeroes once written;
//! - every snapshot reads what the origin held when it was taken, one whose creation
//!   returned exists, one whose deletion returned does not;
//! - a replica fed delta streams holds each snapshot whose apply returned, reading what it
//!   read on the source, and its origin is its newest snapshot (applies are atomic);
//! - ext4 in a volume is repairable by its journal and holds every file fsync'd;
//! - `multisnap-agent verify` finds nothing.
//!
//! `MSNAP_POWER_CUTS=N` sets the number of cuts (3 by default, for CI);
//! `MSNAP_POWER_CUT_SEED` replays a run (the seed is printed).

use common::vm::{Boot, BootEnd, VmEnv};
use multisnap_tests as common;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

/// Blocks of 4 KiB the guest writes in each raw volume (the first 1 MiB).
const BLOCKS: usize = 256;

#[derive(Default)]
struct Volume {
    /// CreateVolume returned (or the volume was seen): it must be listed.
    must_exist: bool,
    /// DeleteVolume started: it may be gone.
    deleting: bool,
    /// DeleteVolume returned: it must not be listed.
    deleted: bool,
    /// Per block, the oldest generation it may hold.
    floor: Vec<u64>,
    snapshots: BTreeMap<String, Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    /// The origin's hash when it was taken.
    hash: Option<String>,
    must_exist: bool,
    deleting: bool,
    deleted: bool,
}

#[derive(Default)]
struct Model {
    volumes: BTreeMap<String, Volume>,
    /// The filesystem in volume `fs` was made (mkfs returned).
    fs_made: bool,
    /// Files fsync'd on it: name → sha256.
    files: BTreeMap<String, String>,
    /// How many facts of each kind the guest reported, for the summary.
    counts: BTreeMap<String, usize>,
}

impl Model {
    fn volume(&mut self, name: &str) -> &mut Volume {
        self.volumes
            .entry(name.to_string())
            .or_insert_with(|| Volume {
                floor: vec![0; BLOCKS],
                ..Volume::default()
            })
    }

    /// A fact the guest printed after the call it names returned.
    fn learn(&mut self, fact: &[&str]) {
        if let Some(kind) = fact.first() {
            *self.counts.entry(kind.to_string()).or_default() += 1;
        }
        match fact {
            ["precreate", _] | ["boot", ..] | ["start"] => {}
            ["created", v] => self.volume(v).must_exist = true,
            ["predelvol", v] => self.volume(v).deleting = true,
            ["delvol", v] => self.volume(v).deleted = true,
            ["mkfs", "fs"] => {
                self.fs_made = true;
                self.files.clear();
            }
            ["file", f, hash] => {
                self.files.insert(f.to_string(), hash.to_string());
            }
            ["wrote", v, regions @ ..] => {
                let vol = self.volume(v);
                for rg in regions {
                    let (r, g) = rg.split_once(':').expect("region:generation");
                    let (r, g): (usize, u64) = (r.parse().unwrap(), g.parse().unwrap());
                    for b in &mut vol.floor[r * 16..r * 16 + 16] {
                        *b = (*b).max(g);
                    }
                }
            }
            ["presnap", v, s, hash] => {
                self.volume(v)
                    .snapshots
                    .entry(s.to_string())
                    .or_default()
                    .hash = Some(hash.to_string())
            }
            ["snap", v, s] => {
                self.volume(v)
                    .snapshots
                    .entry(s.to_string())
                    .or_default()
                    .must_exist = true
            }
            ["predelete", v, s] => {
                self.volume(v)
                    .snapshots
                    .entry(s.to_string())
                    .or_default()
                    .deleting = true
            }
            ["preapply", ..] => {}
            // A delta of v up to snapshot s applied to replica r: r now holds s, which reads
            // what s read on v.
            ["applied", r, v, s] => {
                let hash = self
                    .volumes
                    .get(*v)
                    .and_then(|vol| vol.snapshots.get(*s))
                    .and_then(|x| x.hash.clone());
                let snap = self.volume(r).snapshots.entry(s.to_string()).or_default();
                snap.must_exist = true;
                snap.hash = hash;
            }
            ["deleted", v, s] => {
                self.volume(v)
                    .snapshots
                    .entry(s.to_string())
                    .or_default()
                    .deleted = true
            }
            other => panic!("unknown VMCUT fact {other:?}"),
        }
    }
}

/// What one boot found (its `VMCHECK` lines).
#[derive(Default)]
struct Found {
    volumes: Option<BTreeSet<String>>,
    blocks: BTreeMap<String, Vec<String>>,
    /// Replicas' origin hashes.
    origins: BTreeMap<String, String>,
    snapshots: BTreeMap<String, BTreeMap<String, String>>,
    fsck: Option<(i32, i32)>,
    files: BTreeMap<String, String>,
    verify: Option<i32>,
    other: Vec<String>,
}

impl Found {
    fn read(&mut self, fact: &[&str]) {
        match fact {
            ["volumes", names @ ..] => {
                self.volumes = Some(names.iter().map(|s| s.to_string()).collect())
            }
            ["blocks", v, tokens @ ..] => {
                self.blocks.insert(
                    v.to_string(),
                    tokens.iter().map(|s| s.to_string()).collect(),
                );
            }
            ["origin", v, hash] => {
                self.origins.insert(v.to_string(), hash.to_string());
            }
            ["snap", v, s, hash] => {
                self.snapshots
                    .entry(v.to_string())
                    .or_default()
                    .insert(s.to_string(), hash.to_string());
            }
            ["fsck", "fs", a, b] => self.fsck = Some((a.parse().unwrap(), b.parse().unwrap())),
            ["file", f, hash] => {
                self.files.insert(f.to_string(), hash.to_string());
            }
            ["verify", rc] => self.verify = Some(rc.parse().unwrap()),
            ["done"] => {}
            other => self.other.push(other.join(" ")),
        }
    }
}

/// Judges what a boot found against the model, then makes what it found the new floor (it
/// is on the disk now). Returns the violations.
fn judge(model: &mut Model, found: &Found) -> Vec<String> {
    let mut bad: Vec<String> = found.other.iter().map(|o| format!("guest: {o}")).collect();
    let Some(listed) = &found.volumes else {
        return vec!["the guest listed no volumes".into()];
    };
    match found.verify {
        Some(0) => {}
        rc => bad.push(format!("verify exited {rc:?}")),
    }
    for (name, vol) in &model.volumes {
        let present = listed.contains(name);
        if vol.deleted && present {
            bad.push(format!(
                "volume {name}: deleted (DeleteVolume returned) but listed"
            ));
        }
        if vol.must_exist && !vol.deleting && !present {
            bad.push(format!(
                "volume {name}: CreateVolume returned but it is gone"
            ));
        }
    }
    for name in listed
        .iter()
        .filter(|v| v.starts_with('p') || v.starts_with('r'))
    {
        let vol = model.volume(name);
        vol.must_exist = true;
        let seen = found.snapshots.get(name).cloned().unwrap_or_default();
        if name.starts_with('p') {
            judge_blocks(name, vol, found.blocks.get(name), &mut bad);
        } else {
            // An apply is atomic: the replica's origin is its newest snapshot, never a mix.
            let newest = seen.iter().max_by_key(|(s, _)| snapshot_order(s));
            match (found.origins.get(name), newest) {
                (Some(o), Some((s, h))) if o != h => bad.push(format!(
                    "replica {name}: origin reads {o}, not its newest snapshot {s} ({h})"
                )),
                (None, _) => bad.push(format!("replica {name}: origin not reported")),
                _ => {}
            }
        }
        for (s, snap) in &vol.snapshots {
            if snap.deleted && seen.contains_key(s) {
                bad.push(format!("snapshot {name}@{s}: deleted but listed"));
            }
            if snap.must_exist && !snap.deleting && !seen.contains_key(s) {
                bad.push(format!(
                    "snapshot {name}@{s}: creation returned but it is gone"
                ));
            }
        }
        for (s, hash) in &seen {
            match vol.snapshots.get(s).and_then(|x| x.hash.as_ref()) {
                Some(want) if want != hash => bad.push(format!(
                    "snapshot {name}@{s}: reads {hash}, held {want} when taken"
                )),
                _ => {}
            }
        }
        vol.snapshots = seen
            .into_iter()
            .map(|(s, hash)| {
                let snap = Snapshot {
                    hash: Some(hash),
                    must_exist: true,
                    ..Snapshot::default()
                };
                (s, snap)
            })
            .collect();
    }
    model.volumes.retain(|name, _| listed.contains(name));
    if model.fs_made {
        match found.fsck {
            Some((first, second)) if first <= 1 && second == 0 => {}
            f => bad.push(format!(
                "ext4 in volume fs: e2fsck -y then -n exited {f:?}, want (0 or 1, 0)"
            )),
        }
        for (f, want) in &model.files {
            match found.files.get(f) {
                Some(h) if h == want => {}
                Some(h) => bad.push(format!("file {f}: reads {h}, fsync'd {want}")),
                None => bad.push(format!("file {f}: fsync'd but gone")),
            }
        }
    }
    if found.fsck.is_some_and(|(a, b)| a <= 1 && b == 0) {
        model.fs_made = true;
        model.files = found.files.clone();
    }
    bad
}

/// The blocks of raw volume `name` against their floors; what was found becomes the floor.
fn judge_blocks(name: &str, vol: &mut Volume, tokens: Option<&Vec<String>>, bad: &mut Vec<String>) {
    let Some(tokens) = tokens else {
        bad.push(format!("volume {name}: no blocks reported"));
        return;
    };
    if tokens.len() != BLOCKS {
        bad.push(format!("volume {name}: {} blocks reported", tokens.len()));
        return;
    }
    for (b, t) in tokens.iter().enumerate() {
        let floor = vol.floor[b];
        match t.parse::<u64>() {
            Ok(g) if g >= floor => vol.floor[b] = g,
            Ok(g) => bad.push(format!(
                "volume {name} block {b}: generation {g}, but {floor} was flushed"
            )),
            Err(_) => bad.push(format!("volume {name} block {b}: torn or misplaced")),
        }
    }
}

/// Snapshots are named s<generation>: later ones have larger numbers.
fn snapshot_order(name: &str) -> u64 {
    name.trim_start_matches('s').parse().unwrap_or(0)
}

#[test]
fn power_cuts_of_the_whole_guest_lose_nothing_acknowledged() {
    let Some(env) = VmEnv::for_test(&["mkfs.ext4"]) else {
        return;
    };
    let cuts: u32 = std::env::var("MSNAP_POWER_CUTS")
        .ok()
        .map(|s| s.parse().expect("MSNAP_POWER_CUTS"))
        .unwrap_or(3);
    let seed: u64 = std::env::var("MSNAP_POWER_CUT_SEED")
        .ok()
        .map(|s| s.parse().expect("MSNAP_POWER_CUT_SEED"))
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("power cuts: {cuts}, seed {seed} (MSNAP_POWER_CUT_SEED={seed} replays the moments)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    env.build_initramfs(&initrd);
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(3 << 30))
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4 of the guest's disk failed");
    // Every write the guest's disk completes is on the host's file (O_DSYNC) before the guest
    // hears of it: what a cut loses is only what the guest kept in its own memory.
    // An error of the host's file (say ENOSPC) reaches the guest as an I/O error instead of
    // pausing it (qemu's default for ENOSPC), which would look like a hang.
    let drive = format!(
        "file={},format=raw,if=virtio,cache=writethrough,werror=report,rerror=report",
        disk.display()
    );

    let mut model = Model::default();
    let t0 = Instant::now();
    let mut judged = 0;
    for cycle in 1..=cuts + 1 {
        let last = cycle == cuts + 1;
        let mode = if last { "powercut-check" } else { "powercut" };
        let delay = Duration::from_millis(rng.gen_range(500..20_000));
        let mut boot = Boot::new(
            &env,
            &initrd,
            &format!("msnap.mode={mode} msnap.cycle={cycle}"),
            Duration::from_secs(300),
        )
        .qemu_args(["-drive", &drive]);
        if !last {
            boot = boot.cut_after("VMCUT start", delay);
        }
        let guest = boot.run();
        let mut found = Found::default();
        let mut checked = false;
        for line in &guest.lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["VMCHECK", "done"] => {
                    let bad = judge(&mut model, &found);
                    assert!(
                        bad.is_empty(),
                        "after cut {} (seed {seed}):\n  {}",
                        cycle - 1,
                        bad.join("\n  ")
                    );
                    checked = true;
                    judged += 1;
                }
                ["VMCHECK", fact @ ..] => found.read(fact),
                ["VMCUT", fact @ ..] => model.learn(fact),
                _ => {}
            }
        }
        assert!(
            checked,
            "boot {cycle} never finished its check (seed {seed})"
        );
        let want = if last {
            BootEnd::Pass
        } else {
            BootEnd::PowerCut
        };
        assert_eq!(
            guest.end, want,
            "boot {cycle} ended {:?} (seed {seed}); see the console above",
            guest.end
        );
        if !last {
            eprintln!(
                "power cut {cycle}: {:.1}s after the workload started",
                delay.as_secs_f64()
            );
        }
    }
    eprintln!(
        "{cuts} power cuts, {judged} checks passed, {:.0}s; acknowledged before the cuts: {:?}",
        t0.elapsed().as_secs_f64(),
        model.counts
    );
}
