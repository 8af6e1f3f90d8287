//! Set-ups and checks the store's integration tests share. Each test file is its own crate
//! and uses only some of them.
#![allow(dead_code)]

use multisnap_store::{verify, CreateOptions, MemDev, Store, View};
use std::sync::Arc;

/// Default options with chunks of `chunk_size` bytes.
pub fn chunk_opts(chunk_size: u32) -> CreateOptions {
    CreateOptions {
        chunk_size,
        ..Default::default()
    }
}

/// A new store on memory devices of the given sizes, with both devices, so a test can take
/// their images or reopen the store on them.
pub fn mem_store(
    origin_bytes: u64,
    store_bytes: u64,
    opts: &CreateOptions,
) -> (Arc<MemDev>, Arc<MemDev>, Store) {
    let origin = Arc::new(MemDev::new(origin_bytes));
    let dev = Arc::new(MemDev::new(store_bytes));
    let store = Store::create(origin.clone(), dev.clone(), opts).unwrap();
    (origin, dev, store)
}

/// `len` bytes at `offset` as `view` sees them.
pub fn read(store: &Store, view: View, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    store.read(view, offset, &mut b).unwrap();
    b
}

/// Flushes the store and checks what is on its device (against an origin of `origin_size`
/// bytes when given).
pub fn assert_clean(store: &Store, origin_size: Option<u64>) {
    store.flush().unwrap();
    let report = verify(&**store.store_dev(), origin_size).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// An image as the workload knows it: what a completed flush fixed, and the writes since.
#[derive(Clone, Debug)]
pub struct Image {
    pub durable: Vec<u8>,
    pub unflushed: Vec<(u64, Vec<u8>)>,
    pub current: Vec<u8>,
}

impl Image {
    pub fn new(data: Vec<u8>) -> Image {
        Image {
            durable: data.clone(),
            unflushed: Vec::new(),
            current: data,
        }
    }
    pub fn issue(&mut self, offset: u64, data: &[u8]) {
        self.unflushed.push((offset, data.to_vec()));
    }
    pub fn acknowledged(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.current[o..o + data.len()].copy_from_slice(data);
    }
    pub fn flushed(&mut self) {
        self.durable = self.current.clone();
        self.unflushed.clear();
    }
    /// Grows the image with zeros (a resize: the extension is durable when it returns).
    pub fn grow(&mut self, size: usize) {
        self.durable.resize(size, 0);
        self.current.resize(size, 0);
    }
    /// The first byte that is neither what the last completed flush left nor what a write
    /// since put there.
    pub fn unexplained(&self, found: &[u8]) -> Option<usize> {
        found.iter().enumerate().position(|(i, &b)| {
            b != self.durable[i]
                && !self.unflushed.iter().any(|(off, d)| {
                    (*off as usize..*off as usize + d.len()).contains(&i)
                        && d[i - *off as usize] == b
                })
        })
    }
    /// Each byte is what the last completed flush left or what a write since put there.
    pub fn check(&self, found: &[u8], what: &str) {
        for (i, &b) in found.iter().enumerate() {
            if b == self.durable[i] {
                continue;
            }
            let explained = self.unflushed.iter().any(|(off, d)| {
                (*off as usize..*off as usize + d.len()).contains(&i) && d[i - *off as usize] == b
            });
            assert!(
                explained,
                "{what}: byte {i} is {b:#x}, which no write put there"
            );
        }
    }
}

/// Random cases per property test: `default`, or `MULTISNAP_PROPTEST_CASES` for soak runs.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("MULTISNAP_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `len` bytes that differ from their neighbours and from another `fill`'s, so a byte in the
/// wrong place shows.
pub fn pattern(fill: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| fill.wrapping_add((i as u8).wrapping_mul(29)) ^ (i >> 8) as u8)
        .collect()
}

/// An origin and a store device on one power rail, from disk images.
pub struct Rig {
    pub rail: Arc<multisnap_store::fault::PowerRail>,
    pub origin: Arc<multisnap_store::fault::CrashDev>,
    pub store_dev: Arc<multisnap_store::fault::CrashDev>,
}

pub fn rig(rail: Arc<multisnap_store::fault::PowerRail>, origin: Vec<u8>, store: Vec<u8>) -> Rig {
    use multisnap_store::fault::CrashDev;
    Rig {
        origin: Arc::new(CrashDev::from_image(rail.clone(), origin)),
        store_dev: Arc::new(CrashDev::from_image(rail.clone(), store)),
        rail,
    }
}
