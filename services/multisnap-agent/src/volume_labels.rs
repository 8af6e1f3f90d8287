//! Labels: key/value pairs a client attaches to a volume when it creates it, so that what it
//! needs to know about the volume lives with the volume. The CSI driver records there the
//! filesystem type and the content source a Kubernetes volume was made with, which it must
//! compare when CreateVolume is repeated.
//!
//! Labels are fixed at creation. They are written to `labels` in the volume's folder while
//! that folder still has its staging name, and made durable before the rename that gives the
//! volume its name: a power cut leaves either no volume or the volume with all its labels,
//! never one without. A volume without the file has no labels (volumes made before labels).
//!
//! The file holds one `key=value` per line, in key order. Keys cannot hold `=` and values
//! cannot hold a line break, so the format needs no escaping.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub const LABELS_FILE: &str = "labels";

/// At most this many labels per volume.
pub const MAX_LABELS: usize = 32;
const MAX_KEY_BYTES: usize = 128;
const MAX_VALUE_BYTES: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Checks labels given by a client; the message names the first rule broken.
    pub fn new(map: impl IntoIterator<Item = (String, String)>) -> Result<Labels, String> {
        let map: BTreeMap<String, String> = map.into_iter().collect();
        if map.len() > MAX_LABELS {
            return Err(format!(
                "a volume takes at most {MAX_LABELS} labels, not {}",
                map.len()
            ));
        }
        for (k, v) in &map {
            check_key(k)?;
            check_value(k, v)?;
        }
        Ok(Labels(map))
    }

    pub fn map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Writes the labels into `dir` and makes the file durable (the caller makes the
    /// directory entry durable). No labels, no file.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut f = crate::permissions::create_private_file(&dir.join(LABELS_FILE))?;
        f.write_all(self.encode().as_bytes())?;
        f.sync_all()
    }

    /// The labels of the volume in `dir`; none when it has no labels file.
    pub fn read_from(dir: &Path) -> Result<Labels, String> {
        let path = dir.join(LABELS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Labels::decode(&bytes).map_err(|e| format!("labels file {}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Labels::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn encode(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    fn decode(bytes: &[u8]) -> Result<Labels, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let mut pairs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {} has no '='", n + 1))?;
            pairs.push((k.to_string(), v.to_string()));
        }
        let count = pairs.len();
        let labels = Labels::new(pairs)?;
        if labels.0.len() != count {
            return Err("a key appears twice".to_string());
        }
        Ok(labels)
    }
}

fn check_key(k: &str) -> Result<(), String> {
    let well_formed = !k.is_empty()
        && k.len() <= MAX_KEY_BYTES
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "label key {k:?} must be 1 to {MAX_KEY_BYTES} bytes of [A-Za-z0-9._/-], starting with a letter or digit"
        ))
    }
}

fn check_value(k: &str, v: &str) -> Result<(), String> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of label {k:?} is {} bytes; at most {MAX_VALUE_BYTES}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "the value of label {k:?} holds a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Result<Labels, String> {
        Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn bad_labels_are_refused_with_the_rule_they_break() {
        for (pairs, needle) in [
            (vec![("", "x")], "must be 1 to"),
            (vec![("-a", "x")], "starting with"),
            (vec![("a=b", "x")], "[A-Za-z0-9._/-]"),
            (vec![("a", "line\nbreak")], "control character"),
        ] {
            let e = labels(&pairs).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        let long = "v".repeat(MAX_VALUE_BYTES + 1);
        assert!(labels(&[("a", &long)]).unwrap_err().contains("at most"));
        let many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(Labels::new(many).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn a_volume_without_a_labels_file_has_none_and_empty_labels_write_no_file() {
        let dir = tempfile::tempdir().unwrap();
        Labels::default().write_to(dir.path()).unwrap();
        assert!(!dir.path().join(LABELS_FILE).exists());
        assert_eq!(Labels::read_from(dir.path()).unwrap(), Labels::default());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [&b"\xff\xfe"[..], b"no-equals\n", b"a=1\na=2\n", b"-k=v\n"] {
            std::fs::write(dir.path().join(LABELS_FILE), bad).unwrap();
            let e = Labels::read_from(dir.path()).unwrap_err();
            assert!(e.contains("labels file"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn labels_read_back_as_written(
            map in proptest::collection::btree_map(
                "[a-z0-9][a-z0-9._/-]{0,20}", "[^\\p{Cc}]{0,40}", 0..MAX_LABELS)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let l = Labels::new(map.clone()).unwrap();
            l.write_to(dir.path()).unwrap();
            let read = Labels::read_from(dir.path()).unwrap();
            prop_assert_eq!(read.map(), &map);
        }

        #[test]
        fn any_file_content_reads_as_labels_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(LABELS_FILE), &bytes).unwrap();
            let _ = Labels::read_from(dir.path());
        }
    }
}
