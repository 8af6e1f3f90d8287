//! Growing a volume: what every view reads afterwards, what is refused, and power cuts at
//! every write of a resize with writes before and after it.

mod common;

use common::{read, Image};
use multisnap_store::fault::{CrashDev, PowerRail};
use multisnap_store::{
    read_superblock, verify, BlockDev, CreateOptions, ErrorKind, MemDev, Store, StoreError, View,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;

const CHUNK: u32 = 4096;
/// Not chunk multiples: the last chunk is partial before and after.
const OLD: u64 = 96 * 1024 + 1536;
const NEW: u64 = 160 * 1024 + 512;
const STORE: u64 = 1024 * 1024;
const NEW_STORE: u64 = 1536 * 1024;

fn opts() -> CreateOptions {
    CreateOptions {
        chunk_size: CHUNK,
        cache_bytes: 0,
        // Small enough to fit the store: the journal's replay must respect the sizes too.
        journal_bytes: 64 * 1024,
        ..Default::default()
    }
}

#[test]
fn old_snapshots_keep_their_size_and_contents() {
    let (origin, dev, store) = common::mem_store(OLD, STORE, &opts());
    assert!(!read_superblock(&*dev).unwrap().sized_snapshots);
    store.write_origin(0, &vec![1; OLD as usize]).unwrap();
    let old = store.create_snapshot("old").unwrap();
    let scratch = store.create_snapshot_with("scratch", true).unwrap();
    assert_eq!((old.size, scratch.size), (OLD, OLD));

    store.resize(NEW, NEW_STORE).unwrap();
    assert_eq!(store.origin_size(), NEW);
    assert_eq!(BlockDev::size(&*origin).unwrap(), NEW);
    assert!(store.stats().store_bytes >= NEW_STORE);
    // The first resize converts the store to format version 4.
    assert!(read_superblock(&*dev).unwrap().sized_snapshots);
    assert_eq!(
        read(&store, View::Origin, OLD, (NEW - OLD) as usize),
        vec![0; (NEW - OLD) as usize]
    );

    // A write across the old end copies out only the chunk the snapshots hold part of.
    let copies = store.stats().copies_total;
    store
        .write_origin(OLD - 100, &vec![2; 3 * CHUNK as usize])
        .unwrap();
    assert_eq!(
        store.stats().copies_total,
        copies + 1,
        "only the old last chunk is copied"
    );
    for snap in [&old, &scratch] {
        let view = View::Snapshot(snap.id);
        assert_eq!(store.view_size(view).unwrap(), OLD);
        assert_eq!(read(&store, view, 0, OLD as usize), vec![1; OLD as usize]);
        let past = store.read(view, OLD - 1, &mut [0; 2]);
        assert!(
            matches!(past, Err(StoreError::OutOfRange { size: OLD, .. })),
            "{past:?}"
        );
    }
    space_adds_up(&store, 0);
    // A writable snapshot keeps its size for writes too.
    store
        .write_snapshot(scratch.id, OLD - 10, &[3; 10])
        .unwrap();
    space_adds_up(&store, 1);
    let past = store.write_snapshot(scratch.id, OLD - 10, &[3; 11]);
    assert!(
        matches!(past, Err(StoreError::OutOfRange { .. })),
        "{past:?}"
    );

    // Since the old snapshot, everything past its end changed; a new snapshot has the new size.
    let new = store.create_snapshot("new").unwrap();
    assert_eq!(new.size, NEW);
    let changed = store
        .changed_extents(old.id, View::Snapshot(new.id), 0, NEW)
        .unwrap();
    let old_last_chunk = OLD / CHUNK as u64 * CHUNK as u64;
    assert_eq!(
        changed,
        vec![(old_last_chunk, false), (NEW - old_last_chunk, true)]
    );

    // Shrinking, and growing past what the store's bitmap can describe, are refused.
    let shrink = store.resize(NEW - 1, NEW_STORE).unwrap_err();
    assert_eq!(shrink.kind(), ErrorKind::OutOfRange);
    assert!(shrink.to_string().contains(&NEW.to_string()), "{shrink}");
    let capacity = store.store_capacity_bytes();
    let too_big = store.resize(NEW * 2, capacity + 4096).unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::OutOfRange);
    assert!(
        too_big.to_string().contains(&capacity.to_string()),
        "{too_big}"
    );
    // The same size again is a no-op.
    store.resize(NEW, NEW_STORE).unwrap();

    common::assert_clean(&store, Some(NEW));
    drop(store);
    let store = Store::open(origin, dev.clone(), 1 << 20).unwrap();
    let sizes: Vec<(String, u64)> = store
        .list_snapshots()
        .into_iter()
        .map(|s| (s.name, s.size))
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("old".into(), OLD),
            ("scratch".into(), OLD),
            ("new".into(), NEW)
        ]
    );
    space_adds_up(&store, 1);
    let mut want = vec![1; OLD as usize];
    want[OLD as usize - 10..].copy_from_slice(&[3; 10]);
    assert_eq!(
        read(&store, View::Snapshot(scratch.id), 0, OLD as usize),
        want
    );
}

/// The store's space parts still add up after it grew, with `private` chunks of writable
/// snapshots besides the exceptions.
fn space_adds_up(store: &Store, private: u64) {
    let s = store.stats();
    assert_eq!(
        s.used_bytes,
        s.data_bytes + s.metadata_bytes + s.journal_size_bytes,
        "{s:?}"
    );
    assert_eq!(
        s.data_bytes,
        (s.exceptions + private) * u64::from(CHUNK),
        "{s:?}"
    );
}

/// A store device that cannot be extended (a block device) must have grown already.
#[test]
fn a_device_that_cannot_grow_must_be_big_enough() {
    struct Fixed(MemDev);
    impl BlockDev for Fixed {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            self.0.flush()
        }
        fn size(&self) -> std::io::Result<u64> {
            self.0.size()
        }
        fn grow_to(&self, size: u64) -> std::io::Result<()> {
            multisnap_store::blockdev::must_hold(self.0.size()?, size)
        }
    }
    let origin = Arc::new(Fixed(MemDev::new(OLD)));
    let dev = Arc::new(MemDev::new(STORE));
    let store = Store::create(origin, dev, &opts()).unwrap();
    let e = store.resize(NEW, STORE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfRange);
    assert!(
        e.to_string().contains("origin") && e.to_string().contains(&OLD.to_string()),
        "{e}"
    );
    assert_eq!(store.origin_size(), OLD);
}

/// What the workload knows when the power goes.
#[derive(Default)]
struct Known {
    origin: Option<Image>,
    /// Acknowledged snapshots: their image (of their own size).
    snapshots: BTreeMap<String, Image>,
    resize_started: bool,
    resize_done: bool,
}

struct Rig {
    rail: Arc<PowerRail>,
    origin: Arc<CrashDev>,
    dev: Arc<CrashDev>,
}

fn base_images() -> (Vec<u8>, Vec<u8>) {
    multisnap_store::fault::set_min_cache_nodes(2);
    let (origin, dev, store) = common::mem_store(OLD, STORE, &opts());
    drop(store);
    (origin.contents(), dev.contents())
}

/// Writes, snapshots (one writable) and flushes; the resize; then writes inside, across and
/// past the old end, a write to the writable snapshot, a new snapshot, flushes.
fn run(base: &(Vec<u8>, Vec<u8>), cut_at: Option<u64>) -> (Rig, Known) {
    let rail = PowerRail::new();
    if let Some(k) = cut_at {
        rail.cut_at_write(k);
    }
    let rig = Rig {
        origin: Arc::new(CrashDev::from_image(rail.clone(), base.0.clone())),
        dev: Arc::new(CrashDev::from_image(rail.clone(), base.1.clone())),
        rail,
    };
    let mut k = Known {
        origin: Some(Image::new(base.0.clone())),
        ..Default::default()
    };
    let Ok(store) = Store::open(rig.origin.clone(), rig.dev.clone(), 0) else {
        return (rig, k);
    };
    let _ = workload(&store, &mut k);
    rig.rail.cut_now();
    drop(store);
    (rig, k)
}

fn origin_write(
    store: &Store,
    k: &mut Known,
    offset: u64,
    fill: u8,
    len: usize,
) -> Result<(), StoreError> {
    let data = vec![fill; len];
    let img = k.origin.as_mut().unwrap();
    img.issue(offset, &data);
    store.write_origin(offset, &data)?;
    img.acknowledged(offset, &data);
    Ok(())
}

fn flush(store: &Store, k: &mut Known) -> Result<(), StoreError> {
    store.flush()?;
    k.origin.as_mut().unwrap().flushed();
    for img in k.snapshots.values_mut() {
        img.flushed();
    }
    Ok(())
}

fn snapshot(store: &Store, k: &mut Known, name: &str, writable: bool) -> Result<(), StoreError> {
    store.create_snapshot_with(name, writable)?;
    let img = k.origin.as_mut().unwrap();
    img.flushed();
    k.snapshots
        .insert(name.into(), Image::new(img.current.clone()));
    Ok(())
}

fn workload(store: &Store, k: &mut Known) -> Result<(), StoreError> {
    origin_write(store, k, 1000, 0x11, 9000)?;
    origin_write(store, k, OLD - 5000, 0x12, 5000)?;
    snapshot(store, k, "before", false)?;
    snapshot(store, k, "scratch", true)?;
    origin_write(store, k, OLD - 3000, 0x13, 3000)?;
    let w = vec![0x14; 6000];
    let img = k.snapshots.get_mut("scratch").unwrap();
    img.issue(OLD - 6000, &w);
    store.write_snapshot(store.snapshot_by_name("scratch")?.id, OLD - 6000, &w)?;
    img.acknowledged(OLD - 6000, &w);
    origin_write(store, k, 20_000, 0x15, 100)?;

    k.resize_started = true;
    store.resize(NEW, NEW_STORE)?;
    k.resize_done = true;
    k.origin.as_mut().unwrap().grow(NEW as usize);

    origin_write(store, k, OLD - 200, 0x21, 8192)?;
    origin_write(store, k, OLD + 30_000, 0x22, 4096)?;
    flush(store, k)?;
    snapshot(store, k, "after", false)?;
    origin_write(store, k, NEW - 700, 0x23, 700)?;
    origin_write(store, k, 500, 0x24, 2 * CHUNK as usize)?;
    flush(store, k)?;
    origin_write(store, k, OLD + 100, 0x25, 300)?;
    Ok(())
}

/// Returns whether the origin was longer than the store recorded (a cut between the origin's
/// extension and the commit).
fn check_recovered(origin_img: Vec<u8>, store_img: Vec<u8>, k: &Known, what: &str) -> bool {
    // The origin as the cut left it: longer than recorded if the resize extended it but its
    // commit did not land, which verify and open both accept.
    let origin_len = origin_img.len() as u64;
    let origin = Arc::new(MemDev::from_vec(origin_img));
    let dev = Arc::new(MemDev::from_vec(store_img));
    let report =
        verify(&*dev, Some(origin_len)).unwrap_or_else(|e| panic!("{what}: no store: {e}"));
    assert!(report.is_clean(), "{what}: verify: {:?}", report.problems);
    let store = Store::open(origin.clone(), dev.clone(), 1 << 20)
        .unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let size = store.origin_size();
    let longer = origin_len > size;
    match (k.resize_started, k.resize_done) {
        (false, _) => assert_eq!(size, OLD, "{what}: grew without a resize"),
        (true, true) => assert_eq!(size, NEW, "{what}: an acknowledged resize was lost"),
        (true, false) => assert!(size == OLD || size == NEW, "{what}: size {size}"),
    }
    let origin_now = read(&store, View::Origin, 0, size as usize);
    let known = k.origin.as_ref().unwrap();
    if size == NEW && !k.resize_done {
        // The resize landed but never returned: no write past the old end was issued.
        assert!(
            origin_now[OLD as usize..].iter().all(|&b| b == 0),
            "{what}: extension"
        );
    }
    let checked = (size as usize).min(known.current.len());
    known.check(&origin_now[..checked], &format!("{what}: origin"));
    for (name, img) in &k.snapshots {
        let info = store
            .snapshot_by_name(name)
            .unwrap_or_else(|e| panic!("{what}: snapshot {name} lost: {e}"));
        assert_eq!(
            info.size,
            img.current.len() as u64,
            "{what}: size of {name}"
        );
        let found = read(&store, View::Snapshot(info.id), 0, info.size as usize);
        img.check(&found, &format!("{what}: snapshot {name}"));
    }

    // The recovered store keeps working: the resize again (or a no-op), writes past the old
    // end, a snapshot, reopen, verify.
    store
        .resize(NEW, NEW_STORE)
        .unwrap_or_else(|e| panic!("{what}: resize after recovery: {e}"));
    store
        .write_origin(OLD, &[0xee; 5000])
        .expect("write after recovery");
    let snap = store
        .create_snapshot("after-recovery")
        .expect("snapshot after recovery");
    store
        .write_origin(OLD, &[0xef; 5000])
        .expect("write after recovery");
    assert_eq!(
        read(&store, View::Snapshot(snap.id), OLD, 5000),
        vec![0xee; 5000],
        "{what}"
    );
    store.flush().expect("flush after recovery");
    drop(store);
    let report = verify(&*dev, Some(NEW)).expect("verify after recovery");
    assert!(
        report.is_clean(),
        "{what}: verify after more work: {:?}",
        report.problems
    );
    let store = Store::open(origin, dev, 1 << 20).expect("reopen");
    assert_eq!(
        read(&store, View::Origin, OLD, 5000),
        vec![0xef; 5000],
        "{what}"
    );
    assert_eq!(store.view_size(View::Snapshot(snap.id)).unwrap(), NEW);
    longer
}

#[test]
fn power_cut_at_every_write_of_a_resize() {
    let base = base_images();
    let (dry, known) = run(&base, None);
    assert!(known.resize_done, "the uncut workload must complete");
    let total = dry.rail.writes();
    eprintln!("resize workload: {total} writes");
    let mut rng = StdRng::seed_from_u64(19);
    let mut longer_origins = 0;
    for cut in 1..=total {
        let (rig, k) = run(&base, Some(cut));
        for (keep, tear) in [(0.0, 0.0), (1.0, 0.0), (0.5, 0.3), (0.5, 0.8)] {
            let o = rig.origin.crash_image(&mut rng, keep, tear);
            let s = rig.dev.crash_image(&mut rng, keep, tear);
            longer_origins += check_recovered(
                o,
                s,
                &k,
                &format!("cut at write {cut}/{total}, keep {keep} tear {tear}"),
            ) as usize;
        }
    }
    assert!(
        longer_origins > 0,
        "no cut fell between the origin's extension and the commit"
    );
}
