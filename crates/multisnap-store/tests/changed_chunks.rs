//! "What changed between snapshot A and B" answered from the index, exactly: the chunks some
//! write touched after A was taken and before B was (or since A, for the live origin).

use multisnap_store::{CreateOptions, MemDev, SnapshotId, Store, View};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::Arc;

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 300;

#[test]
fn changed_extents_match_the_writes_between_snapshots() {
    let origin = Arc::new(MemDev::new(CHUNKS * CHUNK - 700));
    let dev = Arc::new(MemDev::new(16 << 20));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        cache_bytes: 0,
        ..Default::default()
    };
    let store = Store::create(origin, dev, &opts).unwrap();
    let size = store.origin_size();
    let mut rng = StdRng::seed_from_u64(5);
    // For each snapshot, the chunks written after it was taken, per later snapshot boundary.
    let mut snaps: Vec<SnapshotId> = Vec::new();
    // writes[i] = chunks written between snapshot i and snapshot i+1 (or since the last one).
    let mut writes: Vec<BTreeSet<u64>> = Vec::new();
    for round in 0..40 {
        snaps.push(store.create_snapshot(&format!("s{round}")).unwrap().id);
        writes.push(BTreeSet::new());
        for _ in 0..rng.gen_range(0..8) {
            let len = rng.gen_range(1..3 * CHUNK);
            let off = rng.gen_range(0..size - len);
            store
                .write_origin(off, &vec![rng.gen(); len as usize])
                .unwrap();
            let w = writes.last_mut().unwrap();
            for c in off / CHUNK..=(off + len - 1) / CHUNK {
                w.insert(c);
            }
        }
    }
    let changed_set = |runs: Vec<(u64, bool)>, offset: u64| -> BTreeSet<u64> {
        let mut set = BTreeSet::new();
        let mut pos = offset;
        for (len, changed) in runs {
            if changed {
                for c in pos / CHUNK..=(pos + len - 1) / CHUNK {
                    set.insert(c);
                }
            }
            pos += len;
        }
        assert_eq!(pos, size, "runs must cover the whole range");
        set
    };
    for _ in 0..200 {
        let a = rng.gen_range(0..snaps.len());
        let b = rng.gen_range(0..=snaps.len()); // == len: the live origin
        let (lo, hi) = (a.min(b), a.max(b));
        let expected: BTreeSet<u64> = writes[lo..hi].iter().flatten().copied().collect();
        let view = if b == snaps.len() {
            View::Origin
        } else {
            View::Snapshot(snaps[b])
        };
        let got = changed_set(store.changed_extents(snaps[a], view, 0, size).unwrap(), 0);
        assert_eq!(got, expected, "changes between snapshot {a} and {b}");
    }
    // The same question through a window of the volume.
    let off = 37 * CHUNK + 100;
    let runs = store
        .changed_extents(snaps[3], View::Origin, off, size - off)
        .unwrap();
    let expected: BTreeSet<u64> = writes[3..]
        .iter()
        .flatten()
        .copied()
        .filter(|c| *c >= 37)
        .collect();
    assert_eq!(changed_set(runs, off), expected);
}
