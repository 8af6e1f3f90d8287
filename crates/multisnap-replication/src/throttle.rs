//! A bandwidth limit for an export: a token bucket with small, frequent refills, so the stream
//! leaves at an even pace rather than in bursts of a second's worth of bytes.
//!
//! Writes are let through in pieces of [`PIECE_TIME`] at the limit (20 ms, at least 4 KiB),
//! each waiting for its own tokens. The bucket starts empty and holds at most [`BUCKET_TIME`]
//! worth (100 ms): enough that a late wake-up or a slow send is made up for instead of lost,
//! so the long-run rate is the limit, and small enough that a second never carries more than
//! a tenth over it.

use std::io::Write;
use std::time::{Duration, Instant};

/// How much of a second one piece is: the most let through at once.
const PIECE_TIME: Duration = Duration::from_millis(20);
/// How much of a second the bucket holds: the most the sender can catch up after a stall.
const BUCKET_TIME: Duration = Duration::from_millis(100);
/// Smallest piece, so a very low limit does not mean a write call per byte.
const MIN_PIECE: u64 = 4 << 10;

/// Bytes per second, above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytesPerSec(u64);

impl BytesPerSec {
    /// `None` for 0, which means "no limit" wherever a limit is optional.
    pub fn new(rate: u64) -> Option<BytesPerSec> {
        (rate > 0).then_some(BytesPerSec(rate))
    }
    pub fn get(self) -> u64 {
        self.0
    }
    /// The most bytes let through at once: 20 ms at this rate, at least 4 KiB. Senders that
    /// batch (gRPC messages) should batch no more than this, or the batching is the burst.
    pub fn piece(self) -> u64 {
        self.over(PIECE_TIME)
    }

    /// Bytes this rate carries in `t`, at least one minimal piece.
    fn over(self, t: Duration) -> u64 {
        (self.0 as u128 * t.as_nanos() / 1_000_000_000).max(u128::from(MIN_PIECE)) as u64
    }
}

/// The token bucket.
pub struct Throttle {
    rate: BytesPerSec,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(rate: BytesPerSec) -> Throttle {
        Throttle {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate.get() as f64;
        self.tokens = (self.tokens + earned).min(self.rate.over(BUCKET_TIME) as f64);
        self.last = now;
    }

    /// Blocks until `n` more bytes may go, at most one piece at a time. Returns how many
    /// bytes (at most `n`, at least 1 when `n > 0`) the caller may send now.
    pub fn admit(&mut self, n: u64) -> u64 {
        let piece = n.min(self.rate.piece());
        loop {
            self.refill();
            if self.tokens >= piece as f64 {
                self.tokens -= piece as f64;
                return piece;
            }
            let missing = piece as f64 - self.tokens;
            std::thread::sleep(Duration::from_secs_f64(missing / self.rate.get() as f64));
        }
    }
}

/// A writer whose bytes pass a [`Throttle`] on their way to `inner`.
pub struct Throttled<W> {
    inner: W,
    throttle: Option<Throttle>,
}

impl<W: Write> Throttled<W> {
    /// `limit: None` passes everything straight through.
    pub fn new(inner: W, limit: Option<BytesPerSec>) -> Self {
        Throttled {
            inner,
            throttle: limit.map(Throttle::new),
        }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Throttled<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match &mut self.throttle {
            None => self.inner.write(data),
            Some(t) => {
                let n = t.admit(data.len() as u64) as usize;
                self.inner.write_all(data.get(..n).unwrap_or_default())?;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records when each byte count arrived.
    struct Clocked(Instant, Vec<(Duration, usize)>);

    impl Write for Clocked {
        fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
            self.1.push((self.0.elapsed(), d.len()));
            Ok(d.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Writes in 1 MiB calls for 3.5 s at 3 MiB/s; every 1 s window starting after the first
    /// second (in 50 ms steps) carries the limit within 20%.
    #[test]
    fn the_rate_is_even_over_every_second() {
        let rate = 3u64 << 20;
        let start = Instant::now();
        let mut w = Throttled::new(Clocked(start, Vec::new()), BytesPerSec::new(rate));
        let block = vec![7u8; 1 << 20];
        while start.elapsed() < Duration::from_millis(3500) {
            w.write_all(&block).unwrap();
        }
        let log = w.into_inner().1;
        let total: usize = log.iter().map(|e| e.1).sum();
        let secs = start.elapsed().as_secs_f64();
        let mean = total as f64 / secs;
        assert!(
            (mean - rate as f64).abs() < rate as f64 * 0.2,
            "mean {mean}"
        );
        let mut from = Duration::from_secs(1);
        while from + Duration::from_secs(1) <= Duration::from_secs_f64(secs) {
            let to = from + Duration::from_secs(1);
            let sent: usize = log
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|e| e.1)
                .sum();
            let off = (sent as f64 - rate as f64).abs() / rate as f64;
            assert!(
                off < 0.2,
                "window from {from:?}: {sent} bytes, {off:.2} off"
            );
            from += Duration::from_millis(50);
        }
        // No write let more than one piece through.
        let piece = BytesPerSec::new(rate).unwrap().piece() as usize;
        assert!(log.iter().all(|e| e.1 <= piece));
    }

    #[test]
    fn no_limit_passes_through() {
        let mut w = Throttled::new(Vec::new(), BytesPerSec::new(0));
        w.write_all(&[1; 100_000]).unwrap();
        assert_eq!(w.into_inner().len(), 100_000);
        assert_eq!(BytesPerSec::new(50 << 20).unwrap().piece(), 1 << 20);
        assert_eq!(BytesPerSec::new(1000).unwrap().piece(), 4096);
    }
}
