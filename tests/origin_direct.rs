//! A volume whose origin is opened with O_DIRECT (`volume create --origin-cache direct`),
//! driven by real clients: qemu-io writes at 512-byte and odd offsets and sizes, nbdcopy reads
//! the origin and a snapshot back against a reference, and flushed data survives kill -9.

use common::*;
use multisnap_tests::{self as common, require_tools};

const SIZE: usize = 16 << 20;

/// One qemu-io write: `len` bytes of `pattern` at `offset`, mirrored into `reference`.
fn write(agent: &Agent, reference: &mut [u8], pattern: u8, offset: usize, len: usize) {
    qemu_io(
        &agent.uri("d"),
        &[&format!("write -P {pattern} {offset} {len}"), "flush"],
    );
    reference[offset..offset + len].fill(pattern);
}

/// The export read whole with nbdcopy.
fn contents(agent: &Agent, export: &str, tmp: &std::path::Path) -> Vec<u8> {
    let to = tmp.join(format!("{}.img", export.replace('@', "-")));
    let _ = std::fs::remove_file(&to);
    run_ok("nbdcopy", &[&agent.uri(export), to.to_str().unwrap()]);
    std::fs::read(&to).unwrap()
}

/// The `origin cache:` line of `multisnap volume show VOLUME`.
fn origin_cache_shown(agent: &Agent, volume: &str) -> String {
    let shown = cli_ok(agent, &["volume", "show", volume]);
    shown
        .lines()
        .find_map(|l| l.strip_prefix("origin cache:"))
        .unwrap_or_else(|| panic!("no origin cache line: {shown}"))
        .trim()
        .to_string()
}

/// Whether the agent holds `volume`'s origin open with O_DIRECT (its fdinfo flags, octal).
fn origin_opened_direct(agent: &Agent, volume: &str) -> bool {
    let pid = agent.child.as_ref().expect("running").id();
    let suffix = format!("/{volume}/origin.img");
    let mut seen = false;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.to_string_lossy().ends_with(&suffix) {
            continue;
        }
        seen = true;
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        if flags & libc::O_DIRECT as u32 == 0 {
            return false;
        }
    }
    assert!(seen, "the agent has no {suffix} open");
    true
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {at}: {} instead of {}",
            got[at], want[at]
        );
    }
}

#[test]
fn a_direct_origin_takes_unaligned_writes_keeps_snapshots_and_survives_kill_9() {
    require_tools!("qemu-io", "nbdcopy");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "4194304"]);
    cli_ok(
        &agent,
        &[
            "volume",
            "create",
            "d",
            "--size",
            "16M",
            "--origin-cache",
            "direct",
        ],
    );
    assert_eq!(origin_cache_shown(&agent, "d"), "direct");
    assert_eq!(origin_cache_shown(&agent, "default"), "buffered");
    let json: serde_json::Value = serde_json::from_str(&cli_ok(
        &agent,
        &["--output", "json", "volume", "show", "d"],
    ))
    .unwrap();
    assert_eq!(json["originCache"], "ORIGIN_CACHE_DIRECT");
    assert_eq!(
        json["storeJournalBytes"], 0,
        "a direct origin has no journal"
    );
    assert!(origin_opened_direct(&agent, "d"));
    assert!(!origin_opened_direct(&agent, "default"));

    let mut reference = vec![0u8; SIZE];
    // 512-byte aligned (what NBD clients send), odd offsets and sizes, pieces sharing a 4 KiB
    // block, and a whole-chunk write.
    let pieces: [(u8, usize, usize); 8] = [
        (0x11, 512, 1536),
        (0x12, 4096 + 1, 3001),
        (0x13, 4096 + 3002, 1000),
        (0x14, 65536 - 7, 14),
        (0x15, 1 << 20, 65536),
        (0x16, (2 << 20) + 511, 70_001),
        (0x17, SIZE - 513, 513),
        (0x18, 3 * 4096 + 100, 4096),
    ];
    for (p, off, len) in pieces {
        write(&agent, &mut reference, p, off, len);
    }
    assert_same(&contents(&agent, "d", tmp.path()), &reference, "origin");

    cli_ok(&agent, &["snapshot", "create", "d", "s1"]);
    let at_snapshot = reference.clone();
    // Overwrites of everything above, at other misalignments.
    let over: [(u8, usize, usize); 5] = [
        (0x21, 0, 5000),
        (0x22, 4096 + 2000, 2000),
        (0x23, 65536 - 700, 1400),
        (0x24, (1 << 20) + 300, 65536),
        (0x25, (2 << 20) + 1000, 90_000),
    ];
    for (p, off, len) in over {
        write(&agent, &mut reference, p, off, len);
    }
    let views = [("d", &reference), ("d@s1", &at_snapshot)];
    for (export, want) in views {
        let what = format!("{export} after overwrite");
        assert_same(&contents(&agent, export, tmp.path()), want, &what);
    }

    // Every write above was flushed: all of it survives a kill -9 and a restart.
    agent.kill9();
    let v = agent_cmd(&dir, &["verify"]);
    assert!(v.status.success(), "verify after kill -9: {}", describe(&v));
    let agent = Agent::start(&dir, &[]);
    for (export, want) in views {
        let what = format!("{export} after kill -9");
        assert_same(&contents(&agent, export, tmp.path()), want, &what);
    }
    assert_eq!(origin_cache_shown(&agent, "d"), "direct", "after a restart");
    assert!(origin_opened_direct(&agent, "d"), "reopened with O_DIRECT");
    assert!(agent.stop().success());
}

#[test]
fn a_direct_origin_of_unaligned_size_is_refused_clearly() {
    require_tools!("qemu-io");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let agent = Agent::start(&dir, &["--default-volume-size", "4194304"]);
    let out = cli(
        &agent,
        &[
            "volume",
            "create",
            "odd",
            "--size",
            "1049088",
            "--origin-cache",
            "direct",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "created: {err}");
    assert!(err.contains("multiple of 4096"), "{err}");
    // Nothing was left behind: the same name works buffered.
    cli_ok(&agent, &["volume", "create", "odd", "--size", "1049088"]);

    // A direct volume grows only to whole 4 KiB blocks: an odd size is refused with the
    // reason, changes nothing, and a whole-block size then works with the data intact.
    let uri = |volume: &str| agent.uri(volume);
    cli_ok(
        &agent,
        &[
            "volume",
            "create",
            "g",
            "--size",
            "4194304",
            "--origin-cache",
            "direct",
        ],
    );
    qemu_io(&uri("g"), &["write -P 0x5a 4190208 4096", "flush"]);
    let out = cli(&agent, &["volume", "resize", "g", "4195328"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "grown to an odd size: {err}");
    assert!(err.contains("multiples of 4096"), "{err}");
    assert_eq!(run_ok("nbdinfo", &["--size", &uri("g")]).trim(), "4194304");
    cli_ok(&agent, &["volume", "resize", "g", "8388608"]);
    assert_eq!(run_ok("nbdinfo", &["--size", &uri("g")]).trim(), "8388608");
    let read = qemu_io(
        &uri("g"),
        &["read -P 0x5a 4190208 4096", "read -P 0 4194304 4194304"],
    );
    assert!(!read.contains("Pattern verification failed"), "{read}");
    assert!(agent.stop().success());
}
