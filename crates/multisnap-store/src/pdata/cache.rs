//! The node cache: decoded B+tree nodes in an LRU of bounded size. Dirty nodes (written in
//! the current transaction, always to blocks allocated in it) may be evicted at any time by
//! writing them out, so a large transaction never needs unbounded memory.
//!
//! Snapshot reads look nodes up through [`NodeCache::peek`] under a *shared* metadata lock,
//! where the LRU order cannot change. They set the node's `referenced` bit instead, and
//! eviction gives such a node a second chance (moves it to the young end, bit cleared), so
//! nodes only readers use are kept as if every read had touched them.

use crate::format::node::Node;
use crate::format::BLOCK_SIZE;
use lru::LruCache;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Memory charged per cached node: the decoded node plus bookkeeping.
pub const NODE_MEMORY: usize = BLOCK_SIZE + 256;
/// The cache never holds fewer nodes than this, whatever it is configured to: one path from
/// the root to a leaf of each tree plus splits must fit.
pub const MIN_NODES: usize = 64;

#[cfg(not(feature = "fault-injection"))]
fn min_nodes() -> usize {
    MIN_NODES
}

/// Crash tests lower the floor (`fault::set_min_cache_nodes`) so that small workloads evict
/// dirty nodes mid-transaction, as large ones do in production.
#[cfg(feature = "fault-injection")]
fn min_nodes() -> usize {
    crate::fault::min_cache_nodes().unwrap_or(MIN_NODES)
}

/// Nodes are shared, not copied, with readers: a lookup under the metadata lock costs a
/// reference count, not a 4 KiB copy and three allocations per level.
pub struct CachedNode {
    pub node: Arc<Node>,
    pub dirty: bool,
    /// Set by a shared-lock hit ([`NodeCache::peek`]), cleared when eviction spares the node.
    referenced: AtomicBool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub nodes: u64,
    pub capacity_nodes: u64,
}

pub struct NodeCache {
    lru: LruCache<u64, CachedNode>,
    capacity: usize,
    /// Atomic: shared-lock lookups add theirs through [`NodeCache::count_hits`] on `&self`.
    hits: AtomicU64,
    misses: u64,
    evictions: u64,
}

impl NodeCache {
    pub fn with_bytes(bytes: usize) -> NodeCache {
        let capacity = (bytes / NODE_MEMORY).max(min_nodes());
        NodeCache {
            lru: LruCache::unbounded(),
            capacity,
            hits: AtomicU64::new(0),
            misses: 0,
            evictions: 0,
        }
    }

    /// The cached node, counting a hit or a miss.
    pub fn get(&mut self, block: u64) -> Option<Arc<Node>> {
        match self.lru.get(&block) {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(c.node.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// The cached node, without moving it in the LRU order (callers hold the metadata lock
    /// shared), marked referenced. Counts nothing: callers add their hits with `count_hits`
    /// and retry a miss under the exclusive lock, where `get` counts it.
    pub fn peek(&self, block: u64) -> Option<&Node> {
        let c = self.lru.peek(&block)?;
        // Read first: hot nodes stay marked, and their cache line stays shared between CPUs.
        if !c.referenced.load(Ordering::Relaxed) {
            c.referenced.store(true, Ordering::Relaxed);
        }
        Some(&c.node)
    }

    pub fn count_hits(&self, n: u64) {
        if n > 0 {
            self.hits.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Inserts a node; returns the nodes evicted to stay within capacity (the caller must write
    /// out the dirty ones).
    pub fn put(&mut self, block: u64, mut node: Node, dirty: bool) -> Vec<(u64, CachedNode)> {
        // A node that grew by one entry may carry twice its size in spare Vec capacity; the
        // cache charges NODE_MEMORY per node, so hold it to that.
        node.keys.shrink_to_fit();
        node.values.shrink_to_fit();
        node.children.shrink_to_fit();
        self.put_shared(block, Arc::new(node), dirty)
    }

    /// Inserts a node already shared (read from disk and handed out at the same time).
    pub fn put_shared(
        &mut self,
        block: u64,
        node: Arc<Node>,
        dirty: bool,
    ) -> Vec<(u64, CachedNode)> {
        let dirty = dirty || self.lru.peek(&block).is_some_and(|c| c.dirty);
        self.lru.put(
            block,
            CachedNode {
                node,
                dirty,
                referenced: AtomicBool::new(false),
            },
        );
        let mut evicted = Vec::new();
        // Each node is spared at most once per pass (its bit is cleared), so this ends.
        let mut spared = 0;
        while self.lru.len() > self.capacity {
            let Some((&oldest, c)) = self.lru.peek_lru() else {
                break;
            };
            if spared < self.lru.len() && c.referenced.swap(false, Ordering::Relaxed) {
                self.lru.promote(&oldest);
                spared += 1;
                continue;
            }
            if let Some(e) = self.lru.pop_lru() {
                self.evictions += 1;
                evicted.push(e);
            }
        }
        evicted
    }

    pub fn remove(&mut self, block: u64) {
        self.lru.pop(&block);
    }

    /// Every dirty node, marked clean: the commit writes them.
    pub fn take_dirty(&mut self) -> Vec<(u64, Arc<Node>)> {
        let mut out = Vec::new();
        for (b, c) in self.lru.iter_mut() {
            if c.dirty {
                c.dirty = false;
                out.push((*b, c.node.clone()));
            }
        }
        out
    }

    /// Forgets everything (after a failed commit, the cache may disagree with the disk).
    pub fn clear(&mut self) {
        self.lru.clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses,
            evictions: self.evictions,
            nodes: self.lru.len() as u64,
            capacity_nodes: self.capacity as u64,
        }
    }
}

#[cfg(test)]
mod tests;
