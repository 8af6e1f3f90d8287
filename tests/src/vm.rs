//! The qemu guest the kernel tests boot: Debian's kernel and a small initramfs carrying the
//! agent, the CLI and the guest scripts of tests/vm/. Packages are downloaded (never
//! installed) by tests/vm/fetch.sh into a cache outside the repository.

use crate::{agent_bin, cli_bin, csi_bin, repo_root};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the guest cannot boot (no apt, no network): SKIP, except under CI (env `CI` set),
/// where the kernel tests must run.
pub fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("the kernel VM test cannot run under CI: {why}");
    }
    eprintln!("SKIP: {why}");
}

/// The KEY=VALUE lines tests/vm/fetch.sh prints: where qemu, the kernel and the modules are.
pub struct VmEnv(Vec<(String, String)>);

impl VmEnv {
    /// What a kernel test needs before it boots: an x86_64 Linux host with the tools that
    /// fetch.sh and the initramfs builder run (plus `more_tools`), and the fetched packages.
    /// None after [`skip_or_fail`] has said why the test cannot run.
    pub fn for_test(more_tools: &[&str]) -> Option<VmEnv> {
        if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            skip_or_fail("the VM test boots an x86_64 Debian kernel");
            return None;
        }
        let tools = ["apt-get", "dpkg-deb", "xz", "strip", "ldd"];
        if let Some(tool) = tools.iter().chain(more_tools).find(|t| !crate::have(t)) {
            skip_or_fail(&format!("{tool} is not installed"));
            return None;
        }
        VmEnv::fetch().map_err(|why| skip_or_fail(&why)).ok()
    }

    /// Runs tests/vm/fetch.sh (downloads on first use, cached after).
    pub fn fetch() -> Result<VmEnv, String> {
        let out = Command::new("bash")
            .arg(repo_root().join("tests/vm/fetch.sh"))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        if !out.status.success() {
            return Err(format!("tests/vm/fetch.sh failed ({})", out.status));
        }
        Ok(VmEnv(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    pub fn var(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("tests/vm/fetch.sh did not print {key}"))
    }

    /// Builds the initramfs at `out` with this run's agent and CLI binaries.
    pub fn build_initramfs(&self, out: &Path) {
        self.build_initramfs_with(out, &[]);
    }

    /// [`Self::build_initramfs`] with the CSI driver and its test client `csi-call` too (for
    /// `msnap.mode=csi`).
    pub fn build_initramfs_with_csi(&self, out: &Path, csi_call: &Path) {
        self.build_initramfs_with(out, &[&csi_bin(), csi_call]);
    }

    fn build_initramfs_with(&self, out: &Path, more: &[&Path]) {
        let mut build = Command::new("bash");
        build
            .arg(repo_root().join("tests/vm/build-initramfs.sh"))
            .arg(out)
            .arg(agent_bin())
            .arg(cli_bin())
            .args(more);
        for (k, v) in &self.0 {
            build.env(k, v);
        }
        let st = build.status().expect("bash");
        assert!(st.success(), "build-initramfs.sh failed: {st}");
    }
}

/// Why a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEnd {
    /// The guest printed `VMTEST PASS`.
    Pass,
    /// The guest printed `VMTEST FAIL`.
    Fail,
    /// The guest was killed on purpose ([`Boot::cut_after`]): its power was cut.
    PowerCut,
    /// The guest kernel panicked (qemu runs with `-no-reboot`, so it then exits).
    KernelPanic,
    /// Neither within the time allowed, or qemu exited on its own.
    Timeout,
}

pub struct BootResult {
    pub lines: Vec<String>,
    pub end: BootEnd,
    pub elapsed: Duration,
}

/// One boot of the guest.
pub struct Boot<'a> {
    env: &'a VmEnv,
    initrd: &'a Path,
    append: String,
    qemu_args: Vec<OsString>,
    timeout: Duration,
    cut: Option<(String, Duration)>,
}

impl<'a> Boot<'a> {
    /// `append` is added to the kernel command line (the guest script reads `msnap.*`).
    pub fn new(env: &'a VmEnv, initrd: &'a Path, append: &str, timeout: Duration) -> Self {
        Boot {
            env,
            initrd,
            append: append.to_string(),
            qemu_args: Vec::new(),
            timeout,
            cut: None,
        }
    }

    /// More qemu arguments (disks).
    pub fn qemu_args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Kill qemu with SIGKILL `delay` after the guest prints the line `marker`: everything
    /// the guest kernel had not yet handed to its virtual disk is gone, as in a power cut.
    pub fn cut_after(mut self, marker: &str, delay: Duration) -> Self {
        self.cut = Some((marker.to_string(), delay));
        self
    }

    /// Boots, echoing the console to stderr with the time since boot, until PASS, FAIL, the
    /// power cut or the timeout.
    pub fn run(self) -> BootResult {
        let env = self.env;
        let mut cmd = Command::new(env.var("VM_QEMU"));
        cmd.env("LD_LIBRARY_PATH", env.var("VM_LIBRARY_PATH"))
            // Its TCG accelerator is a module; the machine's own qemu (if any) has other ones.
            .env("QEMU_MODULE_DIR", env.var("VM_QEMU_MODULE_DIR"));
        for fw in env.var("VM_FIRMWARE").split(':') {
            cmd.arg("-L").arg(fw);
        }
        // no_timer_check: on a loaded host the emulated timer can miss the kernel's IO-APIC
        // check at boot, which then panics ("IO-APIC + timer doesn't work").
        // thread=single: with one host thread per vCPU (thread=multi) the guest kernel's live
        // code patching (static keys, int3-based text_poke) raced on the other vCPU and
        // oopsed on a stray int3 at boot (seen in CI: "Oops: int3" in sched_clock_tick); vCPUs
        // run round-robin on one thread see each patch whole. Cost here: ext4 test 56 s -> 59 s.
        cmd.args(["-machine", "q35", "-cpu", "max", "-smp", "2", "-m", "3072"])
            .args(["-accel", "tcg,thread=single"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-nic", "none", "-no-reboot"])
            .args(&self.qemu_args)
            .arg("-kernel")
            .arg(env.var("VM_KERNEL"))
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check {}",
                self.append
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("cannot start qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut end = BootEnd::Timeout;
        let mut deadline = start + self.timeout;
        let mut cutting = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("[vm {:6.1}s] {line}", start.elapsed().as_secs_f64());
                    match line.as_str() {
                        "VMTEST PASS" => end = BootEnd::Pass,
                        "VMTEST FAIL" => end = BootEnd::Fail,
                        l if l.contains("Kernel panic - not syncing") => end = BootEnd::KernelPanic,
                        l if !cutting && self.cut.as_ref().is_some_and(|(m, _)| m == l) => {
                            cutting = true;
                            deadline = Instant::now() + self.cut.as_ref().unwrap().1;
                        }
                        _ => {}
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if cutting => {
                    end = BootEnd::PowerCut;
                    break;
                }
                // qemu exited (console closed) or the time is up.
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        // Lines the guest wrote before the kill may still be in the pipe: they happened.
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            eprintln!("[vm {:6.1}s] {line}", start.elapsed().as_secs_f64());
            lines.push(line);
        }
        BootResult {
            lines,
            end,
            elapsed: start.elapsed(),
        }
    }
}
