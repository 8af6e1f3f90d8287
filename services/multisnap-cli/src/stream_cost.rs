//! `--compress` and `--bandwidth-limit`, the export options `multisnap delta export` and
//! `multisnap replicate` share: how the agent stores the stream's records and how fast it may
//! send them.

use crate::size::parse_size;
use clap::Args;
use multisnap_proto::v1 as pb;

#[derive(Args, Clone, Debug, Default)]
pub struct StreamCost {
    /// Compress the stream's data records: `zstd` or `zstd:LEVEL` (1-22, default 3), or `none`.
    /// Records that do not shrink are sent as they are; a compressed stream needs a receiver
    /// that reads delta format version 2.
    #[arg(long, value_parser = parse_compress, default_value = "none")]
    pub compress: Compress,
    /// Most stream bytes per second the source agent sends, spread evenly: e.g. 50MiB/s.
    #[arg(long, value_parser = parse_rate)]
    pub bandwidth_limit: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compress {
    #[default]
    None,
    /// 0 is the agent's default level.
    Zstd(i32),
}

impl StreamCost {
    /// Sets the request's compression and bandwidth fields.
    pub fn apply(&self, req: &mut pb::ExportDeltaRequest) {
        let (compression, level, rate) = self.fields();
        req.set_compression(compression);
        req.compression_level = level;
        req.bandwidth_limit_bytes_per_sec = rate;
    }

    /// The API's compression, level (0: the default) and bytes per second (0: no limit).
    pub fn fields(&self) -> (pb::DeltaCompression, i32, u64) {
        let (compression, level) = match self.compress {
            Compress::None => (pb::DeltaCompression::None, 0),
            Compress::Zstd(level) => (pb::DeltaCompression::Zstd, level),
        };
        (compression, level, self.bandwidth_limit.unwrap_or(0))
    }
}

pub fn parse_compress(s: &str) -> Result<Compress, String> {
    match s.split_once(':') {
        None if s == "none" => Ok(Compress::None),
        None if s == "zstd" => Ok(Compress::Zstd(0)),
        Some(("zstd", level)) => match level.parse::<i32>() {
            Ok(l) if (1..=22).contains(&l) => Ok(Compress::Zstd(l)),
            _ => Err(format!("{level:?} is not a zstd level (1-22)")),
        },
        _ => Err(format!("{s:?}: expected none, zstd or zstd:LEVEL")),
    }
}

/// A byte rate: a size as `parse_size` reads it, optionally followed by `/s`.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let size = s.trim().strip_suffix("/s").unwrap_or(s);
    match parse_size(size)? {
        0 => Err(format!("{s:?}: a bandwidth limit must be above zero")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compression_and_rates() {
        assert_eq!(parse_compress("zstd"), Ok(Compress::Zstd(0)));
        assert_eq!(parse_compress("zstd:19"), Ok(Compress::Zstd(19)));
        assert_eq!(parse_compress("none"), Ok(Compress::None));
        assert!(parse_compress("zstd:0").is_err());
        assert!(parse_compress("zstd:23").is_err());
        assert!(parse_compress("gzip").is_err());
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
