//! How a mirror's stream travels: its data records zstd-compressed or not, and at most how
//! many stream bytes a second it sends. The same choices as an ExportDelta request's, kept
//! with the mirror and used by every round.

use multisnap_delta::{ZstdLevel, DEFAULT_ZSTD_LEVEL};
use multisnap_proto::v1 as pb;
use multisnap_replication::throttle::BytesPerSec;
use serde_json::{json, Value};

/// A mirror's stream settings; the default sends an uncompressed stream as fast as it can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// `Some(level)`: a delta format version 2 stream with zstd-compressed data records.
    pub compression: Option<ZstdLevel>,
    pub bandwidth_limit: Option<BytesPerSec>,
}

/// The compression an API request asks for (`DeltaCompression` and its level, 0 for the
/// default): `None` for an uncompressed stream; the error names the bad value.
pub fn compression_from(compression: i32, level: i32) -> Result<Option<ZstdLevel>, String> {
    match pb::DeltaCompression::try_from(compression) {
        // The level means nothing without zstd, as in ExportDelta.
        Ok(pb::DeltaCompression::None) => Ok(None),
        Ok(pb::DeltaCompression::Zstd) if level == 0 => Ok(Some(DEFAULT_ZSTD_LEVEL)),
        Ok(pb::DeltaCompression::Zstd) => ZstdLevel::new(level).map(Some).ok_or_else(|| {
            format!("compression_level {level} is not a zstd level (1-22, or 0 for the default)")
        }),
        Err(_) => Err(format!("unknown compression {compression}")),
    }
}

impl StreamSettings {
    /// From the API's fields; the error names the field.
    pub fn from_api(compression: i32, level: i32, bandwidth: u64) -> Result<Self, String> {
        Ok(StreamSettings {
            compression: compression_from(compression, level)?,
            bandwidth_limit: BytesPerSec::new(bandwidth),
        })
    }

    /// The API's fields: compression, level, bytes per second (0: none).
    pub fn to_api(self) -> (pb::DeltaCompression, i32, u64) {
        let (c, level) = match self.compression {
            None => (pb::DeltaCompression::None, 0),
            Some(l) => (pb::DeltaCompression::Zstd, l.get()),
        };
        (c, level, self.bandwidth_limit.map_or(0, BytesPerSec::get))
    }

    /// The mirror file's fields (merged into its `target` object).
    pub fn to_json(self) -> Value {
        json!({
            "compression": self.compression.map_or("none", |_| "zstd"),
            "compression_level": self.compression.map_or(0, ZstdLevel::get),
            "bandwidth_limit_bytes_per_sec": self.bandwidth_limit.map_or(0, BytesPerSec::get),
        })
    }

    /// Reads the mirror file's `target` object; a file written before these settings existed
    /// has none of the fields and means an uncompressed stream without a limit.
    pub fn from_json(t: &Value) -> Result<Self, String> {
        let level = match &t["compression_level"] {
            Value::Null => 0,
            v => v
                .as_i64()
                .and_then(|l| i32::try_from(l).ok())
                .ok_or("target.compression_level is not a number")?,
        };
        let compression = match t["compression"].as_str() {
            None | Some("none") => None,
            Some("zstd") => Some(
                ZstdLevel::new(level)
                    .ok_or(format!("target.compression_level {level} is not 1-22"))?,
            ),
            Some(other) => return Err(format!("target.compression {other:?} is unknown")),
        };
        let bandwidth = match &t["bandwidth_limit_bytes_per_sec"] {
            Value::Null => 0,
            v => v
                .as_u64()
                .ok_or("target.bandwidth_limit_bytes_per_sec is not a number")?,
        };
        Ok(StreamSettings {
            compression,
            bandwidth_limit: BytesPerSec::new(bandwidth),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_values_are_checked_and_round_trip() {
        let zstd = pb::DeltaCompression::Zstd as i32;
        let none = pb::DeltaCompression::None as i32;
        assert_eq!(
            StreamSettings::from_api(zstd, 0, 0).unwrap().compression,
            Some(DEFAULT_ZSTD_LEVEL)
        );
        assert!(StreamSettings::from_api(zstd, 23, 0)
            .unwrap_err()
            .contains("compression_level 23"));
        assert_eq!(
            StreamSettings::from_api(none, 5, 0),
            Ok(StreamSettings::default())
        );
        assert!(StreamSettings::from_api(7, 0, 0)
            .unwrap_err()
            .contains("unknown compression 7"));
        let s = StreamSettings::from_api(zstd, 9, 1 << 20).unwrap();
        assert_eq!(s.to_api(), (pb::DeltaCompression::Zstd, 9, 1 << 20));
        assert_eq!(StreamSettings::from_json(&s.to_json()), Ok(s));
    }

    #[test]
    fn an_old_file_without_the_fields_reads_as_the_default() {
        assert_eq!(
            StreamSettings::from_json(&json!({"endpoint": "unix:/x", "volume": "v"})),
            Ok(StreamSettings::default())
        );
        assert!(StreamSettings::from_json(&json!({"compression": "gzip"}))
            .unwrap_err()
            .contains("gzip"));
        assert!(StreamSettings::from_json(
            &json!({"compression": "zstd", "compression_level": 40})
        )
        .unwrap_err()
        .contains("40"));
    }
}
