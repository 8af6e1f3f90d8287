//! How long a mirror waits before trying again after failed attempts: doubling from
//! [`Backoff::first`] up to [`Backoff::cap`], so a target that is down for a moment is caught
//! up within about a second of its return, and one that is down for hours is asked about
//! twice a minute rather than hammered.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The agent's: 0.5 s, 1 s, 2 s, ... up to 30 s.
    pub const STANDARD: Backoff = Backoff {
        first: Duration::from_millis(500),
        cap: Duration::from_secs(30),
    };

    /// The wait after `failures` failed attempts in a row (none after none).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // 2^31 times anything is past any cap; saturating keeps the arithmetic in range.
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_then_stays_at_the_cap() {
        let b = Backoff::STANDARD;
        let secs: Vec<f64> = (0..10).map(|n| b.delay(n).as_secs_f64()).collect();
        assert_eq!(secs, [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]);
        assert_eq!(b.delay(u32::MAX), b.cap);
    }

    proptest! {
        #[test]
        fn never_shrinks_and_never_passes_the_cap(n in 1u32..200, first_ms in 1u64..5000, cap_ms in 1u64..600_000) {
            let b = Backoff { first: Duration::from_millis(first_ms), cap: Duration::from_millis(cap_ms) };
            prop_assert!(b.delay(n) <= b.cap);
            prop_assert!(b.delay(n + 1) >= b.delay(n));
            prop_assert!(b.delay(n) >= b.first.min(b.cap));
        }
    }
}
