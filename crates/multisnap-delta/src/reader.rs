//! The pull reader ("Readers" in docs/DELTA.md): a loop that reads from any `Read` into the
//! sans-IO decoder and hands out one verified record at a time.

use std::io::Read;

use crate::decoder::{DeltaDecoder, Event};
use crate::error::{DeltaError, Result};
use crate::frame::{Record, Trailer};
use crate::header::{DeltaHeader, Target};
use crate::resume::ResumePoint;

const READ_PIECE: usize = 64 << 10;

/// Pull-style reader over any `Read`: the header on creation, then
/// [`next_record`](Self::next_record) until `Ok(None)`, which means the trailer verified and
/// the input ended right after it.
pub struct DeltaReader<R: Read> {
    input: R,
    dec: DeltaDecoder,
    piece: Vec<u8>,
    pos: usize,
    len: usize,
    header: DeltaHeader,
}

impl<R: Read> DeltaReader<R> {
    pub fn new(input: R) -> Result<Self> {
        Self::with_decoder(input, DeltaDecoder::new())
    }

    /// Reads a resumed session (see [`DeltaDecoder::resume`]).
    pub fn resume(input: R, point: ResumePoint) -> Result<Self> {
        Self::with_decoder(input, DeltaDecoder::resume(point))
    }

    fn with_decoder(input: R, dec: DeltaDecoder) -> Result<Self> {
        let mut r = DeltaReader {
            input,
            dec,
            piece: vec![0; READ_PIECE],
            pos: 0,
            len: 0,
            header: DeltaHeader {
                volume_uuid: crate::VolumeUuid::NIL,
                base: None,
                target: Target::Origin,
                chunk_size: 0,
                volume_size: 0,
                created_unix_nanos: 0,
                compression: crate::Compression::None,
            },
        };
        match r.next_event()? {
            Some(Event::Header(h)) => r.header = h,
            _ => return Err(DeltaError::Poisoned),
        }
        Ok(r)
    }

    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// The point after the last record returned.
    pub fn resume_point(&self) -> ResumePoint {
        self.dec.progress()
    }

    /// The verified trailer, once `next_record` returned `Ok(None)`.
    pub fn trailer(&self) -> Option<Trailer> {
        self.dec.trailer()
    }

    fn next_event(&mut self) -> Result<Option<Event>> {
        loop {
            if self.pos == self.len {
                let n = loop {
                    match self.input.read(&mut self.piece) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    }
                };
                if n == 0 {
                    self.dec.finish()?;
                    return Ok(None);
                }
                self.pos = 0;
                self.len = n;
            }
            let avail = self.piece.get(self.pos..self.len).unwrap_or_default();
            let (used, ev) = self.dec.step(avail)?;
            self.pos += used;
            if let Some(ev) = ev {
                return Ok(Some(ev));
            }
        }
    }

    /// The next verified record, or `Ok(None)` at a clean, fully verified end.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            match self.next_event()? {
                Some(Event::Record(r, _)) => return Ok(Some(r)),
                // After End the loop reads on so trailing garbage or EOF is judged.
                Some(Event::End(_)) | Some(Event::Header(_)) => {}
                None => return Ok(None),
            }
        }
    }
}
