//! Block maps against a model: the changed ranges between two snapshots are exactly the chunks
//! written between them (every write here writes bytes never written before, so a written
//! chunk always differs), whatever was written before the base or after the target; the
//! allocated ranges are exactly the pages written, merged, plus the chunks preserved for the
//! snapshot. Both across the store's map windows
//! (65,536 chunks for changes, 4,096 for allocation), from any starting offset.

use multisnap_replication::ranges::{ByteRange, MapQuery};
use multisnap_replication::ReplicationError;
use multisnap_store::{BlockDev, CreateOptions, MemDev, Store};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

const CHUNK: u64 = 4096;
/// 70,000 chunks plus a partial one: past one window of changed extents, many of allocation.
const SIZE: u64 = 70_000 * CHUNK + 1000;

/// A sparse origin: only written pages take memory, and it reports them as its allocation the
/// way a sparse file does.
#[derive(Default)]
struct SparseDev {
    pages: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl BlockDev for SparseDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let pages = self.pages.lock();
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = pages
                .get(&(at / CHUNK))
                .map_or(0, |p| p[(at % CHUNK) as usize]);
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut pages = self.pages.lock();
        for (i, b) in buf.iter().enumerate() {
            let at = offset + i as u64;
            pages
                .entry(at / CHUNK)
                .or_insert_with(|| vec![0; CHUNK as usize])[(at % CHUNK) as usize] = *b;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(SIZE)
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        multisnap_store::blockdev::must_hold(SIZE, size)
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        let pages = self.pages.lock();
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let next = ((pos / CHUNK + 1) * CHUNK).min(offset + len);
            let data = pages.contains_key(&(pos / CHUNK));
            match out.last_mut() {
                Some((n, d)) if *d == data => *n += next - pos,
                _ => out.push((next - pos, data)),
            }
            pos = next;
        }
        Ok(out)
    }
}

fn store() -> Store {
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        cache_bytes: 0,
        ..Default::default()
    };
    Store::create(
        Arc::new(SparseDev::default()),
        Arc::new(MemDev::new(64 << 20)),
        &opts,
    )
    .unwrap()
}

/// Writes `n` runs of fresh bytes (a counter no write repeats) and returns the chunks touched.
fn writes(s: &Store, rng: &mut StdRng, n: usize, counter: &mut u32) -> BTreeSet<u64> {
    let mut touched = BTreeSet::new();
    for _ in 0..n {
        let len = rng.gen_range(1..4 * CHUNK);
        let off = rng.gen_range(0..SIZE - len);
        *counter += 1;
        let data: Vec<u8> = (0..len)
            .map(|i| (*counter as u64 * 7919 + i) as u8 | 1)
            .collect();
        s.write_origin(off, &data).unwrap();
        touched.extend(off / CHUNK..=(off + len - 1) / CHUNK);
    }
    touched
}

/// Maximal byte ranges of a set of chunks, clipped to the volume and to `start`.
fn model_ranges(chunks: &BTreeSet<u64>, start: u64) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::new();
    for &c in chunks {
        let from = (c * CHUNK).max(start);
        let to = ((c + 1) * CHUNK).min(SIZE);
        if to <= from {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.end() == from => r.len += to - from,
            _ => out.push(ByteRange {
                offset: from,
                len: to - from,
            }),
        }
    }
    out
}

fn map(s: &Store, base: Option<&str>, target: &str, start: u64) -> Vec<ByteRange> {
    MapQuery::new(s, base, target, start)
        .unwrap()
        .ranges(s)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn changed_and_allocated_ranges_match_the_model() {
    let mut rng = StdRng::seed_from_u64(21);
    let s = store();
    let mut counter = 0;
    let mut allocated = writes(&s, &mut rng, 60, &mut counter);
    // A run across the 65,536-chunk window of changed extents, written before and after `a`:
    // one range, not two.
    let across = 65_536 * CHUNK - 3 * CHUNK;
    s.write_origin(across, &vec![7; 6 * CHUNK as usize])
        .unwrap();
    allocated.extend(across / CHUNK..across / CHUNK + 6);
    s.create_snapshot("a").unwrap();
    let mut changed = writes(&s, &mut rng, 80, &mut counter);
    s.write_origin(across, &vec![9; 6 * CHUNK as usize])
        .unwrap();
    changed.extend(across / CHUNK..across / CHUNK + 6);
    allocated.extend(changed.iter().copied());
    s.create_snapshot("b").unwrap();
    // Writes after `b` change no range of `b`'s delta. Its allocation gains the chunks they
    // preserve for it: a copy in the store is data to the map even where the origin had a
    // hole (it holds the zeros), as for the NBD block status of the snapshot.
    allocated.extend(writes(&s, &mut rng, 50, &mut counter));

    let delta = map(&s, Some("a"), "b", 0);
    assert_eq!(delta, model_ranges(&changed, 0));
    assert!(delta
        .iter()
        .any(|r| r.offset <= across && r.end() >= across + 6 * CHUNK));
    assert_eq!(map(&s, None, "b", 0), model_ranges(&allocated, 0));

    // From any starting offset: the same ranges clipped there, none ending before it.
    for start in [1, CHUNK, across + 100, SIZE - 1, SIZE] {
        assert_eq!(
            map(&s, Some("a"), "b", start),
            model_ranges(&changed, start)
        );
        assert_eq!(map(&s, None, "b", start), model_ranges(&allocated, start));
    }
}

#[test]
fn bad_requests_are_refused_with_their_reason() {
    let s = store();
    s.create_snapshot("a").unwrap();
    s.write_origin(0, &[1; 10]).unwrap();
    s.create_snapshot("b").unwrap();
    let err = |base: Option<&str>, target: &str, start: u64| {
        MapQuery::new(&s, base, target, start).unwrap_err()
    };
    assert!(matches!(
        err(Some("b"), "a", 0),
        ReplicationError::BaseNotOlder { .. }
    ));
    assert!(matches!(
        err(Some("a"), "a", 0),
        ReplicationError::SameSnapshot(_)
    ));
    assert!(matches!(
        err(Some("a"), "b", SIZE + 1),
        ReplicationError::OffsetPastEnd { .. }
    ));
    assert!(matches!(err(None, "nope", 0), ReplicationError::Store(_)));
    assert!(matches!(
        err(Some("nope"), "b", 0),
        ReplicationError::Store(_)
    ));
    s.delete_snapshot(s.snapshot_by_name("a").unwrap().id)
        .unwrap();
    assert!(MapQuery::new(&s, Some("a"), "b", 0).is_err());
}
