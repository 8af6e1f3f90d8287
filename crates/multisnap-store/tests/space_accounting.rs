//! The store's space report tells data from metadata from the journal's reservation, exactly:
//! data is one chunk per exception and per writable snapshot's own chunk, the parts add up to
//! the blocks in use, and the node count kept while running equals the one counted on open.

mod common;
use common::*;
use multisnap_store::{CreateOptions, SnapshotId, Store, StoreStats, View};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    WriteOrigin {
        chunk: u64,
        len_chunks: u64,
        byte: u8,
    },
    Snapshot {
        writable: bool,
    },
    WriteSnapshot {
        pick: usize,
        chunk: u64,
        byte: u8,
    },
    Delete {
        pick: usize,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CHUNKS, 1..4u64, any::<u8>())
            .prop_map(|(chunk, len_chunks, byte)| Op::WriteOrigin { chunk, len_chunks, byte }),
        2 => any::<bool>().prop_map(|writable| Op::Snapshot { writable }),
        3 => (any::<usize>(), 0..CHUNKS, any::<u8>())
            .prop_map(|(pick, chunk, byte)| Op::WriteSnapshot { pick, chunk, byte }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => Just(Op::Flush),
    ]
}

/// What the test knows independently of the store: live writable snapshots' written chunks.
#[derive(Default)]
struct Known {
    snapshots: Vec<(SnapshotId, bool)>,
    private: BTreeSet<(u64, u64)>,
}

fn check(stats: &StoreStats, known: &Known, journal: u64) {
    assert_eq!(
        stats.used_bytes,
        stats.data_bytes + stats.metadata_bytes + stats.journal_size_bytes,
        "{stats:?}"
    );
    assert_eq!(stats.journal_size_bytes, journal);
    let chunks = stats.exceptions + known.private.len() as u64;
    assert_eq!(stats.data_bytes, chunks * CHUNK, "{stats:?}");
    assert!(stats.metadata_bytes >= 5 * 4096, "{stats:?}");
}

fn run(ops: &[Op], journal_bytes: u64) {
    let opts = CreateOptions {
        journal_bytes,
        ..chunk_opts(CHUNK as u32)
    };
    let (origin, dev, store) = mem_store(CHUNKS * CHUNK, 4 << 20, &opts);
    let journal = store.stats().journal_size_bytes;
    assert_eq!(journal > 0, journal_bytes > 0);
    let mut known = Known::default();
    let mut names = 0;
    for op in ops {
        match op {
            Op::WriteOrigin {
                chunk,
                len_chunks,
                byte,
            } => {
                let len = (*len_chunks).min(CHUNKS - chunk) * CHUNK;
                store
                    .write_origin(chunk * CHUNK, &vec![*byte; len as usize])
                    .unwrap();
            }
            Op::Snapshot { writable } => {
                names += 1;
                let info = store
                    .create_snapshot_with(&format!("s{names}"), *writable)
                    .unwrap();
                known.snapshots.push((info.id, *writable));
            }
            Op::WriteSnapshot { pick, chunk, byte } => {
                let writable: Vec<SnapshotId> = known
                    .snapshots
                    .iter()
                    .filter(|(_, w)| *w)
                    .map(|(id, _)| *id)
                    .collect();
                if let Some(id) = writable.get(pick % writable.len().max(1)) {
                    store
                        .write_snapshot(*id, chunk * CHUNK, &vec![*byte; CHUNK as usize])
                        .unwrap();
                    known.private.insert((id.0, *chunk));
                }
            }
            Op::Delete { pick } => {
                if !known.snapshots.is_empty() {
                    let (id, _) = known.snapshots.remove(pick % known.snapshots.len());
                    store.delete_snapshot(id).unwrap();
                    store.reclaim_all().unwrap();
                    known.private.retain(|(s, _)| *s != id.0);
                }
            }
            Op::Flush => store.flush().unwrap(),
        }
        check(&store.stats(), &known, journal);
    }
    store.flush().unwrap();
    let before = store.stats();
    drop(store);
    // Counted again from the trees on open: the same figures.
    let reopened = Store::open(origin, dev, 1 << 20).unwrap();
    let after = reopened.stats();
    assert_eq!(
        (after.data_bytes, after.metadata_bytes, after.used_bytes),
        (before.data_bytes, before.metadata_bytes, before.used_bytes)
    );
    check(&after, &known, journal);
    let _ = read(&reopened, View::Origin, 0, CHUNK as usize);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn space_parts_add_up_and_survive_reopen(
        ops in proptest::collection::vec(op(), 1..80),
        journal in prop_oneof![Just(0u64), Just(64 * 1024u64)],
    ) {
        run(&ops, journal);
    }
}

/// A fresh volume's space is metadata and the journal's reservation; none of it is data.
#[test]
fn an_empty_volume_holds_no_data() {
    let opts = CreateOptions {
        journal_bytes: 1 << 20,
        ..chunk_opts(65536)
    };
    let (_, _, store) = mem_store(64 << 20, 80 << 20, &opts);
    let s = store.stats();
    assert_eq!(s.data_bytes, 0);
    assert_eq!(s.journal_size_bytes, 1 << 20);
    // Two superblocks, both bitmap copies (sized for eight times the store, 32576 blocks a
    // bitmap block), three empty tree roots.
    let bitmap_blocks = (8 * (80u64 << 20) / 4096).div_ceil(32576);
    assert_eq!(s.metadata_bytes, (2 + 2 * bitmap_blocks + 3) * 4096);
    let _ = Arc::new(store);
}
