//! What the replication tests share: stores of small chunks with the smallest index cache (so
//! the index is read from and written to its device), and whole-view reads.

// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use multisnap_store::{CreateOptions, MemDev, Store, View};
use std::sync::Arc;

pub fn options(chunk: u64) -> CreateOptions {
    CreateOptions {
        chunk_size: chunk as u32,
        cache_bytes: 0,
        ..Default::default()
    }
}

/// A store in memory: an origin of `size` bytes and an 8 MiB store device.
pub fn mem_store(size: u64, chunk: u64) -> Store {
    Store::create(
        Arc::new(MemDev::new(size)),
        Arc::new(MemDev::new(8 << 20)),
        &options(chunk),
    )
    .unwrap()
}

/// The first `size` bytes of `view`.
pub fn read_all(s: &Store, view: View, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    s.read(view, 0, &mut b).unwrap();
    b
}
