//! Cutting an outgoing delta stream into gRPC messages: ExportDelta's responses and a mirror's
//! ApplyDelta requests alike.
//!
//! A message's buffer is handed to tonic as it is, not copied, and comes back to the stream's
//! free list once tonic has encoded it. A fresh 1 MiB buffer per message costs a page fault
//! per 4 KiB filled whenever the allocator has handed the last ones back to the kernel, which
//! glibc does some of the time: one profile of a mirror transfer on tmpfs had 4.6% of both
//! agents' samples in those faults (docs/BENCHMARKS.md §6).

use multisnap_delta::Bytes;
use multisnap_replication::throttle::BytesPerSec;
use parking_lot::Mutex;
use std::sync::Arc;

/// Stream bytes per gRPC message, ExportDelta's and a mirror's alike.
pub const MESSAGE_BYTES: usize = 1 << 20;
/// Smallest message under a bandwidth limit, so a low limit does not mean tiny messages.
const MIN_LIMITED_MESSAGE_BYTES: usize = 16 << 10;
/// Room past the mark for the write that crosses it (with the exporter's records, a payload
/// that starts just after the previous frame's crc and its own head), so filling a buffer does
/// not reallocate and copy what it holds.
const SPARE_BYTES: usize = 64 << 10;
/// Free buffers a stream keeps. Messages in flight are bounded by the writers' channels (4)
/// and what tonic and HTTP/2 hold while encoding; a buffer beyond this many is freed.
const KEEP_FREE: usize = 8;

/// Stream bytes per message under `limit`: no larger than the throttle's piece, since a 1 MiB
/// message at a low limit would be the very burst the throttle smooths away.
pub fn message_bytes(limit: Option<BytesPerSec>) -> usize {
    limit.map_or(MESSAGE_BYTES, |l| {
        (l.piece() as usize).clamp(MIN_LIMITED_MESSAGE_BYTES, MESSAGE_BYTES)
    })
}

/// Collects stream bytes and hands out a message's payload each time `message_bytes` of them
/// are buffered.
pub struct MessageCutter {
    buf: Vec<u8>,
    message_bytes: usize,
    free: Arc<FreeBuffers>,
}

impl MessageCutter {
    pub fn new(message_bytes: usize) -> MessageCutter {
        let free = Arc::new(FreeBuffers {
            capacity: message_bytes + SPARE_BYTES,
            list: Mutex::new(Vec::new()),
        });
        MessageCutter {
            buf: free.take(),
            message_bytes,
            free,
        }
    }

    /// Adds `data`; a full message's payload once the buffer reaches the mark.
    pub fn push(&mut self, data: &[u8]) -> Option<Bytes> {
        self.buf.extend_from_slice(data);
        (self.buf.len() >= self.message_bytes).then(|| self.cut())
    }

    /// What is buffered, as a last (shorter) message; `None` when nothing is.
    pub fn rest(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.cut())
    }

    fn cut(&mut self) -> Bytes {
        let full = std::mem::replace(&mut self.buf, self.free.take());
        Bytes::from_owner(Lent {
            bytes: full,
            home: self.free.clone(),
        })
    }
}

/// A stream's buffers not in use, of one capacity.
struct FreeBuffers {
    capacity: usize,
    list: Mutex<Vec<Vec<u8>>>,
}

impl FreeBuffers {
    fn take(&self) -> Vec<u8> {
        self.list
            .lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    fn give(&self, mut buf: Vec<u8>) {
        // One that grew past its capacity (a write larger than the spare room) is kept too:
        // it still holds a message.
        if buf.capacity() < self.capacity {
            return;
        }
        buf.clear();
        let mut list = self.list.lock();
        if list.len() < KEEP_FREE {
            list.push(buf);
        }
    }
}

/// A message's payload lent to tonic; back to its stream's free list when the last reference
/// to it is dropped (after encoding), or freed with the list if the stream has ended.
struct Lent {
    bytes: Vec<u8>,
    home: Arc<FreeBuffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concatenated messages are the bytes pushed, each message but the last at least the
    /// mark, and a dropped message's buffer goes back to the free list for the next cut.
    #[test]
    fn cuts_at_the_mark_and_reuses_buffers() {
        let mut cut = MessageCutter::new(1000);
        let mut sent = Vec::new();
        let mut pushed = Vec::new();
        let mut messages = 0;
        for i in 0..200u32 {
            let piece: Vec<u8> = (0..(i * 37 % 700)).map(|b| (b ^ i) as u8).collect();
            pushed.extend_from_slice(&piece);
            if let Some(m) = cut.push(&piece) {
                assert!(m.len() >= 1000);
                // The cut took the buffer given back by the message before.
                assert!(cut.free.list.lock().is_empty());
                sent.extend_from_slice(&m);
                drop(m); // as tonic drops a request once encoded
                assert_eq!(cut.free.list.lock().len(), 1);
                messages += 1;
            }
        }
        assert!(messages > 50);
        let last = cut.rest().expect("bytes remain");
        assert!(last.len() < 1000);
        sent.extend_from_slice(&last);
        assert_eq!(sent, pushed);
        assert!(cut.rest().is_none());
    }

    /// Messages held at once each have their own buffer; the free list keeps at most
    /// `KEEP_FREE` of them once they are all dropped.
    #[test]
    fn held_messages_never_share_a_buffer() {
        let mut cut = MessageCutter::new(100);
        let held: Vec<Bytes> = (0..20u8).filter_map(|i| cut.push(&[i; 100])).collect();
        assert_eq!(held.len(), 20);
        for (i, m) in held.iter().enumerate() {
            assert!(
                m.iter().all(|&b| b == i as u8),
                "message {i} was overwritten"
            );
        }
        drop(held);
        assert_eq!(cut.free.list.lock().len(), KEEP_FREE);
    }
}
