use super::*;
use crate::blockdev::MemDev;

#[test]
fn merge_sorts_and_joins_overlapping_and_touching_ranges() {
    let mut v = vec![(8192, 4096), (0, 4096), (4096, 100), (100, 50), (20000, 10)];
    merge(&mut v);
    assert_eq!(v, vec![(0, 4196), (8192, 4096), (20000, 10)]);
    let mut inside = vec![(0, 10000), (4096, 4096)];
    merge(&mut inside);
    assert_eq!(inside, vec![(0, 10000)]);
}

#[test]
fn journal_size_is_capped_at_a_quarter_of_the_store_and_dropped_when_tiny() {
    assert_eq!(journal_blocks_for(64 << 20, 1 << 20), 16384);
    assert_eq!(journal_blocks_for(64 << 20, 8000), 2000);
    assert_eq!(journal_blocks_for(64 << 20, 60), 0);
    assert_eq!(journal_blocks_for(0, 1 << 20), 0);
}

#[test]
fn batch_blocks_refuses_what_one_batch_cannot_hold() {
    assert_eq!(batch_blocks(&[(0, 4096)]), Some(2));
    assert_eq!(batch_blocks(&[(0, 4096), (1 << 20, 1)]), Some(3));
    assert_eq!(batch_blocks(&[]), None);
    assert_eq!(batch_blocks(&[(0, MAX_BATCH_DATA + 1)]), None);
    let many: Vec<(u64, u64)> = (0..=MAX_ENTRIES as u64).map(|i| (i * 8192, 512)).collect();
    assert_eq!(batch_blocks(&many), None);
    assert!(batch_blocks(&many[1..]).is_some());
}

/// A superblock with a journal of `blocks` right after a one-block bitmap pair, for a 1 MiB
/// origin.
fn journal_sb(blocks: u64) -> Superblock {
    let mut sb = crate::format::tests::sample_sb();
    sb.chunk_size = 4096;
    sb.origin_size = 1 << 20;
    sb.store_blocks = 4 + blocks;
    sb.bitmap_start = 2;
    sb.bitmap_blocks = 1;
    sb.journal_start = 4;
    sb.journal_blocks = blocks;
    sb.journal_epoch = 7;
    sb
}

/// Writes a batch of `ranges` filled with `fill` at block `pos` of the half `sb`'s epoch
/// writes; returns its blocks.
fn put_batch(
    dev: &MemDev,
    sb: &Superblock,
    pos: u64,
    sequence: u64,
    ranges: &[(u64, u64)],
    fill: u8,
) -> u64 {
    let mut image = BatchImage::for_ranges(ranges);
    let mut at = 0;
    for &(_, len) in ranges {
        image.data_mut(at, len).fill(fill);
        at += len;
    }
    image.seal(sb.journal_epoch, sequence, ranges);
    let first = half_start(sb.journal_start, sb.journal_blocks, sb.journal_epoch);
    dev.write_at(&image.bytes, (first + pos) * BLOCK_SIZE as u64)
        .unwrap();
    image.blocks()
}

fn origin_bytes(origin: &MemDev, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    origin.read_at(&mut b, offset).unwrap();
    b
}

#[test]
fn replay_applies_batches_in_order_and_stops_at_a_stale_one() {
    let sb = journal_sb(64);
    let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
    let origin = MemDev::new(1 << 20);
    let mut pos = put_batch(&dev, &sb, 0, 0, &[(0, 4096), (10_000, 100)], 0xA1);
    pos += put_batch(&dev, &sb, pos, 1, &[(2048, 4096)], 0xB2);
    // A batch of an older epoch that wrote this half, where the next one would go: the
    // journal ends there.
    let mut old = sb.clone();
    old.journal_epoch -= 2;
    put_batch(&dev, &old, pos, 2, &[(500_000, 4096)], 0xC3);

    let found = replay(&origin, &dev, &sb).unwrap();
    assert_eq!(
        found,
        JournalContents {
            batches: 2,
            bytes: 4096 + 100 + 4096
        }
    );
    assert_eq!(origin_bytes(&origin, 0, 2048), vec![0xA1; 2048]);
    assert_eq!(
        origin_bytes(&origin, 2048, 4096),
        vec![0xB2; 4096],
        "the later batch wins where they overlap"
    );
    assert_eq!(origin_bytes(&origin, 10_000, 100), vec![0xA1; 100]);
    assert_eq!(origin_bytes(&origin, 500_000, 4096), vec![0; 4096]);
}

#[test]
fn replay_stops_at_a_torn_batch_and_at_one_out_of_sequence() {
    let sb = journal_sb(64);
    let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
    let pos = put_batch(&dev, &sb, 0, 0, &[(0, 8192)], 0x11);
    let second = put_batch(&dev, &sb, pos, 1, &[(65536, 8192)], 0x22);
    put_batch(&dev, &sb, pos + second, 2, &[(131072, 4096)], 0x33);
    // Tear the second batch's data: its flush never returned, so neither it nor anything
    // after it is replayed.
    let first = half_start(sb.journal_start, sb.journal_blocks, sb.journal_epoch);
    let torn_at = (first + pos + 2) * BLOCK_SIZE as u64;
    dev.write_at(&[0x99; 512], torn_at).unwrap();
    let origin = MemDev::new(1 << 20);
    let found = replay(&origin, &dev, &sb).unwrap();
    assert_eq!(found.batches, 1);
    assert_eq!(origin_bytes(&origin, 65536, 8192), vec![0; 8192]);
    assert_eq!(origin_bytes(&origin, 131072, 4096), vec![0; 4096]);

    // A valid batch numbered 5 where number 1 belongs is left over from before: ignored.
    let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
    let pos = put_batch(&dev, &sb, 0, 0, &[(0, 4096)], 0x11);
    put_batch(&dev, &sb, pos, 5, &[(4096, 4096)], 0x22);
    let origin = MemDev::new(1 << 20);
    assert_eq!(replay(&origin, &dev, &sb).unwrap().batches, 1);
    assert_eq!(origin_bytes(&origin, 4096, 4096), vec![0; 4096]);
}

#[test]
fn a_checksummed_batch_pointing_outside_the_origin_is_not_applied() {
    let sb = journal_sb(64);
    let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
    put_batch(&dev, &sb, 0, 0, &[(sb.origin_size - 100, 4096)], 0x44);
    let origin = MemDev::new(1 << 20);
    assert_eq!(replay(&origin, &dev, &sb).unwrap().batches, 0);
    // And one running past its half's end.
    let small = journal_sb(2);
    let dev = MemDev::new(small.store_blocks * BLOCK_SIZE as u64 + (1 << 16));
    put_batch(&dev, &small, 0, 0, &[(0, 8192)], 0x55);
    assert_eq!(replay(&origin, &dev, &small).unwrap().batches, 0);
    assert_eq!(origin_bytes(&origin, 0, 8192), vec![0; 8192]);
}

#[test]
fn dirty_ranges_stay_bounded_and_say_when_they_gave_up() {
    let d = DirtyRanges::default();
    assert_eq!(d.take(), Dirty::Nothing);
    // Rewriting the same blocks over and over stays a handful of ranges.
    for i in 0..100_000u64 {
        d.note((i % 8) * 8192, 4096);
    }
    let Dirty::Ranges(r) = d.take() else {
        panic!("eight blocks fit one batch");
    };
    assert_eq!(r.len(), 8);
    assert_eq!(d.take(), Dirty::Nothing, "taking empties it");
    // More separate ranges than one batch holds: noted as too many, and no list kept.
    for i in 0..(3 * MAX_ENTRIES as u64) {
        d.note(i * 8192, 512);
    }
    assert!(d.noted.lock().ranges.len() < MERGE_AT);
    assert_eq!(d.take(), Dirty::TooMany);
    assert_eq!(d.take(), Dirty::Nothing);
    // Giving back what a failed flush took keeps it for the next one.
    d.note(0, 4096);
    let taken = d.take();
    d.note(65536, 4096);
    d.restore(taken);
    assert_eq!(d.take(), Dirty::Ranges(vec![(0, 4096), (65536, 4096)]));
    d.restore(Dirty::TooMany);
    d.note(0, 1);
    assert_eq!(d.take(), Dirty::TooMany);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the journal area holds (garbage, valid batches, batches with single bytes
    /// flipped), replay neither panics nor errs, applies a prefix of the valid batches, and
    /// writes only inside the origin.
    #[test]
    fn replay_of_any_journal_bytes_is_safe(
        garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(16 * BLOCK_SIZE)),
        batches in proptest::collection::vec((0u64..(1 << 20) - 9000, 1u64..9000, 1u8..255), 0..5),
        flip in proptest::option::of((0usize..(24 * BLOCK_SIZE), 0u8..8)),
    ) {
        let sb = journal_sb(24);
        let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
        dev.write_at(&garbage, sb.journal_start * BLOCK_SIZE as u64).unwrap();
        let mut pos = 0;
        let mut written = 0;
        for (i, &(offset, len, fill)) in batches.iter().enumerate() {
            let blocks = 1 + len.div_ceil(BLOCK_SIZE as u64);
            if pos + blocks > half_blocks(sb.journal_blocks) {
                break;
            }
            pos += put_batch(&dev, &sb, pos, i as u64, &[(offset, len)], fill);
            written += 1;
        }
        if let Some((at, bit)) = flip {
            let at = sb.journal_start * BLOCK_SIZE as u64 + at as u64;
            let mut b = [0u8; 1];
            dev.read_at(&mut b, at).unwrap();
            dev.write_at(&[b[0] ^ (1 << bit)], at).unwrap();
        }
        let origin = MemDev::new(1 << 20);
        let found = replay(&origin, &dev, &sb).expect("replay never errs on a readable journal");
        proptest::prop_assert!(found.batches <= written);
        if flip.is_none() {
            proptest::prop_assert_eq!(found.batches, written);
        }
        for (offset, len, fill) in batches.iter().take(found.batches as usize) {
            let mut b = vec![0u8; *len as usize];
            origin.read_at(&mut b, *offset).unwrap();
            // A later replayed batch may have overwritten part of an earlier one.
            let later_overlaps = batches
                .iter()
                .take(found.batches as usize)
                .skip_while(|x| x != &&(*offset, *len, *fill))
                .skip(1)
                .any(|(o, l, _)| o < &(offset + len) && offset < &(o + l));
            if !later_overlaps {
                proptest::prop_assert!(b.iter().all(|x| x == fill));
            }
        }
    }
}

#[test]
fn replay_takes_the_older_epoch_then_the_newer_one_and_nothing_else() {
    let sb = journal_sb(32);
    let dev = MemDev::new(sb.store_blocks * BLOCK_SIZE as u64);
    // Epoch 7 (the oldest live one, half 1): two batches.
    let pos = put_batch(&dev, &sb, 0, 0, &[(0, 4096)], 0x07);
    put_batch(&dev, &sb, pos, 1, &[(8192, 4096)], 0x17);
    // Epoch 8 (half 0): newer data over the first range.
    let mut next = sb.clone();
    next.journal_epoch = 8;
    put_batch(&dev, &next, 0, 0, &[(0, 2048), (65536, 100)], 0x08);
    // Epoch 9 would be half 1 again; a batch of it can only be stale here (written before
    // epoch 7's): never replayed.
    let origin = MemDev::new(1 << 20);
    let found = replay(&origin, &dev, &sb).unwrap();
    assert_eq!(found.batches, 3);
    assert_eq!(
        origin_bytes(&origin, 0, 2048),
        vec![0x08; 2048],
        "the newer epoch wins"
    );
    assert_eq!(origin_bytes(&origin, 2048, 2048), vec![0x07; 2048]);
    assert_eq!(origin_bytes(&origin, 8192, 4096), vec![0x17; 4096]);
    assert_eq!(origin_bytes(&origin, 65536, 100), vec![0x08; 100]);
    // Once epoch 7 is retired (journal_epoch 8), only epoch 8 is replayed, and epoch 7's
    // batches in half 1 are stale for epoch 9.
    let mut retired = sb.clone();
    retired.journal_epoch = 8;
    let origin = MemDev::new(1 << 20);
    assert_eq!(replay(&origin, &dev, &retired).unwrap().batches, 1);
    assert_eq!(origin_bytes(&origin, 8192, 4096), vec![0; 4096]);
}
