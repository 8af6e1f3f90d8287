//! A snapshot's allocation map over a sparse origin: chunks the snapshot reads from the
//! origin report exactly the origin's holes, chunks it reads from the store are data, no hole
//! is ever reported over bytes that read as non-zero, and the whole map costs one question to
//! the origin device, not one per chunk or per run of origin chunks between store copies (a
//! file's SEEK_HOLE may walk everything up to the next hole: a question per chunk made the map
//! of a large tmpfs origin cost the square of its size, and one per run still walked to the
//! file's end once per store copy).

use multisnap_store::{BlockDev, CreateOptions, MemDev, Store, View};
use parking_lot::Mutex;
use proptest::prelude::*;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const BLOCK: u64 = 4096;
const CHUNK: u64 = 4 * BLOCK;
const CHUNKS: u64 = 48;
const SIZE: u64 = CHUNKS * CHUNK;

/// A memory device that knows which 4 KiB blocks were ever written, the way a sparse file
/// does, and counts the allocation questions it is asked.
struct SparseDev {
    data: MemDev,
    written: Mutex<Vec<bool>>,
    questions: AtomicU64,
}

impl SparseDev {
    fn new() -> SparseDev {
        SparseDev {
            data: MemDev::new(SIZE),
            written: Mutex::new(vec![false; (SIZE / BLOCK) as usize]),
            questions: AtomicU64::new(0),
        }
    }
}

impl BlockDev for SparseDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut w = self.written.lock();
        for b in offset / BLOCK..(offset + buf.len() as u64).div_ceil(BLOCK) {
            w[b as usize] = true;
        }
        self.data.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.data.flush()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(SIZE)
    }
    fn grow_to(&self, size: u64) -> io::Result<()> {
        if size > SIZE {
            return Err(io::Error::other("fixed size"));
        }
        Ok(())
    }
    fn allocation(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        self.questions.fetch_add(1, Ordering::Relaxed);
        let w = self.written.lock();
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let n = (BLOCK - pos % BLOCK).min(offset + len - pos);
            let data = w[(pos / BLOCK) as usize];
            match out.last_mut() {
                Some((l, d)) if *d == data => *l += n,
                _ => out.push((n, data)),
            }
            pos += n;
        }
        Ok(out)
    }
}

/// The map as one flag per byte-block, from `(length, data)` runs that must tile the range.
fn per_block(runs: &[(u64, bool)]) -> Vec<bool> {
    let mut out = Vec::new();
    for &(len, data) in runs {
        assert_eq!(len % BLOCK, 0, "runs here are whole blocks: {runs:?}");
        out.extend(std::iter::repeat_n(data, (len / BLOCK) as usize));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_snapshot_map_is_the_origins_holes_beside_the_stores_copies(
        filled in proptest::collection::vec(any::<bool>(), (SIZE / BLOCK) as usize),
        copied in proptest::collection::vec(any::<bool>(), CHUNKS as usize),
        part in (0..SIZE / BLOCK, 0..=SIZE / BLOCK),
    ) {
        let origin = Arc::new(SparseDev::new());
        for (b, _) in filled.iter().enumerate().filter(|(_, f)| **f) {
            origin.write_at(&[0xa5; BLOCK as usize], b as u64 * BLOCK).unwrap();
        }
        let opts = CreateOptions { chunk_size: CHUNK as u32, ..Default::default() };
        let store = Store::create(origin.clone(), Arc::new(MemDev::new(4 << 20)), &opts).unwrap();
        let snap = store.create_snapshot("s").unwrap().id;
        for (c, _) in copied.iter().enumerate().filter(|(_, x)| **x) {
            store.write_origin(c as u64 * CHUNK, &[0x3c; CHUNK as usize]).unwrap();
        }
        store.flush().unwrap();

        let before = origin.questions.load(Ordering::Relaxed);
        let map = store.allocation(View::Snapshot(snap), 0, SIZE).unwrap();
        let asked = origin.questions.load(Ordering::Relaxed) - before;
        let blocks = per_block(&map);
        prop_assert_eq!(blocks.len() as u64, SIZE / BLOCK);

        let mut image = vec![0u8; SIZE as usize];
        store.read(View::Snapshot(snap), 0, &mut image).unwrap();
        for (b, data) in blocks.iter().enumerate() {
            let bytes = &image[b * BLOCK as usize..(b + 1) * BLOCK as usize];
            prop_assert!(*data || bytes.iter().all(|&x| x == 0), "a hole over data at block {}", b);
            let c = b as u64 * BLOCK / CHUNK;
            if !copied[c as usize] {
                prop_assert_eq!(*data, filled[b], "block {} of chunk {}, read from the origin", b, c);
            }
        }
        // One question, unless no chunk reads from the origin.
        let from_origin = copied.iter().any(|x| !*x);
        prop_assert_eq!(asked, u64::from(from_origin), "questions to the origin");

        // Any part of the range, chunk-aligned or not, maps as the whole map does there.
        let (a, b) = (part.0.min(part.1), part.0.max(part.1));
        if a < b {
            let map = store.allocation(View::Snapshot(snap), a * BLOCK, (b - a) * BLOCK).unwrap();
            prop_assert_eq!(&per_block(&map)[..], &blocks[a as usize..b as usize], "blocks {}..{}", a, b);
        }
    }
}
