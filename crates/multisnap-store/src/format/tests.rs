use super::bitmap;
use super::node::{Child, Key, Node, TreeKind};
use super::snapshot_record::{SnapshotRecord, SnapshotState};
use super::superblock::{FullPolicy, OriginCache, Superblock, SuperblockFault};
use super::*;

pub(crate) fn sample_sb() -> Superblock {
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
        replica_source: [0; 16],
        receive: None,
        volume_name: "default".into(),
        origin_path: "origin.raw".into(),
        journal_start: 10,
        journal_blocks: 8,
        journal_epoch: 3,
        sized_snapshots: false,
        revert: None,
        clone_format: false,
        clone: None,
        origin_cache: OriginCache::Buffered,
    }
}

#[test]
fn superblock_round_trip() {
    let sb = sample_sb();
    let packed = sb.pack();
    assert_eq!(Superblock::unpack(&packed).unwrap(), sb);
    let mut receiving = sample_sb();
    receiving.replica_source = [9; 16];
    receiving.receive = Some(superblock::ReceiveState {
        staging: 4,
        base: 2,
        flags: superblock::RECEIVE_RESUMABLE,
        token: vec![7; 52],
    });
    assert_eq!(Superblock::unpack(&receiving.pack()).unwrap(), receiving);
}

#[test]
fn superblock_rejects_unknown_receive_flags() {
    let mut sb = sample_sb();
    sb.receive = Some(superblock::ReceiveState {
        staging: 4,
        base: 0,
        flags: 0x80,
        token: vec![],
    });
    assert!(matches!(
        Superblock::unpack(&sb.pack()),
        Err(SuperblockFault::Corrupt(_))
    ));
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
        source_id: 41,
        name: "nightly-2026-11-24".into(),
        size: (1 << 40) + 4097,
    };
    assert_eq!(SnapshotRecord::unpack(&r.pack()).unwrap(), r);
}

/// Pins the byte offsets documented in docs/FORMAT.md: if a field moves, this fails until the
/// document (and, for an incompatible change, the format version) is updated with it.
#[test]
fn documented_offsets_are_the_packed_offsets() {
    use crate::checksum::{block_checksum, BITMAP_SALT, JOURNAL_SALT, NODE_SALT, SUPERBLOCK_SALT};

    // Checksum rule and salts.
    assert_eq!(SUPERBLOCK_SALT, 0x5355_5052);
    assert_eq!(NODE_SALT, 0x4E4F_4445);
    assert_eq!(BITMAP_SALT, 0x424D_4150);
    assert_eq!(JOURNAL_SALT, 0x4A52_4E4C);
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(block_checksum(&[0u8; BLOCK_SIZE], NODE_SALT), 0xD6B6_05CC);
    let mut sealed = vec![0x5au8; BLOCK_SIZE];
    sealed[..4].copy_from_slice(&[1, 2, 3, 4]);
    let mut zeroed = sealed.clone();
    zeroed[..4].fill(0);
    assert_eq!(
        block_checksum(&sealed, BITMAP_SALT),
        crc32c::crc32c(&zeroed) ^ BITMAP_SALT,
        "the checksum field is taken as zero"
    );

    // Superblock: distinctive values, so a field landing at another's offset shows.
    let mut sb = sample_sb();
    sb.generation = 0x1011_1213_1415_1617;
    sb.volume_uuid = std::array::from_fn(|i| 0xA0 + i as u8);
    sb.chunk_size = 1 << 17;
    sb.origin_size = 0x2021_2223_2425_2627;
    sb.store_blocks = 0x3031_3233_3435_3637;
    sb.bitmap_start = 0x4041_4243_4445_4647;
    sb.bitmap_blocks = 0x5051_5253_5455_5657;
    sb.bitmap_copy = 1;
    sb.full_policy = FullPolicy::InvalidateOldest;
    sb.exception_root = 0x6061_6263_6465_6667;
    sb.snapshot_root = 0x7071_7273_7475_7677;
    sb.next_snapshot_id = 0x8081_8283_8485_8687;
    sb.exception_count = 0x9091_9293_9495_9697;
    sb.used_blocks = 0xA0A1_A2A3_A4A5_A6A7;
    sb.copies_total = 0xB0B1_B2B3_B4B5_B6B7;
    sb.created_at_ns = 0xC0C1_C2C3_C4C5_C6C7;
    sb.private_root = 0xD0D1_D2D3_D4D5_D6D7;
    sb.invalidated_total = 0xE0E1_E2E3_E4E5_E6E7;
    sb.journal_start = 0x1213_1415_1617_1819;
    sb.journal_blocks = 0x2223_2425_2627_2829;
    sb.journal_epoch = 0x3233_3435_3637_3839;
    sb.replica_source = std::array::from_fn(|i| 0x10 + i as u8);
    sb.receive = Some(superblock::ReceiveState {
        staging: 0xF0F1_F2F3_F4F5_F6F7,
        base: 0x0A0B_0C0D_0E0F_0A0B,
        flags: 3,
        token: (0..56).map(|i| 0x40 + i as u8).collect(),
    });
    sb.volume_name = "vol-\u{e9}".into();
    sb.origin_path = "/var/lib/multisnap/vol/origin.raw".into();
    let b = sb.pack();
    assert_eq!(b.len(), 4096);
    assert_eq!(get_u32(&b, 0), block_checksum(&b, SUPERBLOCK_SALT));
    assert_eq!(
        get_u32(&b, 4),
        3,
        "nothing of version 4 in use: written as version 3"
    );
    assert_eq!(FORMAT_VERSION, 6);
    assert_eq!(SIZED_VERSION, 4);
    assert_eq!(OLDEST_READABLE_VERSION, 2);
    assert_eq!(&b[8..16], b"MSNAPSTR");
    assert_eq!(get_u64(&b, 16), sb.generation);
    assert_eq!(&b[24..40], &sb.volume_uuid[..]);
    assert_eq!(get_u32(&b, 40), 1 << 17);
    assert_eq!(get_u32(&b, 44), 4096);
    assert_eq!(get_u64(&b, 48), sb.origin_size);
    assert_eq!(get_u64(&b, 56), sb.store_blocks);
    assert_eq!(get_u64(&b, 64), sb.bitmap_start);
    assert_eq!(get_u64(&b, 72), sb.bitmap_blocks);
    assert_eq!(b[80], 1);
    assert_eq!(b[81], 1);
    assert_eq!(&b[82..88], &[0u8; 6]);
    assert_eq!(get_u64(&b, 88), sb.exception_root);
    assert_eq!(get_u64(&b, 96), sb.snapshot_root);
    assert_eq!(get_u64(&b, 104), sb.next_snapshot_id);
    assert_eq!(get_u64(&b, 112), sb.exception_count);
    assert_eq!(get_u64(&b, 120), sb.used_blocks);
    assert_eq!(get_u64(&b, 128), sb.copies_total);
    assert_eq!(get_u64(&b, 136), sb.created_at_ns);
    assert_eq!(get_u64(&b, 144), sb.private_root);
    assert_eq!(get_u64(&b, 152), sb.invalidated_total);
    assert_eq!(&b[160..176], &sb.replica_source[..]);
    assert_eq!(
        get_u64(&b, 176),
        0xF0F1_F2F3_F4F5_F6F7,
        "receive staging id"
    );
    assert_eq!(get_u64(&b, 184), 0x0A0B_0C0D_0E0F_0A0B, "receive base id");
    assert_eq!(get_u32(&b, 192), 3, "receive flags");
    assert_eq!(get_u16(&b, 196), 56, "receive token length");
    assert_eq!(b[198], 0x40);
    assert_eq!(b[253], 0x40 + 55);
    assert_eq!(&b[254..256], &[0u8; 2]);
    assert_eq!(superblock::MAX_RECEIVE_TOKEN, 56);
    let name = sb.volume_name.as_bytes();
    assert_eq!(b[256] as usize, name.len());
    assert_eq!(&b[257..257 + name.len()], name);
    assert!(b[257 + name.len()..320].iter().all(|&x| x == 0));
    let path = sb.origin_path.as_bytes();
    assert_eq!(get_u16(&b, 320) as usize, path.len());
    assert_eq!(&b[322..322 + path.len()], path);
    assert!(b[322 + path.len()..1344].iter().all(|&x| x == 0));
    assert_eq!(322 + superblock::MAX_ORIGIN_PATH, 1344);
    assert_eq!(get_u64(&b, 1344), sb.journal_start);
    assert_eq!(get_u64(&b, 1352), sb.journal_blocks);
    assert_eq!(get_u64(&b, 1360), sb.journal_epoch);
    assert!(b[1368..].iter().all(|&x| x == 0));
    assert_eq!(superblock::MAX_VOLUME_NAME, 63);

    // Node header and entries.
    let mut leaf = Node::new_leaf(TreeKind::Exceptions);
    let e = super::exception::Exception {
        chunk: crate::ids::OriginChunk(0x0102_0304_0506_0708),
        first: crate::ids::SnapshotId(0x1112_1314_1516_1718),
        last: crate::ids::SnapshotId(0x2122_2324_2526_2728),
        store: crate::ids::StoreChunk(0x3132_3334_3536_3738),
    };
    leaf.keys.push(e.key());
    leaf.values.extend_from_slice(&e.value());
    let b = leaf.pack(0x4142_4344_4546_4748, 0x5152_5354_5556_5758);
    assert_eq!(get_u32(&b, 0), block_checksum(&b, NODE_SALT));
    assert_eq!(&b[4..8], &[0u8; 4]);
    assert_eq!(get_u64(&b, 8), 0x4142_4344_4546_4748);
    assert_eq!(get_u64(&b, 16), 0x5152_5354_5556_5758);
    assert_eq!(get_u16(&b, 24), 1);
    assert_eq!(get_u16(&b, 26), 16);
    assert_eq!(b[28], 1);
    assert_eq!(b[29], 0);
    assert_eq!(get_u16(&b, 30), 0);
    assert_eq!(get_u64(&b, 32), e.chunk.0, "key hi: origin chunk");
    assert_eq!(get_u64(&b, 40), e.last.0, "key lo: last snapshot");
    assert_eq!(get_u64(&b, 48), e.first.0, "value: first snapshot");
    assert_eq!(get_u64(&b, 56), e.store.0, "value: store chunk");
    assert!(b[64..].iter().all(|&x| x == 0));

    let mut int = Node::new_internal(TreeKind::Snapshots, 3);
    int.keys.push(Key::new(0x6162_6364_6566_6768, 0));
    int.children.push(Child {
        block: 0x7172_7374_7576_7778,
        stamp: 0x8182_8384_8586_8788,
    });
    let b = int.pack(99, 1);
    assert_eq!(get_u16(&b, 26), 160);
    assert_eq!(b[28], 2);
    assert_eq!(get_u16(&b, 30), 3);
    assert_eq!(get_u64(&b, 32), 0x6162_6364_6566_6768);
    assert_eq!(get_u64(&b, 40), 0);
    assert_eq!(get_u64(&b, 48), 0x7172_7374_7576_7778, "child block");
    assert_eq!(get_u64(&b, 56), 0x8182_8384_8586_8788, "child stamp");
    assert_eq!(node::ENTRIES_OFFSET, 32);
    assert_eq!(TreeKind::Exceptions.leaf_capacity(), 127);
    assert_eq!(TreeKind::Snapshots.leaf_capacity(), 23);
    assert_eq!(TreeKind::Exceptions.internal_capacity(), 127);
    assert_eq!(TreeKind::Snapshots.internal_capacity(), 127);
    assert_eq!(TreeKind::Private as u8, 3);
    assert_eq!(TreeKind::Private.value_size(), 16);
    assert_eq!(TreeKind::Private.leaf_capacity(), 127);
    let private = super::exception::private_value(crate::ids::StoreChunk(0x0123_4567_89AB_CDEF));
    assert_eq!(get_u64(&private, 0), 0x0123_4567_89AB_CDEF);
    assert_eq!(get_u64(&private, 8), 0);

    // Bitmap block.
    let mut bits = vec![0u8; BLOCK_SIZE - bitmap::BITS_OFFSET];
    bits[0] = 0b0000_0101;
    bits[4071] = 0x80;
    let b = bitmap::pack(0x0A0B_0C0D_0E0F_1011, 0x1213_1415_1617_1819, &bits);
    assert_eq!(get_u32(&b, 0), block_checksum(&b, BITMAP_SALT));
    assert_eq!(&b[4..8], &[0u8; 4]);
    assert_eq!(get_u64(&b, 8), 0x0A0B_0C0D_0E0F_1011);
    assert_eq!(get_u64(&b, 16), 0x1213_1415_1617_1819);
    assert_eq!(bitmap::BITS_OFFSET, 24);
    assert_eq!(b[24], 0b0000_0101);
    assert_eq!(b[4095], 0x80);
    assert_eq!(bitmap::BITS_PER_BLOCK, 32576);
    assert_eq!(crate::pdata::alloc::bitmap_blocks_for(32576), 1);
    assert_eq!(crate::pdata::alloc::bitmap_blocks_for(32577), 2);

    // Snapshot record.
    let rec = SnapshotRecord {
        created_at_ns: 0x9192_9394_9596_9798,
        writable: true,
        state: SnapshotState::Deleting,
        source_id: 0xA1A2_A3A4_A5A6_A7A8,
        name: "n".repeat(snapshot_record::MAX_NAME),
        size: 0x00B1_B2B3_B4B5_B6B7,
    };
    let r = rec.pack();
    assert_eq!(r.len(), 160);
    assert_eq!(get_u64(&r, 0), 0x9192_9394_9596_9798);
    assert_eq!(get_u32(&r, 8), 1);
    assert_eq!(get_u32(&r, 12), 1);
    assert_eq!(get_u64(&r, 16), 0xA1A2_A3A4_A5A6_A7A8);
    assert_eq!(r[24], 128);
    assert_eq!(&r[25..153], "n".repeat(128).as_bytes());
    assert_eq!(&r[153..], &[0xB7, 0xB6, 0xB5, 0xB4, 0xB3, 0xB2, 0xB1]);
    assert_eq!(snapshot_record::MAX_SNAPSHOT_SIZE, (1 << 56) - 1);
    for (state, code) in [
        (SnapshotState::Ready, 0),
        (SnapshotState::Deleting, 1),
        (SnapshotState::Invalid, 2),
        (SnapshotState::Invalidating, 3),
        (SnapshotState::Receiving, 4),
    ] {
        let r = SnapshotRecord {
            state,
            ..rec.clone()
        }
        .pack();
        assert_eq!(get_u32(&r, 12), code);
    }
}

#[test]
fn stores_without_a_journal_are_version_2_both_ways() {
    let mut sb = sample_sb();
    sb.journal_start = 0;
    sb.journal_blocks = 0;
    sb.journal_epoch = 0;
    let mut b = sb.pack();
    assert_eq!(
        get_u32(&b, 4),
        2,
        "a store without a journal is written as version 2"
    );
    let read = Superblock::unpack(&b).unwrap();
    assert_eq!(read, sb);
    assert_eq!(read.reserved_end(), 10);
    put_u32(&mut b, 4, 1);
    crate::checksum::seal(&mut b, crate::checksum::SUPERBLOCK_SALT);
    assert_eq!(Superblock::unpack(&b), Err(SuperblockFault::Version(1)));
}

/// Version 4 is what a resized store writes, with or without a journal; it reads back as
/// such, and versions 2 and 3 read as stores whose records carry no size.
#[test]
fn resized_stores_are_version_4_and_older_ones_are_not() {
    let mut sb = sample_sb();
    for (journal_blocks, sized, version) in [(8, false, 3), (8, true, 4), (0, true, 4)] {
        sb.journal_blocks = journal_blocks;
        sb.journal_start = if journal_blocks > 0 { 10 } else { 0 };
        sb.sized_snapshots = sized;
        let b = sb.pack();
        assert_eq!(get_u32(&b, 4), version);
        assert_eq!(Superblock::unpack(&b).unwrap(), sb);
    }
}

#[test]
fn the_journal_must_follow_the_bitmaps_and_roots_lie_past_it() {
    let sb = sample_sb();
    assert_eq!(sb.reserved_end(), 18);
    let mut away = sample_sb();
    away.journal_start = 11;
    assert!(away.sanity().is_err());
    let mut huge = sample_sb();
    huge.journal_blocks = huge.store_blocks;
    assert!(huge.sanity().is_err());
    let mut root_inside = sample_sb();
    root_inside.exception_root = 12;
    assert!(root_inside.sanity().is_err());
}

#[test]
fn journal_batch_header_offsets_and_round_trip() {
    use super::journal::{BatchFault, BatchHeader, JournalEntry, MAX_ENTRIES};
    let h = BatchHeader {
        epoch: 0x1011_1213_1415_1617,
        sequence: 0x2021_2223_2425_2627,
        data_crc: 0x3031_3233,
        entries: vec![
            JournalEntry {
                offset: 0x4000,
                len: 5000,
            },
            JournalEntry {
                offset: 0x10_0000,
                len: 4096,
            },
        ],
    };
    let b = h.pack();
    assert_eq!(b.len(), BLOCK_SIZE);
    assert!(crate::checksum::is_sealed(
        &b,
        crate::checksum::JOURNAL_SALT
    ));
    assert_eq!(get_u32(&b, 4), 2, "entry count");
    assert_eq!(get_u64(&b, 8), h.epoch);
    assert_eq!(get_u64(&b, 16), h.sequence);
    assert_eq!(get_u32(&b, 24), 3, "data blocks: 9096 bytes round up to 3");
    assert_eq!(get_u32(&b, 28), h.data_crc);
    assert_eq!(get_u64(&b, 32), 0x4000);
    assert_eq!(get_u32(&b, 40), 5000);
    assert_eq!(get_u32(&b, 44), 0);
    assert_eq!(get_u64(&b, 48), 0x10_0000);
    assert_eq!(get_u32(&b, 56), 4096);
    assert!(b[64..].iter().all(|&x| x == 0));
    assert_eq!(MAX_ENTRIES, 254);

    let size = 1 << 30;
    assert_eq!(
        BatchHeader::unpack(&b, h.epoch, h.sequence, size),
        Ok(h.clone())
    );
    assert_eq!(
        BatchHeader::unpack(&b, h.epoch + 1, h.sequence, size),
        Err(BatchFault::Stale)
    );
    assert_eq!(
        BatchHeader::unpack(&b, h.epoch, h.sequence + 1, size),
        Err(BatchFault::Stale)
    );
    assert!(matches!(
        BatchHeader::unpack(&b, h.epoch, h.sequence, 0x10_0000),
        Err(BatchFault::Corrupt(_))
    ));
    let mut flipped = b.clone();
    flipped[40] ^= 1;
    assert_eq!(
        BatchHeader::unpack(&flipped, h.epoch, h.sequence, size),
        Err(BatchFault::Checksum)
    );
    let sealed_as_node = {
        let mut n = b.clone();
        crate::checksum::seal(&mut n, crate::checksum::NODE_SALT);
        n
    };
    assert_eq!(
        BatchHeader::unpack(&sealed_as_node, h.epoch, h.sequence, size),
        Err(BatchFault::Checksum)
    );
}

/// Version 4: the rollback fields sit at the documented offsets, a store converted to version
/// 4 stays there after its rollback ends, and an older version's bytes there are not read.
#[test]
fn rollback_state_offsets_and_version() {
    let mut sb = sample_sb();
    sb.next_snapshot_id = 0x10;
    sb.sized_snapshots = true;
    sb.revert = Some(superblock::RevertState {
        target: 0x3,
        newest: 0xF,
        cursor: 0x1234,
    });
    let b = sb.pack();
    assert_eq!(get_u32(&b, 4), 4, "a rollback in progress needs version 4");
    assert_eq!(get_u64(&b, 1368), 0x3, "revert target");
    assert_eq!(get_u64(&b, 1376), 0xF, "revert newest");
    assert_eq!(get_u64(&b, 1384), 0x1234, "merge cursor");
    assert!(b[1392..].iter().all(|&x| x == 0));
    let read = Superblock::unpack(&b).unwrap();
    assert_eq!(read.revert, sb.revert);
    assert!(read.sized_snapshots);

    // Ended: the fields are zero, the version stays 4.
    let mut ended = read.clone();
    ended.revert = None;
    let b = ended.pack();
    assert_eq!(get_u32(&b, 4), 4);
    assert!(b[1368..].iter().all(|&x| x == 0));

    // A version 3 slot with bytes there (never written by a correct writer) has no rollback.
    let mut v3 = sample_sb().pack();
    put_u64(&mut v3, 1368, 2);
    crate::checksum::seal(&mut v3, crate::checksum::SUPERBLOCK_SALT);
    assert_eq!(Superblock::unpack(&v3).unwrap().revert, None);

    // Impossible states are corrupt: rollback state below version 4, a target newer than
    // `newest`, a cursor past the origin.
    let mut old = sb.clone();
    old.sized_snapshots = false;
    assert!(old.sanity().is_err());
    let mut bad = sb.clone();
    bad.revert = Some(superblock::RevertState {
        target: 5,
        newest: 4,
        cursor: 0,
    });
    assert!(bad.sanity().is_err());
    let mut bad = sb.clone();
    bad.revert = Some(superblock::RevertState {
        target: 1,
        newest: 4,
        cursor: (1 << 30) / 65536 + 1,
    });
    assert!(bad.sanity().is_err());
}

/// Version 5: the clone fields sit at the documented offsets, a clone store stays version 5
/// after its hydration ends, and an older version's bytes there are not read.
#[test]
fn clone_state_offsets_and_version() {
    let mut sb = sample_sb();
    sb.sized_snapshots = true;
    sb.clone_format = true;
    sb.clone = Some(superblock::CloneState {
        source_volume: std::array::from_fn(|i| 0x60 + i as u8),
        source_snapshot: 0x0102_0304_0506_0708,
        source_size: 1 << 29,
        cursor: 0x123,
        hydrated_bytes: 0x1112_1314_1516_1718,
    });
    let b = sb.pack();
    assert_eq!(get_u32(&b, 4), 5, "a clone is written as version 5");
    assert_eq!(
        &b[1392..1408],
        &std::array::from_fn::<u8, 16, _>(|i| 0x60 + i as u8)
    );
    assert_eq!(get_u64(&b, 1408), 0x0102_0304_0506_0708, "source snapshot");
    assert_eq!(get_u64(&b, 1416), 1 << 29, "source size");
    assert_eq!(get_u64(&b, 1424), 0x123, "hydration cursor");
    assert_eq!(get_u64(&b, 1432), 0x1112_1314_1516_1718, "hydrated bytes");
    assert!(b[1440..].iter().all(|&x| x == 0));
    let read = Superblock::unpack(&b).unwrap();
    assert_eq!(read.clone, sb.clone);
    assert!(read.clone_format && read.sized_snapshots);

    // Ended: the fields are zero, the version stays 5.
    let mut ended = read.clone();
    ended.clone = None;
    let b = ended.pack();
    assert_eq!(get_u32(&b, 4), 5);
    assert!(b[1392..].iter().all(|&x| x == 0));

    // A version 4 slot with bytes there (never written by a correct writer) has no clone.
    let mut v4 = sample_sb();
    v4.sized_snapshots = true;
    let mut v4 = v4.pack();
    put_u64(&mut v4, 1408, 2);
    crate::checksum::seal(&mut v4, crate::checksum::SUPERBLOCK_SALT);
    assert_eq!(Superblock::unpack(&v4).unwrap().clone, None);

    // Impossible states are corrupt: clone state below version 5, a source larger than the
    // origin, a cursor past the source.
    let mut old = sb.clone();
    old.clone_format = false;
    assert!(old.sanity().is_err());
    let mut bad = sb.clone();
    bad.clone.as_mut().unwrap().source_size = (1 << 30) + 1;
    assert!(bad.sanity().is_err());
    let mut bad = sb.clone();
    bad.clone.as_mut().unwrap().cursor = (1 << 29) / 65536 + 1;
    assert!(bad.sanity().is_err());
}

/// Version 6: the origin cache byte at offset 82 is written only by a direct store, which is
/// version 6 for good; older versions' byte there is not read, and an unknown value is
/// corrupt.
#[test]
fn origin_cache_offset_and_version() {
    let buffered = sample_sb().pack();
    assert_eq!(buffered[82], 0);
    assert_eq!(
        Superblock::unpack(&buffered).unwrap().origin_cache,
        OriginCache::Buffered
    );

    let mut sb = sample_sb();
    sb.origin_cache = OriginCache::Direct;
    sb.sized_snapshots = true;
    sb.clone_format = true;
    let b = sb.pack();
    assert_eq!(get_u32(&b, 4), 6, "a direct origin is written as version 6");
    assert_eq!(b[82], 1);
    let read = Superblock::unpack(&b).unwrap();
    assert_eq!(read, sb);

    // A version 5 slot with the byte set (never written by a correct writer) is buffered.
    let mut v5 = sample_sb();
    v5.sized_snapshots = true;
    v5.clone_format = true;
    let mut v5 = v5.pack();
    assert_eq!(get_u32(&v5, 4), 5);
    v5[82] = 1;
    crate::checksum::seal(&mut v5, crate::checksum::SUPERBLOCK_SALT);
    assert_eq!(
        Superblock::unpack(&v5).unwrap().origin_cache,
        OriginCache::Buffered
    );

    let mut bad = b.clone();
    bad[82] = 2;
    crate::checksum::seal(&mut bad, crate::checksum::SUPERBLOCK_SALT);
    assert!(matches!(
        Superblock::unpack(&bad),
        Err(SuperblockFault::Corrupt(_))
    ));
    // A direct origin needs the version 6 fields around it.
    let mut old = sb.clone();
    old.clone_format = false;
    assert!(old.sanity().is_err());
}
