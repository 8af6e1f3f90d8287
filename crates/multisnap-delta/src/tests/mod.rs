//! Unit and property tests of the format.

use super::*;
use crate::frame::{pack_frame, F_PAYLOAD_LEN, F_RESERVED};
use crate::header::{H_BASE_NAME_LEN, H_CHUNK_SIZE, H_FLAGS, H_VERSION, H_VOLUME_SIZE};
use bytes::Bytes;
use proptest::prelude::*;

mod compressed;

fn header(chunk_size: u32, volume_size: u64) -> DeltaHeader {
    DeltaHeader {
        volume_uuid: VolumeUuid::from_bytes([7; 16]),
        base: Some(SnapshotIdent {
            id: 3,
            name: "monday".into(),
        }),
        target: Target::Snapshot(SnapshotIdent {
            id: 9,
            name: "tuesday".into(),
        }),
        chunk_size,
        volume_size,
        created_unix_nanos: 1_700_000_000_000_000_000,
        compression: Compression::None,
    }
}

fn encode(h: &DeltaHeader, recs: &[Record]) -> Vec<u8> {
    let mut w = DeltaWriter::new(Vec::new(), h.clone()).unwrap();
    for r in recs {
        w.push(r).unwrap();
    }
    w.finish().unwrap().0
}

fn read_all(bytes: &[u8]) -> Result<(DeltaHeader, Vec<Record>, Trailer)> {
    let mut r = DeltaReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    let t = r.trailer().ok_or(DeltaError::Poisoned)?;
    Ok((r.header().clone(), out, t))
}

fn decode_pieces(bytes: &[u8], sizes: &[usize]) -> Result<Vec<Event>> {
    decode_pieces_as(bytes, sizes, false)
}

/// Feeds `bytes` cut by `sizes` (in turn), as borrowed slices or (`shared`) as shared buffers
/// the decoder may slice.
fn decode_pieces_as(bytes: &[u8], sizes: &[usize], shared: bool) -> Result<Vec<Event>> {
    let mut d = DeltaDecoder::new();
    let mut ev = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        if shared {
            ev.extend(d.feed_bytes(&Bytes::copy_from_slice(&rest[..n]))?);
        } else {
            ev.extend(d.feed(&rest[..n])?);
        }
        rest = &rest[n..];
        i += 1;
    }
    d.finish()?;
    Ok(ev)
}

fn sample() -> (DeltaHeader, Vec<Record>) {
    // 10 chunks of 512 bytes, the last one partial (100 bytes).
    let h = header(512, 9 * 512 + 100);
    let recs = vec![
        Record::Data {
            chunk_index: 0,
            chunk_count: 2,
            bytes: vec![1; 1024].into(),
        },
        Record::Zero {
            chunk_index: 2,
            chunk_count: 3,
        },
        Record::Data {
            chunk_index: 6,
            chunk_count: 1,
            bytes: vec![2; 512].into(),
        },
        Record::Data {
            chunk_index: 8,
            chunk_count: 2,
            bytes: vec![3; 612].into(),
        },
    ];
    (h, recs)
}

#[test]
fn round_trip_sample() {
    let (h, recs) = sample();
    let bytes = encode(&h, &recs);
    let (h2, recs2, t) = read_all(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(recs2, recs);
    assert_eq!(t.record_count, 4);
    assert_eq!(t.data_bytes, 1024 + 512 + 612);
    assert_eq!(t.chunk_count, 8);
}

#[test]
fn full_stream_to_origin_round_trips() {
    let h = DeltaHeader {
        base: None,
        target: Target::Origin,
        ..header(4096, 1 << 20)
    };
    let bytes = encode(
        &h,
        &[Record::Zero {
            chunk_index: 0,
            chunk_count: 256,
        }],
    );
    let (h2, recs, _) = read_all(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(recs.len(), 1);
}

#[test]
fn bad_magic_and_version() {
    let (h, recs) = sample();
    let mut b = encode(&h, &recs);
    b[0] ^= 1;
    assert!(matches!(read_all(&b), Err(DeltaError::BadMagic { .. })));
    let mut b = encode(&h, &recs);
    b[H_VERSION] = 3;
    assert!(matches!(
        read_all(&b),
        Err(DeltaError::UnsupportedVersion {
            found: 3,
            supported: 2
        })
    ));
}

#[test]
fn flipped_payload_names_the_record_and_offset() {
    let (h, recs) = sample();
    let mut b = encode(&h, &recs);
    let hlen = h.pack().len();
    let second = hlen + FRAME_OVERHEAD + 1024; // start of record 1 (the zero record)
    let third = second + FRAME_OVERHEAD;
    b[third + FRAME_HEADER_LEN + 5] ^= 0x40;
    match read_all(&b) {
        Err(DeltaError::RecordChecksum {
            record: 2, offset, ..
        }) => assert_eq!(offset, third as u64),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn writer_rejects_bad_records() {
    let (h, _) = sample();
    let mut w = DeltaWriter::new(Vec::new(), h.clone()).unwrap();
    w.push_zero(4, 2).unwrap();
    assert!(matches!(
        w.push_zero(5, 1),
        Err(DeltaError::OutOfOrder { .. })
    ));
    assert!(matches!(
        w.push_zero(9, 2),
        Err(DeltaError::PastVolume { .. })
    ));
    assert!(matches!(
        w.push_zero(7, 0),
        Err(DeltaError::EmptyRecord { .. })
    ));
    assert!(matches!(
        w.push_data(7, 1, &[0; 10]),
        Err(DeltaError::PayloadLength { .. })
    ));
    let big = header(1 << 20, 1 << 30);
    let mut w = DeltaWriter::new(Vec::new(), big).unwrap();
    assert!(matches!(w.push_zero(0, 1024), Ok(())));
    let mut w = DeltaWriter::new(Vec::new(), header(1 << 20, 1 << 30)).unwrap();
    assert!(matches!(
        w.push_data(0, 17, &[]),
        Err(DeltaError::PayloadTooLarge { .. })
    ));
}

#[test]
fn header_limits() {
    let mut h = header(512, 4096);
    h.base = Some(SnapshotIdent {
        id: 1,
        name: "x".repeat(129),
    });
    assert!(matches!(
        DeltaWriter::new(Vec::new(), h),
        Err(DeltaError::InvalidHeader { .. })
    ));
    assert!(DeltaWriter::new(Vec::new(), header(1000, 4096)).is_err());
    assert!(DeltaWriter::new(Vec::new(), header(512, MAX_VOLUME_SIZE + 1)).is_err());
}

#[test]
fn hostile_payload_length_is_refused_before_buffering() {
    let (h, _) = sample();
    let mut b = h.pack();
    let (mut frame, _) = pack_frame(KIND_DATA, 0, 1, &[0; 512]);
    put_u32(&mut frame, F_PAYLOAD_LEN, u32::MAX);
    b.extend_from_slice(&frame[..FRAME_HEADER_LEN]);
    let mut d = DeltaDecoder::new();
    assert!(matches!(
        d.feed(&b),
        Err(DeltaError::PayloadTooLarge { .. })
    ));
    assert!(matches!(d.feed(&[0]), Err(DeltaError::Poisoned)));
}

/// Builds a stream with a frame whose checksum is right but whose content breaks a rule.
fn with_raw_frames(h: &DeltaHeader, frames: &[(u8, u64, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = h.pack();
    for (k, i, c, p) in frames {
        b.extend(pack_frame(*k, *i, *c, p).0);
    }
    b
}

#[test]
fn ordering_and_range_rules_in_reader() {
    let (h, _) = sample();
    let overlap = with_raw_frames(&h, &[(KIND_ZERO, 2, 3, vec![]), (KIND_ZERO, 4, 1, vec![])]);
    assert!(matches!(
        read_all(&overlap),
        Err(DeltaError::OutOfOrder {
            record: 1,
            chunk_index: 4,
            previous_end: 5,
            ..
        })
    ));
    let past = with_raw_frames(&h, &[(KIND_ZERO, 9, 2, vec![])]);
    assert!(matches!(
        read_all(&past),
        Err(DeltaError::PastVolume { .. })
    ));
    let huge = with_raw_frames(&h, &[(KIND_ZERO, u64::MAX, 2, vec![])]);
    assert!(matches!(
        read_all(&huge),
        Err(DeltaError::PastVolume { .. })
    ));
    let kind = with_raw_frames(&h, &[(9, 0, 1, vec![])]);
    assert!(matches!(
        read_all(&kind),
        Err(DeltaError::UnknownRecordKind { kind: 9, .. })
    ));
    let len = with_raw_frames(&h, &[(KIND_DATA, 0, 1, vec![0; 100])]);
    assert!(matches!(
        read_all(&len),
        Err(DeltaError::PayloadLength { .. })
    ));
}

#[test]
fn trailer_counts_and_digest_are_checked() {
    let (h, recs) = sample();
    let good = encode(&h, &recs);
    let cut = good.len() - TRAILER_LEN;
    let t = read_all(&good).unwrap().2;
    for (bad, want_digest) in [
        (
            Trailer {
                record_count: 3,
                ..t
            },
            false,
        ),
        (Trailer { data_bytes: 1, ..t }, false),
        (
            Trailer {
                chunk_count: 1,
                ..t
            },
            false,
        ),
        (
            Trailer {
                digest: t.digest ^ 1,
                ..t
            },
            true,
        ),
    ] {
        let mut b = good[..cut].to_vec();
        b.extend(pack_frame(KIND_TRAILER, 0, 0, &bad.pack_payload()).0);
        let e = read_all(&b).unwrap_err();
        if want_digest {
            assert!(matches!(e, DeltaError::DigestMismatch { .. }), "{e}");
        } else {
            assert!(matches!(e, DeltaError::CountMismatch { .. }), "{e}");
        }
    }
    let mut b = good.clone();
    b.push(0);
    assert!(matches!(
        read_all(&b),
        Err(DeltaError::TrailingGarbage { .. })
    ));
    let mut d = DeltaDecoder::new();
    d.feed(&good).unwrap();
    assert!(matches!(
        d.feed(b"x"),
        Err(DeltaError::TrailingGarbage { .. })
    ));
}

#[test]
fn verify_source_checks_volume_and_base() {
    let (h, _) = sample();
    assert!(h
        .verify_source(&VolumeUuid::from_bytes([7; 16]), |b| b.name == "monday")
        .is_ok());
    assert!(matches!(
        h.verify_source(&VolumeUuid::from_bytes([8; 16]), |_| true),
        Err(DeltaError::WrongVolume { .. })
    ));
    assert!(matches!(
        h.verify_source(&VolumeUuid::from_bytes([7; 16]), |_| false),
        Err(DeltaError::BaseNotHeld { id: 3, .. })
    ));
    let full = DeltaHeader { base: None, ..h };
    assert!(full
        .verify_source(&VolumeUuid::from_bytes([7; 16]), |_| false)
        .is_ok());
}

#[test]
fn resume_continues_the_chain() {
    let (h, recs) = sample();
    let whole = encode(&h, &recs);
    // The receiver applied two records, then the connection dropped.
    let mut r = DeltaReader::new(&whole[..]).unwrap();
    r.next_record().unwrap();
    r.next_record().unwrap();
    let point = ResumePoint::from_bytes(&r.resume_point().to_bytes()).unwrap();
    assert_eq!(point.records_applied, 2);
    assert_eq!(point.next_chunk, 5);
    // The sender regenerates the header (new time) and replays every record.
    let h2 = DeltaHeader {
        created_unix_nanos: 5,
        ..h.clone()
    };
    let mut w = DeltaWriter::resume(Vec::new(), h2, point).unwrap();
    for rec in &recs {
        w.push(rec).unwrap();
    }
    let (tail, t) = w.finish().unwrap();
    assert_eq!(t, read_all(&whole).unwrap().2);
    let mut r = DeltaReader::resume(&tail[..], point).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, recs[2..]);
    // A fresh reader of the resumed session alone sees wrong counts.
    assert!(read_all(&tail).is_err());
    // A resume point for another stream is refused.
    let other = DeltaHeader {
        volume_uuid: VolumeUuid::from_bytes([1; 16]),
        ..h
    };
    assert!(matches!(
        DeltaWriter::resume(Vec::new(), other.clone(), point),
        Err(DeltaError::ResumeMismatch { .. })
    ));
    let other_stream = encode(&other, &[]);
    assert!(matches!(
        DeltaReader::resume(&other_stream[..], point),
        Err(DeltaError::ResumeMismatch { .. })
    ));
}

#[test]
fn resume_trims_a_straddling_record() {
    let h = header(512, 8 * 512);
    let point = {
        let mut w = DeltaWriter::new(Vec::new(), h.clone()).unwrap();
        w.push_zero(0, 3).unwrap();
        w.resume_point()
    };
    let mut w = DeltaWriter::resume(Vec::new(), h, point).unwrap();
    let bytes: Vec<u8> = (0..4 * 512).map(|i| (i / 512) as u8).collect();
    w.push_data(1, 4, &bytes).unwrap();
    let (tail, _) = w.finish().unwrap();
    let mut r = DeltaReader::resume(&tail[..], point).unwrap();
    assert_eq!(
        r.next_record().unwrap(),
        Some(Record::Data {
            chunk_index: 3,
            chunk_count: 2,
            bytes: bytes[1024..].to_vec().into()
        })
    );
    assert_eq!(r.next_record().unwrap(), None);
}

#[test]
fn resume_token_rejects_damage() {
    let (h, _) = sample();
    let mut t = ResumePoint::start(&h).to_bytes();
    t[20] ^= 1;
    assert!(matches!(
        ResumePoint::from_bytes(&t),
        Err(DeltaError::BadResumeToken { .. })
    ));
    assert!(ResumePoint::from_bytes(&t[..10]).is_err());
}

// ---- property tests ----

/// A random header and a random valid record list for it.
fn arb_stream() -> impl Strategy<Value = (DeltaHeader, Vec<Record>)> {
    (
        prop_oneof![Just(512u32), Just(1024), Just(4096)],
        1u64..40,
        0u64..512,
        any::<bool>(),
        any::<bool>(),
        "[a-z0-9@._-]{0,20}",
        proptest::collection::vec((0u64..3, 1u32..4, any::<bool>(), any::<u8>()), 0..12),
    )
        .prop_map(|(cs, chunks, tail, has_base, origin, name, plan)| {
            let volume_size = (chunks - 1) * u64::from(cs) + (tail % u64::from(cs)) + 1;
            let h = DeltaHeader {
                volume_uuid: VolumeUuid::from_bytes([tail as u8; 16]),
                base: has_base.then(|| SnapshotIdent {
                    id: chunks,
                    name: name.clone(),
                }),
                target: if origin {
                    Target::Origin
                } else {
                    Target::Snapshot(SnapshotIdent {
                        id: chunks + 1,
                        name,
                    })
                },
                chunk_size: cs,
                volume_size,
                created_unix_nanos: tail * 77,
                compression: Compression::None,
            };
            let vc = h.volume_chunks();
            let mut recs = Vec::new();
            let mut next = 0u64;
            for (gap, count, data, fill) in plan {
                let idx = next + gap;
                if idx >= vc {
                    break;
                }
                let count = (u64::from(count)).min(vc - idx) as u32;
                let end = idx + u64::from(count);
                if data {
                    let len = (end * u64::from(cs)).min(volume_size) - idx * u64::from(cs);
                    recs.push(Record::Data {
                        chunk_index: idx,
                        chunk_count: count,
                        bytes: vec![fill; len as usize].into(),
                    });
                } else {
                    recs.push(Record::Zero {
                        chunk_index: idx,
                        chunk_count: count,
                    });
                }
                next = end;
            }
            (h, recs)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip((h, recs) in arb_stream()) {
        let bytes = encode(&h, &recs);
        let (h2, recs2, t) = read_all(&bytes).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(t.record_count, recs.len() as u64);
        prop_assert_eq!(recs2, recs);
    }

    #[test]
    fn prop_any_single_byte_flip_is_rejected((h, recs) in arb_stream(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = encode(&h, &recs);
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(read_all(&bytes).is_err(), "flip at {} accepted", i);
        prop_assert!(decode_pieces(&bytes, &[7]).is_err());
        prop_assert!(decode_pieces_as(&bytes, &[bytes.len()], true).is_err());
        prop_assert!(decode_pieces_as(&bytes, &[700, 5], true).is_err());
    }

    #[test]
    fn prop_every_truncation_is_truncated((h, recs) in arb_stream()) {
        let bytes = encode(&h, &recs);
        for cut in 0..bytes.len() {
            let r = read_all(&bytes[..cut]);
            prop_assert!(matches!(r, Err(DeltaError::Truncated { .. })), "cut {}: {:?}", cut, r.err());
            let mut d = DeltaDecoder::new();
            d.feed(&bytes[..cut]).unwrap();
            let fin = d.finish();
            let ok = matches!(fin, Err(DeltaError::Truncated { offset, .. }) if offset == cut as u64);
            prop_assert!(ok, "decoder cut {}: {:?}", cut, fin);
            let mut d = DeltaDecoder::new();
            d.feed_bytes(&Bytes::copy_from_slice(&bytes[..cut])).unwrap();
            let fin = d.finish();
            let ok = matches!(fin, Err(DeltaError::Truncated { offset, .. }) if offset == cut as u64);
            prop_assert!(ok, "shared cut {}: {:?}", cut, fin);
        }
    }

    #[test]
    fn prop_push_decoder_piece_sizes_do_not_matter((h, recs) in arb_stream(), sizes in proptest::collection::vec(1usize..300, 1..8)) {
        let bytes = encode(&h, &recs);
        let whole = decode_pieces(&bytes, &[bytes.len()]).unwrap();
        let pieces = decode_pieces(&bytes, &sizes).unwrap();
        prop_assert_eq!(&whole, &pieces);
        let shared_whole = decode_pieces_as(&bytes, &[bytes.len()], true).unwrap();
        prop_assert_eq!(&whole, &shared_whole);
        let shared_pieces = decode_pieces_as(&bytes, &sizes, true).unwrap();
        prop_assert_eq!(&whole, &shared_pieces);
        prop_assert_eq!(whole.len(), recs.len() + 2);
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = read_all(&bytes);
        let _ = decode_pieces(&bytes, &[3]);
        let _ = decode_pieces_as(&bytes, &[3, 200], true);
    }
}

/// The bytes of the data records among `events`.
fn data_records(events: &[Event]) -> Vec<&Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Record(Record::Data { bytes, .. }, _) => Some(bytes),
            _ => None,
        })
        .collect()
}

/// Fed a shared buffer, the decoder hands out a data record whose payload lies whole in it as
/// a slice of that buffer; a payload cut across pieces is gathered into a buffer of its own.
#[test]
fn shared_input_is_sliced_not_copied() {
    let (h, recs) = sample();
    let stream = Bytes::from(encode(&h, &recs));
    let inside = |b: &Bytes, within: &Bytes| {
        let (p, w) = (b.as_ptr() as usize, within.as_ptr() as usize);
        p >= w && p + b.len() <= w + within.len()
    };
    let mut d = DeltaDecoder::new();
    let events = d.feed_bytes(&stream).unwrap();
    let data = data_records(&events);
    assert_eq!(data.len(), 3);
    assert!(data.iter().all(|b| inside(b, &stream)));
    d.finish().unwrap();

    // The same stream in two shared pieces cut inside the first record's payload.
    let cut = h.pack().len() + FRAME_HEADER_LEN + 100;
    let (first, second) = (stream.slice(..cut), stream.slice(cut..));
    let mut d = DeltaDecoder::new();
    let mut events = d.feed_bytes(&first).unwrap();
    events.extend(d.feed_bytes(&second).unwrap());
    let bytes = data_records(&events);
    assert!(!inside(bytes[0], &first) && !inside(bytes[0], &second));
    assert!(inside(bytes[1], &second) && inside(bytes[2], &second));
    let Record::Data { bytes: want, .. } = &recs[0] else {
        panic!("the sample starts with a data record")
    };
    assert_eq!(bytes[0], want);
}

/// Writes a few valid streams as fuzz seeds: `DELTA_SEED_DIR=dir cargo test -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("DELTA_SEED_DIR") else {
        return;
    };
    let (h, recs) = sample();
    let small = header(512, 3 * 512 + 7);
    let seeds = [
        encode(&h, &recs),
        encode(&h, &[]),
        encode(
            &DeltaHeader {
                base: None,
                target: Target::Origin,
                ..small.clone()
            },
            &[Record::Data {
                chunk_index: 1,
                chunk_count: 3,
                bytes: vec![9; 512 * 2 + 7].into(),
            }],
        ),
        encode(
            &small,
            &[Record::Zero {
                chunk_index: 0,
                chunk_count: 4,
            }],
        ),
    ];
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(format!("{dir}/seed{i}"), s).unwrap();
    }
}

#[test]
fn remaining_error_variants() {
    let (h, recs) = sample();
    let good = encode(&h, &recs);
    let hlen = h.pack().len();

    let mut b = good.clone();
    b[H_VOLUME_SIZE] ^= 1;
    assert!(matches!(
        read_all(&b),
        Err(DeltaError::HeaderChecksum { .. })
    ));

    // Header fields with a correct crc but forbidden values.
    let fix_crc = |mut b: Vec<u8>| {
        let crc = checksum(&[&b[..hlen - 4]]);
        put_u32(&mut b, hlen - 4, crc);
        b
    };
    let mut b = good[..hlen].to_vec();
    put_u16(&mut b, H_FLAGS, 0x80 | FLAG_HAS_BASE);
    assert!(matches!(
        read_all(&fix_crc(b)),
        Err(DeltaError::InvalidHeader { field: "flags", .. })
    ));
    let mut b = good[..hlen].to_vec();
    b[HEADER_FIXED_LEN] = 0xff;
    assert!(matches!(
        read_all(&fix_crc(b)),
        Err(DeltaError::InvalidHeader {
            field: "base name",
            ..
        })
    ));
    let mut b = good[..hlen].to_vec();
    put_u32(&mut b, H_CHUNK_SIZE, 3000);
    assert!(matches!(
        read_all(&fix_crc(b)),
        Err(DeltaError::InvalidHeader {
            field: "chunk_size",
            ..
        })
    ));
    let mut b = good[..hlen].to_vec();
    put_u16(&mut b, H_BASE_NAME_LEN, 129);
    assert!(matches!(
        read_all(&b),
        Err(DeltaError::InvalidHeader {
            field: "base name",
            ..
        })
    ));

    let mut raw = h.pack();
    let (mut f, _) = pack_frame(KIND_ZERO, 0, 1, &[]);
    f[F_RESERVED] = 1;
    let crc = checksum(&[&f[..FRAME_HEADER_LEN]]);
    put_u32(&mut f, FRAME_HEADER_LEN, crc);
    raw.extend(f);
    assert!(matches!(
        read_all(&raw),
        Err(DeltaError::ReservedNotZero { record: 0, .. })
    ));

    let bad_trailer = with_raw_frames(&h, &[(KIND_TRAILER, 0, 1, vec![0; TRAILER_PAYLOAD_LEN])]);
    assert!(matches!(
        read_all(&bad_trailer),
        Err(DeltaError::TrailerMalformed { .. })
    ));

    let mut b = good.clone();
    let at = b.len() - 2;
    b[at] ^= 1;
    assert!(matches!(
        read_all(&b),
        Err(DeltaError::TrailerChecksum { .. })
    ));

    assert!(matches!(
        read_all(&good[..5]),
        Err(DeltaError::Truncated {
            while_reading: "header",
            ..
        })
    ));
    assert!(matches!(
        read_all(&good[..hlen + 3]),
        Err(DeltaError::Truncated {
            while_reading: "record or trailer",
            ..
        })
    ));
    assert!(matches!(
        read_all(&[]),
        Err(DeltaError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn decoder_events_carry_resume_points() {
    let (h, recs) = sample();
    let bytes = encode(&h, &recs);
    let ev = DeltaDecoder::new().feed(&bytes).unwrap();
    let points: Vec<ResumePoint> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Record(_, p) => Some(*p),
            _ => None,
        })
        .collect();
    assert_eq!(
        points.iter().map(|p| p.next_chunk).collect::<Vec<_>>(),
        [2, 5, 7, 10]
    );
    assert_eq!(
        points.iter().map(|p| p.records_applied).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(matches!(ev.last(), Some(Event::End(t)) if t.digest == points[3].digest_so_far));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Interrupt after any record, resume with a regenerated header and a full replay: the
    /// receiver ends with exactly the original records and the original trailer.
    #[test]
    fn prop_resume_after_any_record((h, recs) in arb_stream(), stop in any::<prop::sample::Index>(), pieces in 1usize..100) {
        let whole = encode(&h, &recs);
        let stop = stop.index(recs.len() + 1);
        let mut r = DeltaReader::new(&whole[..]).unwrap();
        let mut got = Vec::new();
        for _ in 0..stop {
            got.push(r.next_record().unwrap().unwrap());
        }
        let point = ResumePoint::from_bytes(&r.resume_point().to_bytes()).unwrap();
        let h2 = DeltaHeader { created_unix_nanos: h.created_unix_nanos + 1, ..h.clone() };
        let mut w = DeltaWriter::resume(Vec::new(), h2, point).unwrap();
        for rec in &recs {
            w.push(rec).unwrap();
        }
        let (tail, t) = w.finish().unwrap();
        let mut d = DeltaDecoder::resume(point);
        let mut end = None;
        for piece in tail.chunks(pieces) {
            for e in d.feed(piece).unwrap() {
                match e {
                    Event::Record(rec, _) => got.push(rec),
                    Event::End(t) => end = Some(t),
                    Event::Header(_) => {}
                }
            }
        }
        prop_assert_eq!(d.finish().unwrap(), t);
        prop_assert_eq!(end, Some(t));
        prop_assert_eq!(got, recs);
        prop_assert_eq!(Some(t), read_all(&whole).ok().map(|x| x.2));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A flip after the header is caught by the damaged frame's own checksum (naming that
    /// record), unless it lands in a length field and makes the frame too large or run off
    /// the end of the stream.
    #[test]
    fn prop_flip_in_a_frame_is_a_checksum_error((h, recs) in arb_stream(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = encode(&h, &recs);
        let hlen = h.pack().len();
        let i = hlen + at.index(bytes.len() - hlen);
        bytes[i] ^= mask;
        // Which frame holds byte i, and where it starts.
        let mut start = hlen;
        let mut record = 0u64;
        for r in &recs {
            let len = FRAME_OVERHEAD + match r { Record::Data { bytes, .. } => bytes.len(), Record::Zero { .. } => 0 };
            if i < start + len { break; }
            start += len;
            record += 1;
        }
        let e = read_all(&bytes).unwrap_err();
        let ok = match &e {
            DeltaError::RecordChecksum { record: r, offset, .. } => *r == record && *offset == start as u64,
            DeltaError::TrailerChecksum { offset, .. } => *offset == start as u64,
            DeltaError::PayloadTooLarge { .. } | DeltaError::Truncated { .. } => {
                (start + F_PAYLOAD_LEN..start + F_PAYLOAD_LEN + 4).contains(&i)
            }
            _ => false,
        };
        prop_assert!(ok, "flip at {} (frame at {}, record {}): {}", i, start, record, e);
    }
}
