//! The pager gives the B+tree code nodes by block number: through the cache, from the store
//! device, into blocks it allocates. It enforces the copy-on-write rule: a block committed in
//! an earlier generation is never rewritten; `shadow` moves it to a fresh block first.

use crate::blockdev::BlockDev;
use crate::error::{Result, StoreError};
use crate::format::node::Node;
use crate::format::BLOCK_SIZE;
use crate::ids::MetaBlock;
use crate::pdata::alloc::ChunkAllocator;
use crate::pdata::cache::NodeCache;
use std::sync::Arc;

pub struct Pager {
    pub dev: Arc<dyn BlockDev>,
    pub cache: NodeCache,
    pub alloc: ChunkAllocator,
    /// The generation the open transaction will commit as.
    pub generation: u64,
    pub chunk_size: u32,
    /// Blocks holding tree nodes, committed or not (counted on open by
    /// `btree::count_nodes`, then kept up to date here); for space reporting only.
    pub node_blocks: u64,
}

impl Pager {
    /// The node at `block`, shared with the cache (callers that change it take a copy and
    /// `write` it back).
    pub fn read(&mut self, block: MetaBlock) -> Result<Arc<Node>> {
        if let Some(n) = self.cache.get(block.0) {
            return Ok(n);
        }
        let node = Arc::new(read_node(&*self.dev, block, self.alloc.total_blocks())?.0);
        let evicted = self.cache.put_shared(block.0, node.clone(), false);
        self.write_evicted(evicted)?;
        Ok(node)
    }

    /// A copy of the node at `block`, to change and `write` back.
    pub fn read_owned(&mut self, block: MetaBlock) -> Result<Node> {
        Ok(Node::clone(&*self.read(block)?))
    }

    /// Stores a node in a block allocated in this transaction.
    pub fn write(&mut self, block: MetaBlock, node: Node) -> Result<()> {
        debug_assert!(
            self.alloc.is_fresh_meta(block),
            "rewriting committed {block}"
        );
        let evicted = self.cache.put(block.0, node, true);
        self.write_evicted(evicted)
    }

    fn write_evicted(
        &mut self,
        evicted: Vec<(u64, crate::pdata::cache::CachedNode)>,
    ) -> Result<()> {
        for (b, c) in evicted {
            if c.dirty {
                self.write_out(b, &c.node)?;
            }
        }
        Ok(())
    }

    fn write_out(&self, block: u64, node: &Node) -> Result<()> {
        let bytes = node.pack(block, self.generation);
        let off = block * BLOCK_SIZE as u64;
        self.dev
            .write_at(&bytes, off)
            .map_err(|e| StoreError::io("store", off, BLOCK_SIZE, e))
    }

    pub fn new_block(&mut self) -> Result<MetaBlock> {
        let block = self.alloc.alloc_meta().ok_or(StoreError::StoreFull {
            needed: 1,
            free: 0,
            chunk_size: self.chunk_size,
        })?;
        self.node_blocks += 1;
        Ok(block)
    }

    /// Allocates a block for a brand-new node and stores it there.
    pub fn write_new(&mut self, node: Node) -> Result<MetaBlock> {
        let b = self.new_block()?;
        self.write(b, node)?;
        Ok(b)
    }

    /// Returns a block holding `block`'s node that this transaction may rewrite.
    pub fn shadow(&mut self, block: MetaBlock) -> Result<MetaBlock> {
        if self.alloc.is_fresh_meta(block) {
            return Ok(block);
        }
        let node = self.read_owned(block)?;
        let fresh = self.new_block()?;
        self.free(block);
        self.write(fresh, node)?;
        Ok(fresh)
    }

    pub fn free(&mut self, block: MetaBlock) {
        if self.alloc.is_fresh_meta(block) {
            self.cache.remove(block.0);
        }
        self.alloc.free_meta(block);
        self.node_blocks = self.node_blocks.saturating_sub(1);
    }

    /// Writes every dirty node (the commit's first step).
    pub fn write_dirty(&mut self) -> Result<()> {
        for (b, node) in self.cache.take_dirty() {
            self.write_out(b, &node)?;
        }
        Ok(())
    }
}

/// Reads and checks one node straight from the device (also used by `verify`).
pub fn read_node(dev: &dyn BlockDev, block: MetaBlock, total_blocks: u64) -> Result<(Node, u64)> {
    if block.0 < 2 || block.0 >= total_blocks {
        return Err(StoreError::CorruptNode {
            block,
            reason: format!("pointer outside the store's {total_blocks} blocks"),
        });
    }
    let mut buf = vec![0u8; BLOCK_SIZE];
    let off = block.0 * BLOCK_SIZE as u64;
    dev.read_at(&mut buf, off)
        .map_err(|e| StoreError::io("store", off, BLOCK_SIZE, e))?;
    Node::unpack(&buf, block.0).map_err(|reason| StoreError::CorruptNode { block, reason })
}
