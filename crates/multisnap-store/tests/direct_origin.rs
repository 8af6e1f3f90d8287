//! A store whose origin is a real `O_DIRECT` file ([`DirectDev`]): unaligned writes and reads
//! of the origin and of a snapshot match a reference, copy-outs still go through the kernel,
//! flushes sync the origin instead of journaling, and a reopen reads what was flushed.

use multisnap_store::{
    read_superblock, verify, BlockDev, CreateOptions, DirectDev, FileDev, OriginCache, Store, View,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const ORIGIN: u64 = 2 << 20;
const STORE: u64 = 8 << 20;

fn open(dir: &std::path::Path) -> Store {
    let origin: Arc<dyn BlockDev> = Arc::new(DirectDev::open(&dir.join("origin")).unwrap());
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&dir.join("store")).unwrap());
    Store::open(origin, dev, 1 << 20).unwrap()
}

#[test]
fn a_direct_origin_keeps_snapshots_and_flushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    drop(FileDev::create_sparse(&dir.path().join("origin"), ORIGIN).unwrap());
    let dev = Arc::new(FileDev::create_sparse(&dir.path().join("store"), STORE).unwrap());
    let origin = Arc::new(DirectDev::open(&dir.path().join("origin")).unwrap());
    let opts = CreateOptions {
        chunk_size: 64 << 10,
        origin_cache: OriginCache::Direct,
        ..Default::default()
    };
    let store = Store::create(origin, dev.clone(), &opts).unwrap();
    assert_eq!(store.origin_cache(), OriginCache::Direct);
    assert!(store.kernel_copy(), "origin and store share a filesystem");
    let sb = read_superblock(&*dev).unwrap();
    assert_eq!(
        (sb.origin_cache, sb.journal_blocks),
        (OriginCache::Direct, 0)
    );

    let mut model = vec![0u8; ORIGIN as usize];
    let mut rng = StdRng::seed_from_u64(7);
    let write = |store: &Store, model: &mut Vec<u8>, rng: &mut StdRng| {
        // 512-byte aligned (as NBD clients send) or any byte at all.
        let len = if rng.gen() {
            512 * rng.gen_range(1..40)
        } else {
            rng.gen_range(1..20_000)
        };
        let mut offset = rng.gen_range(0..ORIGIN - len as u64);
        if len % 512 == 0 {
            offset &= !511;
        }
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        store.write_origin(offset, &data).unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    };
    for _ in 0..200 {
        write(&store, &mut model, &mut rng);
    }
    let snap = store.create_snapshot("before").unwrap();
    let before = model.clone();
    for _ in 0..200 {
        write(&store, &mut model, &mut rng);
    }
    store.flush().unwrap();
    let stats = store.stats();
    assert!(
        stats.kernel_copies_total > 0,
        "copy-outs went through the kernel"
    );
    assert_eq!(
        stats.journal_batches_total, 0,
        "a direct origin is never journaled"
    );

    let check = |store: &Store| {
        let mut all = vec![0u8; ORIGIN as usize];
        store.read(View::Origin, 0, &mut all).unwrap();
        assert!(all == model, "origin differs from the reference");
        store.read(View::Snapshot(snap.id), 0, &mut all).unwrap();
        assert!(
            all == before,
            "snapshot differs from the data it was taken of"
        );
        // An unaligned read of each.
        let mut piece = vec![0u8; 7777];
        store.read(View::Origin, 12345, &mut piece).unwrap();
        assert_eq!(piece, model[12345..12345 + 7777]);
        store
            .read(View::Snapshot(snap.id), 12345, &mut piece)
            .unwrap();
        assert_eq!(piece, before[12345..12345 + 7777]);
    };
    check(&store);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.origin_cache(), OriginCache::Direct);
    check(&store);
    let store_dev = FileDev::open(&dir.path().join("store")).unwrap();
    assert!(verify(&store_dev, Some(ORIGIN)).unwrap().is_clean());
}
