//! The node cache: decoded B+tree nodes in an LRU of bounded size. Dirty nodes (written in
//! the current transaction, always to blocks allocated in it) may be evicted at any time by
//! writing them out, so a large transaction never needs unbounded memory.

use crate::format::node::Node;
use crate::format::BLOCK_SIZE;
use lru::LruCache;
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
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl NodeCache {
    pub fn with_bytes(bytes: usize) -> NodeCache {
        let capacity = (bytes / NODE_MEMORY).max(min_nodes());
        NodeCache {
            lru: LruCache::unbounded(),
            capacity,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// The cached node, counting a hit or a miss.
    pub fn get(&mut self, block: u64) -> Option<Arc<Node>> {
        match self.lru.get(&block) {
            Some(c) => {
                self.hits += 1;
                Some(c.node.clone())
            }
            None => {
                self.misses += 1;
                None
            }
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
        self.lru.put(block, CachedNode { node, dirty });
        let mut evicted = Vec::new();
        while self.lru.len() > self.capacity {
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
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            nodes: self.lru.len() as u64,
            capacity_nodes: self.capacity as u64,
        }
    }
}
