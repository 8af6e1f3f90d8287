//! Compressed records (format version 2): round trips against the uncompressed stream of the
//! same records, what old readers do with them, and damage that survives the frame crc.

use super::*;
use crate::compress::{raw_frame_crc, RAW_CRC_LEN};
use crate::frame::pack_frame_head;

fn zstd(h: &DeltaHeader) -> DeltaHeader {
    DeltaHeader {
        compression: Compression::Zstd,
        ..h.clone()
    }
}

/// Bytes no compressor shrinks (an xorshift sequence).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `(start, total length, encoding)` of every frame after the header.
fn frames(bytes: &[u8], header_len: usize) -> Vec<(usize, usize, u8)> {
    let mut out = Vec::new();
    let mut at = header_len;
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let len = FRAME_OVERHEAD + get_u32(bytes, at + F_PAYLOAD_LEN) as usize;
        out.push((at, len, bytes[at + F_RESERVED]));
        at += len;
    }
    out
}

fn frame_with(kind: u8, index: u64, count: u32, encoding: u8, payload: &[u8]) -> Vec<u8> {
    let (head, crc) = pack_frame_head(kind, index, count, encoding, payload);
    let mut f = head.to_vec();
    f.extend_from_slice(payload);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// Re-seals the frame at `start` after its payload was edited.
fn reseal(bytes: &mut [u8], start: usize, len: usize) {
    let crc = checksum(&[&bytes[start..start + len - 4]]);
    put_u32(bytes, start + len - 4, crc);
}

#[test]
fn compressed_stream_reads_as_the_uncompressed_one() {
    let (h, recs) = sample();
    let plain = encode(&h, &recs);
    let packed = encode(&zstd(&h), &recs);
    assert!(
        packed.len() < plain.len(),
        "{} vs {}",
        packed.len(),
        plain.len()
    );
    assert_eq!(get_u16(&packed, H_VERSION), 2);
    assert_eq!(get_u16(&plain, H_VERSION), 1);
    let (h1, r1, t1) = read_all(&plain).unwrap();
    let (h2, r2, t2) = read_all(&packed).unwrap();
    assert_eq!(h2, zstd(&h1));
    assert_eq!(r1, r2);
    // Same counts and the same digest: the digest chains the raw frames' crcs.
    assert_eq!(t1, t2);
    assert_eq!(h1.identity_digest(), h2.identity_digest());
    let encodings: Vec<u8> = frames(&packed, h2.pack().len())
        .iter()
        .map(|f| f.2)
        .collect();
    assert_eq!(
        encodings,
        [1, 0, 1, 1, 0],
        "data compressed, zero record and trailer raw"
    );
}

#[test]
fn records_that_do_not_shrink_are_stored_raw() {
    let h = header(4096, 64 << 10);
    let recs = vec![Record::Data {
        chunk_index: 0,
        chunk_count: 16,
        bytes: noise(64 << 10, 5).into(),
    }];
    let plain = encode(&h, &recs);
    let packed = encode(&zstd(&h), &recs);
    assert_eq!(packed.len(), plain.len(), "random data costs no extra byte");
    let hlen = h.pack().len();
    assert_eq!(frames(&packed, hlen)[0].2, ENCODING_RAW);
    assert_eq!(packed[hlen..], plain[hlen..], "the frames are the raw ones");
    assert_eq!(read_all(&packed).unwrap().1, recs);
}

#[test]
fn a_version_1_reader_refuses_a_compressed_stream_by_its_version() {
    let (h, recs) = sample();
    let packed = encode(&zstd(&h), &recs);
    let mut old = DeltaDecoder::with_highest_version(1);
    let e = old.feed(&packed).unwrap_err();
    assert!(
        matches!(
            e,
            DeltaError::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("version 2"), "{e}");
    // Nothing of it was taken as a header, let alone a record.
    assert!(old.header().is_none());
    // The same old reader reads an uncompressed stream, which stays version 1.
    let mut old = DeltaDecoder::with_highest_version(1);
    let ev = old.feed(&encode(&h, &recs)).unwrap();
    assert_eq!(ev.len(), recs.len() + 2);
    old.finish().unwrap();
}

#[test]
fn version_and_flag_must_agree() {
    let (h, recs) = sample();
    let fix = |mut b: Vec<u8>| {
        let hlen = h.pack().len();
        let crc = checksum(&[&b[..hlen - 4]]);
        put_u32(&mut b, hlen - 4, crc);
        b
    };
    let mut v1_with_flag = encode(&h, &recs);
    let flags = get_u16(&v1_with_flag, H_FLAGS) | FLAG_ZSTD_RECORDS;
    put_u16(&mut v1_with_flag, H_FLAGS, flags);
    let e = read_all(&fix(v1_with_flag)).unwrap_err();
    assert!(
        matches!(e, DeltaError::InvalidHeader { field: "flags", .. }),
        "{e}"
    );
    let mut v2_without_flag = encode(&zstd(&h), &recs);
    let flags = get_u16(&v2_without_flag, H_FLAGS) & !FLAG_ZSTD_RECORDS;
    put_u16(&mut v2_without_flag, H_FLAGS, flags);
    let e = read_all(&fix(v2_without_flag)).unwrap_err();
    assert!(
        matches!(e, DeltaError::InvalidHeader { field: "flags", .. }),
        "{e}"
    );
}

#[test]
fn encodings_are_checked_per_stream_and_kind() {
    let (h, _) = sample();
    let raw = vec![1u8; 1024];
    let mut compressor = crate::compress::RecordCompressor::new(DEFAULT_ZSTD_LEVEL).unwrap();
    let stored = compressor
        .compress(&raw, raw_frame_crc(0, 2, &raw))
        .unwrap()
        .to_vec();
    // A compressed frame in a version 1 stream: its encoding byte is a reserved byte there.
    let mut b = h.pack();
    b.extend(frame_with(KIND_DATA, 0, 2, ENCODING_ZSTD, &stored));
    let e = read_all(&b).unwrap_err();
    assert!(
        matches!(e, DeltaError::ReservedNotZero { record: 0, .. }),
        "{e}"
    );
    // In a version 2 stream it is read; a zero record or an unknown encoding is refused.
    let mut b = zstd(&h).pack();
    b.extend(frame_with(KIND_DATA, 0, 2, ENCODING_ZSTD, &stored));
    let mut d = DeltaDecoder::new();
    let ev = d.feed(&b).unwrap();
    assert!(matches!(&ev[1], Event::Record(Record::Data { bytes, .. }, _) if *bytes == raw));
    for (kind, encoding, payload) in [
        (KIND_ZERO, ENCODING_ZSTD, vec![]),
        (KIND_DATA, 2, stored.clone()),
    ] {
        let mut b = zstd(&h).pack();
        b.extend(frame_with(kind, 0, 2, encoding, &payload));
        let e = read_all(&b).unwrap_err();
        assert!(
            matches!(e, DeltaError::UnknownEncoding { record: 0, .. }),
            "{e}"
        );
    }
}

#[test]
fn damage_behind_a_valid_frame_crc_is_caught() {
    let (h, recs) = sample();
    let h = zstd(&h);
    let good = encode(&h, &recs);
    let (start, len, enc) = frames(&good, h.pack().len())[0];
    assert_eq!(enc, ENCODING_ZSTD);
    let payload = start + FRAME_HEADER_LEN;
    // The stored raw crc: the data decompresses but does not match it.
    let mut b = good.clone();
    b[payload] ^= 1;
    reseal(&mut b, start, len);
    let e = read_all(&b).unwrap_err();
    assert!(
        matches!(e, DeltaError::UncompressedChecksum { record: 0, .. }),
        "{e}"
    );
    // Every byte of the zstd frame: refused one way or the other, never accepted.
    for i in payload + RAW_CRC_LEN..start + len - 4 {
        let mut b = good.clone();
        b[i] ^= 0x40;
        reseal(&mut b, start, len);
        let e = read_all(&b).unwrap_err();
        assert!(
            matches!(
                e,
                DeltaError::UncompressedChecksum { record: 0, .. }
                    | DeltaError::Decompress { record: 0, .. }
            ),
            "byte {i}: {e}"
        );
    }
}

#[test]
fn a_record_that_inflates_past_its_range_is_refused() {
    let h = zstd(&header(512, 8 * 512));
    // 64 KiB of zeros compressed, claimed to be one 512-byte chunk.
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 10], 3).unwrap();
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.extend(&bomb);
    assert!(payload.len() < 512);
    let mut b = h.pack();
    b.extend(frame_with(KIND_DATA, 0, 1, ENCODING_ZSTD, &payload));
    let e = read_all(&b).unwrap_err();
    assert!(
        matches!(
            e,
            DeltaError::Decompress {
                record: 0,
                expected: 512,
                ..
            }
        ),
        "{e}"
    );
    // A "compressed" payload as long as its range is refused before zstd sees it.
    let mut b = h.pack();
    b.extend(frame_with(KIND_DATA, 0, 1, ENCODING_ZSTD, &[7; 512]));
    let e = read_all(&b).unwrap_err();
    assert!(matches!(e, DeltaError::Decompress { record: 0, .. }), "{e}");
}

/// A random stream whose data records mix compressible and incompressible contents.
fn arb_mixed_stream() -> impl Strategy<Value = (DeltaHeader, Vec<Record>)> {
    (arb_stream(), any::<u64>()).prop_map(|((h, mut recs), seed)| {
        for (i, r) in recs.iter_mut().enumerate() {
            if let Record::Data { bytes, .. } = r {
                if (seed >> (i % 64)) & 1 == 1 {
                    *bytes = noise(bytes.len(), seed.wrapping_add(i as u64)).into();
                }
            }
        }
        (h, recs)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_compressed_round_trip_equals_uncompressed((h, recs) in arb_mixed_stream(), sizes in proptest::collection::vec(1usize..300, 1..8)) {
        let plain = encode(&h, &recs);
        let packed = encode(&zstd(&h), &recs);
        prop_assert!(packed.len() <= plain.len());
        let (_, r1, t1) = read_all(&plain).unwrap();
        let (h2, r2, t2) = read_all(&packed).unwrap();
        prop_assert_eq!(h2, zstd(&h));
        prop_assert_eq!(&r1, &recs);
        prop_assert_eq!(&r2, &recs);
        prop_assert_eq!(t1, t2);
        let whole = decode_pieces(&packed, &[packed.len()]).unwrap();
        prop_assert_eq!(whole, decode_pieces(&packed, &sizes).unwrap());
    }

    #[test]
    fn prop_any_byte_flip_in_a_compressed_stream_is_rejected((h, recs) in arb_mixed_stream(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = encode(&zstd(&h), &recs);
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(read_all(&bytes).is_err(), "flip at {} accepted", i);
        prop_assert!(decode_pieces(&bytes, &[5]).is_err());
    }

    /// An apply interrupted under one compression setting continues under the other: the
    /// identity and the digest do not depend on how records are stored.
    #[test]
    fn prop_resume_across_compression((h, recs) in arb_mixed_stream(), stop in any::<prop::sample::Index>(), first_zstd in any::<bool>()) {
        let (first, second) = if first_zstd { (zstd(&h), h.clone()) } else { (h.clone(), zstd(&h)) };
        let whole = encode(&first, &recs);
        let stop = stop.index(recs.len() + 1);
        let mut r = DeltaReader::new(&whole[..]).unwrap();
        let mut got = Vec::new();
        for _ in 0..stop {
            got.push(r.next_record().unwrap().unwrap());
        }
        let point = r.resume_point();
        let mut w = DeltaWriter::resume(Vec::new(), second, point).unwrap();
        for rec in &recs {
            w.push(rec).unwrap();
        }
        let (tail, t) = w.finish().unwrap();
        let mut r = DeltaReader::resume(&tail[..], point).unwrap();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        prop_assert_eq!(r.trailer(), Some(t));
        prop_assert_eq!(got, recs);
    }

    /// Frames whose crc is right and whose compressed payload is anything: the decompressor
    /// is reached and must refuse or accept without panicking, and anything it accepts is
    /// exactly its range long.
    #[test]
    fn prop_arbitrary_compressed_payloads_never_panic(
        index in 0u64..8, count in 1u32..4,
        body in proptest::collection::vec(any::<u8>(), 0..600),
        real_zstd_prefix in any::<bool>(),
    ) {
        let h = zstd(&header(512, 8 * 512));
        let mut payload = body.clone();
        if real_zstd_prefix {
            // Start like a real zstd frame so the fuzzing reaches past the magic.
            payload = [&[0u8; 4][..], &0xFD2F_B528u32.to_le_bytes(), &body].concat();
        }
        let mut b = h.pack();
        b.extend(frame_with(KIND_DATA, index, count, ENCODING_ZSTD, &payload));
        if let Ok((_, recs, _)) = read_all(&b) {
            for r in recs {
                if let Record::Data { bytes, chunk_count, .. } = r {
                    prop_assert_eq!(bytes.len(), chunk_count as usize * 512);
                }
            }
        }
        let _ = decode_pieces(&b, &[13]);
    }
}

/// A compressed stream for the fuzz corpus: `DELTA_SEED_DIR=dir cargo test -- --ignored`.
#[test]
#[ignore]
fn write_compressed_fuzz_seed() {
    let Ok(dir) = std::env::var("DELTA_SEED_DIR") else {
        return;
    };
    let (h, mut recs) = sample();
    if let Some(Record::Data { bytes, .. }) = recs.get_mut(2) {
        *bytes = noise(bytes.len(), 3).into();
    }
    let b = encode(&zstd(&h), &recs);
    std::fs::write(format!("{dir}/compressed-sample"), b).unwrap();
}
