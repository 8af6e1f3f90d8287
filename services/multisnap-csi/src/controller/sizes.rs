//! The size of a new volume from CSI's capacity range: at least `required_bytes`, at most
//! `limit_bytes` (0: no limit), and never smaller than the snapshot or volume it is restored or
//! cloned from. Sizes are whole 4 KiB blocks, what every block device and filesystem takes.

use crate::csi::CapacityRange;
use tonic::Status;

/// The size of a volume whose range names none.
pub const DEFAULT_BYTES: u64 = 1 << 30;
pub const BLOCK: u64 = 4096;
/// The largest volume the agent makes (proto/multisnap/v1: 64 TiB).
pub const MAX_BYTES: u64 = 64 << 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub required: u64,
    /// 0: no limit.
    pub limit: u64,
}

impl Range {
    pub fn parse(r: Option<&CapacityRange>) -> Result<Range, Status> {
        let Some(r) = r else {
            return Ok(Range {
                required: 0,
                limit: 0,
            });
        };
        if r.required_bytes < 0 || r.limit_bytes < 0 {
            return Err(Status::invalid_argument(format!(
                "capacity_range has a negative size (required_bytes {}, limit_bytes {})",
                r.required_bytes, r.limit_bytes
            )));
        }
        let range = Range {
            required: r.required_bytes as u64,
            limit: r.limit_bytes as u64,
        };
        if range.limit != 0 && range.limit < range.required {
            return Err(Status::invalid_argument(format!(
                "capacity_range limit_bytes {} is below required_bytes {}",
                range.limit, range.required
            )));
        }
        Ok(range)
    }

    /// Whether an existing volume of `size` bytes satisfies the range.
    pub fn admits(&self, size: u64) -> bool {
        size >= self.required && (self.limit == 0 || size <= self.limit)
    }

    /// The size of a new volume; `at_least` is the source's size for a restore or clone.
    pub fn choose(&self, at_least: u64) -> Result<u64, Status> {
        let wanted = if self.required == 0 && at_least == 0 {
            if self.limit != 0 {
                DEFAULT_BYTES.min(self.limit / BLOCK * BLOCK)
            } else {
                DEFAULT_BYTES
            }
        } else {
            self.required.max(at_least)
        };
        let size = wanted.div_ceil(BLOCK) * BLOCK;
        if size == 0 {
            return Err(Status::out_of_range(format!(
                "capacity_range limit_bytes {} is less than one 4096-byte block",
                self.limit
            )));
        }
        if self.limit != 0 && size > self.limit {
            let why = if at_least > self.limit {
                format!("the source is {at_least} bytes, more than limit_bytes {}: a restore or clone cannot be smaller than its source", self.limit)
            } else {
                format!(
                    "{size} bytes (whole 4096-byte blocks) exceeds limit_bytes {}",
                    self.limit
                )
            };
            return Err(Status::out_of_range(why));
        }
        if size > MAX_BYTES {
            return Err(Status::out_of_range(format!(
                "{size} bytes is more than the largest volume, {MAX_BYTES} bytes (64 TiB)"
            )));
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn range(required: i64, limit: i64) -> Result<Range, Status> {
        Range::parse(Some(&CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }))
    }

    #[test]
    fn sizes_are_whole_blocks_within_the_range() {
        assert_eq!(
            Range::parse(None).unwrap().choose(0).unwrap(),
            DEFAULT_BYTES
        );
        assert_eq!(range(1, 0).unwrap().choose(0).unwrap(), 4096);
        assert_eq!(range(10 << 30, 0).unwrap().choose(0).unwrap(), 10 << 30);
        assert_eq!(range(0, 8192).unwrap().choose(0).unwrap(), 8192);
        assert_eq!(range(0, 0).unwrap().choose(5000).unwrap(), 8192);
        // A restore is at least its source, even when less was asked for.
        assert_eq!(range(4096, 0).unwrap().choose(1 << 20).unwrap(), 1 << 20);
    }

    #[test]
    fn impossible_ranges_are_named() {
        assert_eq!(range(-1, 0).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(range(8192, 4096).unwrap_err().code(), Code::InvalidArgument);
        let e = range(4096, 4096).unwrap().choose(1 << 20).unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        assert!(
            e.message().contains("cannot be smaller than its source"),
            "{}",
            e.message()
        );
        assert_eq!(
            range(4097, 5000).unwrap().choose(0).unwrap_err().code(),
            Code::OutOfRange
        );
        assert_eq!(
            range(0, 100).unwrap().choose(0).unwrap_err().code(),
            Code::OutOfRange
        );
        assert_eq!(
            range(i64::MAX, 0).unwrap().choose(0).unwrap_err().code(),
            Code::OutOfRange
        );
    }

    #[test]
    fn existing_volumes_are_matched_against_the_range() {
        let r = range(4096, 8192).unwrap();
        assert!(r.admits(4096) && r.admits(8192) && !r.admits(12288) && !r.admits(0));
        assert!(range(4096, 0).unwrap().admits(1 << 40));
    }
}
