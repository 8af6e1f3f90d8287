use super::bitmap;
use super::node::{Child, Key, Node, TreeKind};
use super::snapshot_record::{SnapshotRecord, SnapshotState};
use super::superblock::{FullPolicy, Superblock, SuperblockFault};
use super::*;

fn sample_sb() -> Superblock {
    Superblock {
        generation: 7,
        volume_uuid: [3; 16],
        chunk_size: 65536,
        origin_size: 1 << 30,
        store_blocks: 100_000,
        bitmap_start: 2,
        bitmap_blocks: 4,
        bitmap_copy: 1,
        full_policy: FullPolicy::Error,
        exception_root: 20,
        snapshot_root: 21,
        next_snapshot_id: 5,
        exception_count: 9,
        used_blocks: 30,
        copies_total: 11,
        created_at_ns: 123,
        private_root: 22,
        invalidated_total: 0,
        volume_name: "default".into(),
        origin_path: "origin.raw".into(),
    }
}

#[test]
fn superblock_round_trip() {
    let sb = sample_sb();
    let packed = sb.pack();
    assert_eq!(Superblock::unpack(&packed).unwrap(), sb);
}

#[test]
fn superblock_rejects_foreign_newer_and_corrupt() {
    let mut packed = sample_sb().pack();
    assert_eq!(
        Superblock::unpack(&vec![0u8; BLOCK_SIZE]),
        Err(SuperblockFault::NoMagic)
    );
    packed[200] ^= 0xff;
    assert!(matches!(
        Superblock::unpack(&packed),
        Err(SuperblockFault::Corrupt(_))
    ));
    let mut newer = sample_sb().pack();
    put_u32(&mut newer, 4, FORMAT_VERSION + 1);
    assert_eq!(
        Superblock::unpack(&newer),
        Err(SuperblockFault::Version(FORMAT_VERSION + 1))
    );
}

#[test]
fn superblock_sanity_catches_bad_fields() {
    let mut sb = sample_sb();
    sb.chunk_size = 3000;
    assert!(sb.sanity().is_err());
    let mut sb = sample_sb();
    sb.exception_root = 1;
    assert!(sb.sanity().is_err());
}

#[test]
fn leaf_and_internal_round_trip() {
    let mut leaf = Node::new_leaf(TreeKind::Exceptions);
    for i in 0..TreeKind::Exceptions.leaf_capacity() as u64 {
        leaf.keys.push(Key::new(i, i * 2));
        leaf.values.extend_from_slice(&[i as u8; 16]);
    }
    let packed = leaf.pack(42, 9);
    assert_eq!(Node::unpack(&packed, 42).unwrap(), (leaf, 9));
    assert!(
        Node::unpack(&packed, 43).is_err(),
        "misdirected node must be caught"
    );

    let mut int = Node::new_internal(TreeKind::Snapshots, 2);
    int.keys.push(Key::new(1, 0));
    int.children.push(Child {
        block: 77,
        stamp: 5,
    });
    int.keys.push(Key::new(9, 0));
    int.children.push(Child {
        block: 78,
        stamp: 12,
    });
    let packed = int.pack(50, 1);
    assert_eq!(Node::unpack(&packed, 50).unwrap().0, int);
}

#[test]
fn node_rejects_unsorted_keys() {
    let mut leaf = Node::new_leaf(TreeKind::Exceptions);
    leaf.keys = vec![Key::new(2, 0), Key::new(1, 0)];
    leaf.values = vec![0; 32];
    assert!(Node::unpack(&leaf.pack(10, 1), 10).is_err());
}

#[test]
fn bitmap_block_round_trip() {
    let bits = vec![0xa5u8; BLOCK_SIZE - bitmap::BITS_OFFSET];
    let packed = bitmap::pack(3, 1, &bits);
    assert_eq!(bitmap::unpack(&packed, 3, 1).unwrap(), &bits[..]);
    assert!(bitmap::unpack(&packed, 4, 1).is_err());
    assert!(bitmap::unpack(&packed, 3, 2).is_err());
}

#[test]
fn snapshot_record_round_trip() {
    let r = SnapshotRecord {
        created_at_ns: 99,
        writable: true,
        state: SnapshotState::Ready,
        name: "nightly-2026-11-24".into(),
    };
    assert_eq!(SnapshotRecord::unpack(&r.pack()).unwrap(), r);
}
