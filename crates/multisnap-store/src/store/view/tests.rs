use super::*;
use crate::blockdev::{BlockDev, MemDev};
use crate::error::ErrorKind;
use crate::store::CreateOptions;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK: usize = 4096;

fn store_on(origin: Arc<dyn BlockDev>) -> Arc<Store> {
    let dev = Arc::new(MemDev::new(16 << 20));
    // Without a journal every store flush flushes the origin device.
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_bytes: 0,
        ..Default::default()
    };
    Arc::new(Store::create(origin, dev, &opts).unwrap())
}

fn store() -> Arc<Store> {
    store_on(Arc::new(MemDev::new(4 << 20)))
}

fn read(view: &VolumeView, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xee; len];
    view.read(offset, &mut buf).unwrap();
    buf
}

#[test]
fn a_read_only_snapshot_refuses_every_change_as_read_only() {
    let store = store();
    let info = store.create_snapshot("s").unwrap();
    let view = VolumeView::snapshot(store.clone(), &info).unwrap();
    assert!(view.is_read_only());
    let refusals = [
        view.write(0, &[1; 512]),
        view.write_zeroes(0, 512),
        view.discard(0, 512),
    ];
    for r in refusals {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::ReadOnly);
    }
    assert_eq!(read(&view, 0, 512), vec![0; 512]);
}

#[test]
fn origin_zeroes_span_pieces_and_snapshots_keep_what_they_saw() {
    let store = store();
    let origin = VolumeView::origin(store.clone());
    let len = 3 * ZERO_PIECE as usize + 1000;
    origin.write(0, &vec![7; len]).unwrap();
    let snap = store.create_snapshot("s").unwrap();
    origin.write_zeroes(100, len as u64 - 200).unwrap();
    let now = read(&origin, 0, len);
    assert_eq!(&now[..100], &[7; 100][..]);
    assert!(now[100..len - 100].iter().all(|b| *b == 0));
    assert_eq!(&now[len - 100..], &[7; 100][..]);
    let snap = VolumeView::snapshot(store.clone(), &snap).unwrap();
    assert_eq!(read(&snap, 0, len), vec![7; len]);
}

#[test]
fn a_writable_snapshot_takes_writes_of_its_own_and_discards_change_nothing() {
    let store = store();
    let origin = VolumeView::origin(store.clone());
    origin.write(0, &[5; CHUNK]).unwrap();
    let info = store.create_snapshot_with("w", true).unwrap();
    let snap = VolumeView::snapshot(store.clone(), &info).unwrap();
    assert!(!snap.is_read_only());
    snap.write(10, &[6; 10]).unwrap();
    snap.discard(0, CHUNK as u64).unwrap();
    origin.discard(0, CHUNK as u64).unwrap();
    let mut want = vec![5; CHUNK];
    want[10..20].fill(6);
    assert_eq!(read(&snap, 0, CHUNK), want);
    assert_eq!(read(&origin, 0, CHUNK), vec![5; CHUNK]);
    assert_eq!(
        origin.discard(store.origin_size(), 1).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn a_snapshot_that_is_not_ready_cannot_be_served() {
    let store = store();
    let mut info = store.create_snapshot("s").unwrap();
    info.state = SnapshotState::Invalid;
    assert!(VolumeView::snapshot(store, &info).is_none());
}

/// A ublk-style caller (a FUA write is a write and a flush; flushes come in bursts): one
/// store flush answers every flush whose writes it covers, whoever wrote them.
#[test]
fn view_flushes_share_one_store_flush_until_a_write_returns() {
    let store = store();
    let origin = VolumeView::origin(store.clone());
    let store_flushes = || store.stats().flushes.count;
    origin.flush().unwrap();
    assert_eq!(store_flushes(), 0, "nothing written yet");
    origin.write(0, &[1; CHUNK]).unwrap();
    for _ in 0..3 {
        origin.flush().unwrap();
    }
    assert_eq!(
        store_flushes(),
        1,
        "the later flushes were covered by the first"
    );
    // Writes made without a view count as well.
    store.write_origin(0, &[2; CHUNK]).unwrap();
    origin.flush().unwrap();
    assert_eq!(store_flushes(), 2);
    // A write that fails may have changed bytes: it counts too.
    let snap = store.create_snapshot("s").unwrap();
    let snap = VolumeView::snapshot(store.clone(), &snap).unwrap();
    assert!(store
        .write_snapshot(
            match snap.view() {
                View::Snapshot(id) => id,
                View::Origin => unreachable!(),
            },
            0,
            &[3; 16]
        )
        .is_err());
    snap.flush().unwrap();
    assert_eq!(
        store_flushes(),
        3,
        "a view of any image flushes the whole volume"
    );
    // Store::flush covers more than writes (shutdown, management calls): it never skips.
    store.flush().unwrap();
    assert_eq!(store_flushes(), 4);
}

/// An origin that keeps, as its durable image, what it held when its latest flush started.
struct RecordsDurableImage {
    inner: MemDev,
    flushes_started: AtomicU64,
    durable: Mutex<(u64, Vec<u8>)>,
}

impl BlockDev for RecordsDurableImage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        let started = self.flushes_started.fetch_add(1, Ordering::SeqCst) + 1;
        let mut image = vec![0; self.inner.size()? as usize];
        self.inner.read_at(&mut image, 0)?;
        std::thread::yield_now();
        let mut durable = self.durable.lock();
        if durable.0 < started {
            *durable = (started, image);
        }
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn grow_to(&self, size: u64) -> std::io::Result<()> {
        self.inner.grow_to(size)
    }
}

/// Threads doing FUA writes at once, as ublk queues do: when each write's flush returns, the
/// origin's durable image holds that write.
#[test]
fn every_fua_write_is_durable_when_its_flush_returns_under_contention() {
    let device = Arc::new(RecordsDurableImage {
        inner: MemDev::new(1 << 20),
        flushes_started: AtomicU64::new(0),
        durable: Mutex::new((0, Vec::new())),
    });
    let store = store_on(device.clone());
    let origin = VolumeView::origin(store.clone());
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (origin, device) = (&origin, &device);
            s.spawn(move || {
                let at = t as usize * CHUNK;
                for i in 0..100u8 {
                    let data = [t.wrapping_mul(101).wrapping_add(i); 512];
                    origin.write(at as u64, &data).unwrap();
                    origin.flush().unwrap();
                    let durable = device.durable.lock();
                    assert_eq!(&durable.1[at..at + 512], &data[..], "thread {t} write {i}");
                }
            });
        }
    });
    assert!(store.stats().flushes.count <= 400);
}
