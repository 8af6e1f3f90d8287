//! Finds the commit being built and hands it to the crate as `MULTISNAP_BUILD_COMMIT`.
//!
//! The commit comes from, in order: the `MULTISNAP_COMMIT` environment variable (for builds
//! from a source archive or a container build context, which have no `.git`), `git rev-parse`
//! of the source tree, or `unknown`. Cargo is told to run this again when HEAD moves (the HEAD
//! file, the branch it names, packed refs) or the variable changes, so a binary never carries
//! the commit of an earlier build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The files whose change means HEAD may point at another commit. A worktree has its own
/// HEAD but shares refs with the main repository (the common dir).
fn head_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    if let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(absolute) {
        files.push(git_dir.join("HEAD"));
        if let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]).map(absolute) {
            if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
                files.push(common.join(branch));
            }
            files.push(common.join("packed-refs"));
        }
    }
    files
}

fn main() {
    println!("cargo:rerun-if-env-changed=MULTISNAP_COMMIT");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let from_env = std::env::var("MULTISNAP_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let commit = match from_env {
        Some(c) => c,
        None => {
            for f in head_files(&dir) {
                if f.exists() {
                    println!("cargo:rerun-if-changed={}", f.display());
                }
            }
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=MULTISNAP_BUILD_COMMIT={commit}");
}
