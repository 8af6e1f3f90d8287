//! In-memory exports for tests and the fuzzer (feature `testing`).
//!
//! Allocation is tracked per 4 KiB block so `block_status`, TRIM and
//! WRITE_ZEROES have something real to report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::NbdError;
use crate::export::{
    BlockSizes, Export, ExportInfo, ExportListing, ExportProvider, Extent, Fua, ZeroMode,
};

const BLOCK: u64 = 4096;

/// Called with the operation (`"read"` or `"write"`) and the offset before a read or write
/// touches the data: an error fails the request, a panic is a backend panic.
pub type Hook = Box<dyn Fn(&'static str, u64) -> Result<(), NbdError> + Send + Sync>;

struct State {
    data: Vec<u8>,
    /// One flag per 4 KiB block.
    allocated: Vec<bool>,
}

/// A RAM-backed export.
pub struct MemExport {
    state: RwLock<State>,
    size: u64,
    read_only: bool,
    /// Counts FLUSH calls and FUA writes, so tests can see them arrive.
    pub flushes: AtomicU64,
    pub fua_ops: AtomicU64,
    pub trims: AtomicU64,
    pub zeroes: AtomicU64,
    /// When set, every read fails with EIO.
    pub fail_reads: AtomicBool,
    hook: Option<Hook>,
}

impl MemExport {
    pub fn new(size: u64, read_only: bool) -> Self {
        let blocks = size.div_ceil(BLOCK) as usize;
        MemExport {
            state: RwLock::new(State {
                data: vec![0; size as usize],
                allocated: vec![false; blocks],
            }),
            size,
            read_only,
            flushes: AtomicU64::new(0),
            fua_ops: AtomicU64::new(0),
            trims: AtomicU64::new(0),
            zeroes: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            hook: None,
        }
    }

    /// The export, calling `hook` before every read and write.
    pub fn with_hook(mut self, hook: Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    fn run_hook(&self, op: &'static str, offset: u64) -> Result<(), NbdError> {
        self.hook.as_ref().map_or(Ok(()), |hook| hook(op, offset))
    }

    /// Fills the export with `byte`, marking everything allocated.
    pub fn fill(&self, offset: u64, len: u64, byte: u8) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (s, e) = (offset as usize, (offset + len) as usize);
        if let Some(d) = st.data.get_mut(s..e) {
            d.fill(byte);
        }
        mark(&mut st.allocated, offset, len, true, true);
    }

    /// Copy of the current contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .data
            .clone()
    }

    fn count_fua(&self, fua: Fua) {
        if fua.0 {
            self.fua_ops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sets allocation of blocks in `offset..offset+len`. Deallocation only
/// touches blocks the range covers entirely; allocation touches every block
/// it overlaps.
fn mark(alloc: &mut [bool], offset: u64, len: u64, value: bool, partial_ok: bool) {
    if len == 0 {
        return;
    }
    let end = offset + len;
    let (first, last) = if partial_ok {
        (offset / BLOCK, (end - 1) / BLOCK + 1)
    } else {
        (offset.div_ceil(BLOCK), end / BLOCK)
    };
    for b in first..last {
        if let Some(a) = alloc.get_mut(b as usize) {
            *a = value;
        }
    }
}

impl Export for MemExport {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            size: self.size,
            read_only: self.read_only,
            multi_conn: true,
            block_sizes: BlockSizes::default(),
            sparse_reads: true,
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.run_hook("read", offset)?;
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(NbdError::Io {
                op: "read",
                offset,
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let s = offset as usize;
        let src = st.data.get(s..s + buf.len()).ok_or(NbdError::OutOfRange {
            op: "read",
            offset,
            len: buf.len() as u64,
            size: self.size,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], fua: Fua) -> Result<(), NbdError> {
        self.run_hook("write", offset)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let s = offset as usize;
        let dst = st
            .data
            .get_mut(s..s + data.len())
            .ok_or(NbdError::WritePastEnd {
                op: "write",
                offset,
                len: data.len() as u64,
                size: self.size,
            })?;
        dst.copy_from_slice(data);
        mark(&mut st.allocated, offset, data.len() as u64, true, true);
        self.count_fua(fua);
        Ok(())
    }

    fn flush(&self) -> Result<(), NbdError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: Fua) -> Result<(), NbdError> {
        self.trims.fetch_add(1, Ordering::Relaxed);
        self.write_zeroes(offset, len, ZeroMode::MayTrim, fua)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        mode: ZeroMode,
        fua: Fua,
    ) -> Result<(), NbdError> {
        self.zeroes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (s, e) = (offset as usize, (offset + len) as usize);
        let d = st.data.get_mut(s..e).ok_or(NbdError::WritePastEnd {
            op: "write_zeroes",
            offset,
            len,
            size: self.size,
        })?;
        d.fill(0);
        match mode {
            ZeroMode::MayTrim => mark(&mut st.allocated, offset, len, false, false),
            ZeroMode::NoHole => mark(&mut st.allocated, offset, len, true, true),
        }
        self.count_fua(fua);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, NbdError> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let end = offset.saturating_add(len).min(self.size);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            let alloc = st.allocated.get(b as usize).copied().unwrap_or(false);
            let n = next - pos;
            match out.last_mut() {
                Some(last) if last.hole != alloc => last.len += n,
                _ => out.push(Extent {
                    len: n,
                    hole: !alloc,
                    zero: !alloc,
                }),
            }
            pos = next;
        }
        Ok(out)
    }
}

/// A fixed set of named in-memory exports.
#[derive(Default)]
pub struct MemProvider {
    exports: BTreeMap<String, (Arc<MemExport>, Option<String>)>,
    default: Option<String>,
}

impl MemProvider {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: &str, export: Arc<MemExport>, description: Option<&str>) {
        self.exports
            .insert(name.to_owned(), (export, description.map(str::to_owned)));
    }

    pub fn set_default(&mut self, name: &str) {
        self.default = Some(name.to_owned());
    }

    pub fn get(&self, name: &str) -> Option<Arc<MemExport>> {
        self.exports.get(name).map(|(e, _)| e.clone())
    }
}

impl ExportProvider for MemProvider {
    fn list(&self) -> Result<Vec<ExportListing>, NbdError> {
        Ok(self
            .exports
            .iter()
            .map(|(name, (_, d))| ExportListing {
                name: name.clone(),
                description: d.clone(),
            })
            .collect())
    }

    fn default_export(&self) -> Option<String> {
        self.default.clone()
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, NbdError> {
        match self.exports.get(name) {
            Some((e, _)) => Ok(e.clone() as Arc<dyn Export>),
            None => Err(NbdError::ExportNotFound {
                name: name.to_owned(),
            }),
        }
    }
}
