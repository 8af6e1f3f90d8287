//! The version line every multisnap binary reports: `<workspace version> (<git commit>)`.
//!
//! The commit is fixed when this crate is built (see build.rs: `MULTISNAP_COMMIT`, else
//! `git rev-parse`, else `unknown`). All binaries of the workspace share the workspace
//! version, so this crate's own package version is theirs.
//!
//! Use with clap: `#[command(version = multisnap_build_info::VERSION_LINE)]`.

/// The workspace version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit (12 hex digits) the binary was built from, or what `MULTISNAP_COMMIT` said,
/// or `unknown`.
pub const COMMIT: &str = env!("MULTISNAP_BUILD_COMMIT");

/// `VERSION (COMMIT)`, what `--version` prints after the binary's name.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("MULTISNAP_BUILD_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_is_version_and_commit() {
        assert_eq!(VERSION_LINE, format!("{VERSION} ({COMMIT})"));
    }

    /// Built from a git checkout without an override, the commit is the checkout's HEAD
    /// (build.rs reruns when HEAD moves, so a test build is never a commit behind).
    #[test]
    fn commit_is_the_checkouts_head() {
        if std::env::var_os("MULTISNAP_COMMIT").is_some() {
            return;
        }
        let head = std::process::Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short=12",
                "HEAD",
            ])
            .output();
        match head {
            Ok(out) if out.status.success() => {
                assert_eq!(COMMIT, String::from_utf8_lossy(&out.stdout).trim());
            }
            _ => assert_eq!(COMMIT, "unknown"),
        }
    }
}
