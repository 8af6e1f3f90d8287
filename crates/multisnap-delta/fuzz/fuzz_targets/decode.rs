//! Arbitrary bytes into the pull reader and the push decoder (fed borrowed slices and shared
//! buffers): none may panic, all must agree on whether the stream is acceptable, and an
//! accepted stream must re-encode to itself (an uncompressed one byte for byte; a compressed
//! one, whose bytes depend on the zstd level and version that wrote it, to a stream that reads
//! back as the same header and records).
#![no_main]

use libfuzzer_sys::fuzz_target;
use multisnap_delta::{Bytes, Compression, DeltaDecoder, DeltaReader, DeltaWriter, Event};

fuzz_target!(|data: &[u8]| {
    // Pull reader over the whole input.
    let mut pulled = None;
    if let Ok(mut r) = DeltaReader::new(data) {
        let mut recs = Vec::new();
        let ok = loop {
            match r.next_record() {
                Ok(Some(rec)) => recs.push(rec),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if ok {
            pulled = Some((r.header().clone(), recs));
        }
    }

    // Push decoder in pieces whose sizes the first byte picks.
    let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut d = DeltaDecoder::new();
    let mut events = Vec::new();
    let mut pushed_ok = true;
    for chunk in data.chunks(piece) {
        match d.feed(chunk) {
            Ok(ev) => events.extend(ev),
            Err(_) => {
                pushed_ok = false;
                break;
            }
        }
    }
    pushed_ok = pushed_ok && d.finish().is_ok();
    assert_eq!(pulled.is_some(), pushed_ok, "reader and decoder disagree");

    // The same pieces as shared buffers, which the decoder slices instead of copying: the same
    // verdict and the same events.
    let mut d = DeltaDecoder::new();
    let mut shared_events = Vec::new();
    let mut shared_ok = true;
    for chunk in data.chunks(piece) {
        match d.feed_bytes(&Bytes::copy_from_slice(chunk)) {
            Ok(ev) => shared_events.extend(ev),
            Err(_) => {
                shared_ok = false;
                break;
            }
        }
    }
    shared_ok = shared_ok && d.finish().is_ok();
    assert_eq!(pushed_ok, shared_ok, "borrowed and shared input disagree");
    if shared_ok {
        assert_eq!(events, shared_events, "borrowed and shared input decode differently");
    }

    if let Some((header, recs)) = pulled {
        let compressed = header.compression == Compression::Zstd;
        let mut w =
            DeltaWriter::new(Vec::new(), header.clone()).expect("accepted header re-encodes");
        for r in &recs {
            w.push(r).expect("accepted record re-encodes");
        }
        let (bytes, _) = w.finish().expect("finish");
        if compressed {
            let mut again = DeltaReader::new(&bytes[..]).expect("re-encoded header reads");
            assert_eq!(again.header(), &header);
            for r in &recs {
                assert_eq!(
                    again.next_record().expect("re-encoded record").as_ref(),
                    Some(r)
                );
            }
            assert!(again.next_record().expect("re-encoded end").is_none());
        } else {
            assert_eq!(bytes, data, "accepted stream is not canonical");
        }
        let n = events
            .iter()
            .filter(|e| matches!(e, Event::Record(..)))
            .count();
        assert_eq!(n, recs.len());
    }
});
