use super::*;
use crate::blockdev::FileDev;
use proptest::prelude::*;
use std::sync::Arc;

const SIZE: u64 = 64 << 10;

fn direct_file(dir: &tempfile::TempDir, size: u64) -> DirectDev {
    let path = dir.path().join("origin");
    drop(FileDev::create_sparse(&path, size).unwrap());
    DirectDev::open(&path).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Read { offset: u64, len: usize },
}

/// Offsets and lengths of every kind: 512-byte multiples (NBD clients), odd bytes, whole
/// blocks; each buffer also starts at an odd address half the time (see `misaligned`).
fn op() -> impl Strategy<Value = Op> {
    let place = prop_oneof![
        (0..SIZE / 512, 1..20usize).prop_map(|(o, n)| (o * 512, n * 512)),
        (0..SIZE, 1..9000usize),
        (0..SIZE / 4096, 1..4usize).prop_map(|(o, n)| (o * 4096, n * 4096)),
    ]
    .prop_map(|(o, n)| (o, n.min((SIZE - o) as usize).max(1)))
    .prop_filter("inside the device", |(o, n)| o + *n as u64 <= SIZE);
    (place, any::<bool>(), any::<u8>()).prop_map(|((offset, len), write, seed)| {
        if write {
            Op::Write { offset, len, seed }
        } else {
            Op::Read { offset, len }
        }
    })
}

/// A `len`-byte slice of a fresh vector, starting one byte in when `odd`: an address no
/// block size divides.
fn misaligned(v: &mut Vec<u8>, len: usize, odd: bool) -> &mut [u8] {
    let skip = usize::from(odd);
    v.resize(len + skip, 0);
    &mut v[skip..skip + len]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The direct device reads back exactly what an in-memory reference does, whatever the
    /// alignment of offsets, lengths and buffers, and after a reopen.
    #[test]
    fn matches_a_memory_reference(ops in proptest::collection::vec((op(), any::<bool>()), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let dev = direct_file(&dir, SIZE);
        let mut model = vec![0u8; SIZE as usize];
        let mut storage = Vec::new();
        for (op, odd) in ops {
            match op {
                Op::Write { offset, len, seed } => {
                    let buf = misaligned(&mut storage, len, odd);
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = seed.wrapping_add(i as u8).wrapping_mul(31) | 1;
                    }
                    dev.write_at(buf, offset).unwrap();
                    model[offset as usize..offset as usize + len].copy_from_slice(buf);
                }
                Op::Read { offset, len } => {
                    let buf = misaligned(&mut storage, len, odd);
                    dev.read_at(buf, offset).unwrap();
                    prop_assert!(buf == &model[offset as usize..offset as usize + len]);
                }
            }
        }
        dev.flush().unwrap();
        drop(dev);
        let reopened = DirectDev::open(&dir.path().join("origin")).unwrap();
        let mut all = vec![0u8; SIZE as usize];
        reopened.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model);
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write {
        offset: u64,
        len: usize,
        seed: u8,
    },
    /// `parts` pieces of the given lengths, laid end to end from `offset`.
    Bulk {
        offset: u64,
        parts: Vec<usize>,
        seed: u8,
    },
    Read {
        offset: u64,
        len: usize,
    },
}

fn file_op() -> impl Strategy<Value = FileOp> {
    let part = prop_oneof![Just(4096usize), Just(8192), 1..6000usize];
    let bulk_at = prop_oneof![(0..SIZE / 4096).prop_map(|b| b * 4096), 0..SIZE];
    prop_oneof![
        op().prop_map(|o| match o {
            Op::Write { offset, len, seed } => FileOp::Write { offset, len, seed },
            Op::Read { offset, len } => FileOp::Read { offset, len },
        }),
        (bulk_at, proptest::collection::vec(part, 1..5), any::<u8>()).prop_map(
            |(offset, mut parts, seed)| {
                let mut room = (SIZE - offset) as usize;
                parts.retain_mut(|p| {
                    *p = (*p).min(room);
                    room -= *p;
                    *p > 0
                });
                FileOp::Bulk {
                    offset,
                    parts,
                    seed,
                }
            }
        ),
    ]
}

/// Runs `ops` on `dev` (of `SIZE` bytes, all zeros) and checks every read, and what `path`
/// holds once the device is dropped, against an in-memory reference.
fn check_against_reference(
    dev: Box<dyn BlockDev>,
    path: &std::path::Path,
    ops: Vec<FileOp>,
) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; SIZE as usize];
    let fill = |buf: &mut [u8], seed: u8| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed.wrapping_add(i as u8).wrapping_mul(29) | 1;
        }
    };
    for op in ops {
        match op {
            FileOp::Write { offset, len, seed } => {
                let mut buf = vec![0u8; len];
                fill(&mut buf, seed);
                dev.write_at(&buf, offset).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(&buf);
            }
            FileOp::Bulk {
                offset,
                parts,
                seed,
            } => {
                // Each part at an odd address, as a record's payload in a message is.
                let mut storage: Vec<Vec<u8>> = parts.iter().map(|&n| vec![0u8; n + 1]).collect();
                let mut at = offset as usize;
                for (i, v) in storage.iter_mut().enumerate() {
                    fill(&mut v[1..], seed.wrapping_add(i as u8));
                    model[at..at + v.len() - 1].copy_from_slice(&v[1..]);
                    at += v.len() - 1;
                }
                let slices: Vec<&[u8]> = storage.iter().map(|v| &v[1..]).collect();
                dev.write_bulk(&slices, offset).unwrap();
            }
            FileOp::Read { offset, len } => {
                let mut buf = vec![0u8; len];
                dev.read_at(&mut buf, offset).unwrap();
                prop_assert!(buf == model[offset as usize..offset as usize + len]);
            }
        }
    }
    dev.flush().unwrap();
    drop(dev);
    let mut all = vec![0u8; SIZE as usize];
    FileDev::open(path).unwrap().read_at(&mut all, 0).unwrap();
    prop_assert!(all == model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// A buffered file whose bulk writes go through its direct twin reads back, through the
    /// page cache, exactly what an in-memory reference does: the kernel drops the cached pages
    /// a direct write replaces, and an unaligned bulk write falls back to the buffered path.
    #[test]
    fn bulk_writes_beside_buffered_ones_match_a_memory_reference(ops in proptest::collection::vec(file_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin");
        let dev = FileDev::create_sparse(&path, SIZE).unwrap();
        // Direct exactly where this filesystem takes O_DIRECT.
        prop_assert_eq!(dev.writes_bulk_directly(), DirectDev::open(&path).is_ok());
        check_against_reference(Box::new(dev), &path, ops)?;
    }

    /// A direct origin's bulk writes, gathered into one request or not, too.
    #[test]
    fn direct_bulk_writes_match_a_memory_reference(ops in proptest::collection::vec(file_op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let dev = direct_file(&dir, SIZE);
        check_against_reference(Box::new(dev), &dir.path().join("origin"), ops)?;
    }
}

/// Writes that share only an edge block (each its own 512-byte or odd-sized piece of the
/// same 4 KiB blocks) all land: a read-modify-write of the shared block must not write back
/// the bytes it read before the other write changed them.
#[test]
fn concurrent_writes_sharing_edge_blocks_keep_each_others_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(direct_file(&dir, SIZE));
    // Eight writers, each owning its own 512-byte slot of every 4 KiB, the slots shifted by
    // 256 bytes so that the last one crosses into the next block; odd writers start one byte
    // into their slot and write odd lengths.
    const WRITERS: u64 = 8;
    const ROUNDS: u8 = 40;
    let piece = |w: u64| -> (u64, usize) { (w * 512 + 256 + w % 2, 512 - 3 * (w % 2) as usize) };
    for round in 1..=ROUNDS {
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let (off, len) = piece(w);
                    for block in 0..(SIZE / 4096 - 1) {
                        let data = vec![round.wrapping_mul(8).wrapping_add(w as u8); len];
                        dev.write_at(&data, block * 4096 + off).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut all = vec![0u8; SIZE as usize];
        dev.read_at(&mut all, 0).unwrap();
        for block in 0..(SIZE / 4096 - 1) {
            for w in 0..WRITERS {
                let (off, len) = piece(w);
                let at = (block * 4096 + off) as usize;
                let want = round.wrapping_mul(8).wrapping_add(w as u8);
                let end = at + len;
                assert!(
                    all[at..end].iter().all(|&b| b == want),
                    "round {round}: writer {w}'s bytes in block {block} were lost"
                );
            }
        }
    }
}

/// `copy_file_range` from an `O_DIRECT` origin into a buffered store file copies the
/// origin's bytes, so a direct origin keeps the kernel copy-out.
#[test]
fn kernel_copy_reads_a_direct_origin() {
    let dir = tempfile::tempdir().unwrap();
    let origin = direct_file(&dir, SIZE);
    let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    origin.write_at(&data, 16384).unwrap();
    let store = FileDev::create_sparse(&dir.path().join("store"), SIZE).unwrap();
    assert!(store.can_copy_from(&origin, 16384));
    assert!(store.copy_from(&origin, 16384, 32768, data.len()).unwrap());
    let mut back = vec![0u8; data.len()];
    store.read_at(&mut back, 32768).unwrap();
    assert_eq!(back, data);
}

/// A file that cannot do direct I/O is refused with the error the agent shows. A socket
/// stands in for tmpfs (which takes `O_DIRECT` since Linux 6.6): the kernel refuses
/// `O_DIRECT` on both with EINVAL.
#[test]
fn a_file_without_direct_io_is_refused_clearly() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let file = File::from(std::os::fd::OwnedFd::from(a));
    let err = DirectDev::from_file(file)
        .err()
        .expect("a socket takes no O_DIRECT");
    assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    assert!(
        err.to_string()
            .contains("origin_cache=direct needs a filesystem with O_DIRECT"),
        "{err}"
    );
}

#[test]
fn an_origin_of_unaligned_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin");
    drop(FileDev::create_sparse(&path, 4096 + 512).unwrap());
    let err = DirectDev::open(&path).err().expect("unaligned size");
    assert!(err.to_string().contains("multiple of 4096"), "{err}");
}

#[test]
fn files_are_aligned_to_4096_and_grow_in_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let dev = direct_file(&dir, SIZE);
    assert_eq!(dev.alignment(), FILE_ALIGN);
    assert!(dev.grow_to(SIZE + 100).is_err());
    dev.grow_to(SIZE + 8192).unwrap();
    assert_eq!(dev.size().unwrap(), SIZE + 8192);
    let mut tail = vec![1u8; 8192];
    dev.read_at(&mut tail, SIZE).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}
