//! Identifiers that more than one layer carries: the store keeps a volume's UUID in its
//! superblock, the delta stream names it in its header, and the agent and the CLI show it to
//! operators. Those crates must not depend on each other, so the type lives here, with the one
//! way it is written (the canonical hyphenated lowercase form of RFC 9562).

use std::fmt;
use std::str::FromStr;

/// A volume's identity: 16 random bytes chosen when the volume's store is made, kept for its
/// whole life, and copied into every delta stream exported from it (a replica remembers the
/// UUID of the volume it receives from). The all-zero value means "none".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VolumeUuid([u8; 16]);

impl VolumeUuid {
    /// The all-zero UUID: "no volume" (e.g. a store that is not a replica of anything).
    pub const NIL: VolumeUuid = VolumeUuid([0; 16]);

    /// A new random (version 4) UUID.
    pub fn new_random() -> VolumeUuid {
        VolumeUuid(*uuid::Uuid::new_v4().as_bytes())
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> VolumeUuid {
        VolumeUuid(bytes)
    }

    /// The 16 bytes as they are stored on disk and sent on the wire.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for VolumeUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

/// Debug prints the same spelling, so a UUID in a log line or an assertion message reads the
/// same as in `multisnap volume show`.
impl fmt::Debug for VolumeUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VolumeUuid({self})")
    }
}

/// A string that is not a UUID.
#[derive(Debug, thiserror::Error)]
#[error("not a volume UUID: {input:?} (expected 32 hex digits, optionally hyphenated)")]
pub struct ParseVolumeUuidError {
    input: String,
}

impl FromStr for VolumeUuid {
    type Err = ParseVolumeUuidError;

    fn from_str(s: &str) -> Result<VolumeUuid, ParseVolumeUuidError> {
        uuid::Uuid::try_parse(s)
            .map(|u| VolumeUuid(*u.as_bytes()))
            .map_err(|_| ParseVolumeUuidError {
                input: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_hyphenated_lowercase_and_parses_back() {
        let mut b = [0u8; 16];
        for (i, x) in b.iter_mut().enumerate() {
            *x = 0xa0 + i as u8;
        }
        let u = VolumeUuid::from_bytes(b);
        let s = u.to_string();
        assert_eq!(s, "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf");
        assert_eq!(format!("{u:?}"), format!("VolumeUuid({s})"));
        assert_eq!(s.parse::<VolumeUuid>().unwrap(), u);
        assert_eq!(
            "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"
                .parse::<VolumeUuid>()
                .unwrap(),
            u
        );
    }

    #[test]
    fn refuses_what_is_not_a_uuid() {
        for bad in [
            "",
            "xyz",
            "a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaea",
            "g0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        ] {
            let err = bad.parse::<VolumeUuid>().unwrap_err();
            assert!(err.to_string().contains("not a volume UUID"), "{err}");
        }
    }

    #[test]
    fn nil_is_all_zero_and_random_is_not() {
        assert!(VolumeUuid::NIL.is_nil());
        assert_eq!(VolumeUuid::default(), VolumeUuid::NIL);
        let r = VolumeUuid::new_random();
        assert!(!r.is_nil());
        assert_ne!(r, VolumeUuid::new_random());
    }
}
