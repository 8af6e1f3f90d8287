//! Copy-on-write B+tree operations over the [`Pager`].
//!
//! Internal entry `i` holds a lower bound of every key in child `i` (exactly its smallest key
//! after inserts; possibly smaller after removals) and the max stamp of that subtree. Every
//! update shadows the path from the root, so the committed tree is never touched and a commit
//! is just "write new nodes, flush, flip the superblock". Removal drops empty nodes but does
//! not merge underfull siblings: lookups stay O(depth), space is reclaimed as the tree empties.

use crate::error::{Result, StoreError};
use crate::format::node::{Child, Key, Node};
use crate::ids::MetaBlock;
use crate::pdata::cache::NodeCache;
use crate::pdata::pager::Pager;
use std::sync::Arc;

/// A node as a lookup holds it: shared with the cache (the pager), or borrowed from it for
/// as long as the metadata lock is held shared ([`CachedNodes`]), which spares readers on
/// different CPUs from bouncing the hot nodes' reference counts between them.
pub enum NodeRef<'a> {
    Shared(Arc<Node>),
    Borrowed(&'a Node),
}

impl std::ops::Deref for NodeRef<'_> {
    type Target = Node;
    fn deref(&self) -> &Node {
        match self {
            NodeRef::Shared(n) => n,
            NodeRef::Borrowed(n) => n,
        }
    }
}

/// Where lookups get their nodes: the pager, which loads misses from the device and needs
/// the metadata lock exclusively, or [`CachedNodes`], which needs it only shared.
pub trait NodeSource<'a> {
    type Error: From<StoreError>;
    fn node(&mut self, block: MetaBlock) -> std::result::Result<NodeRef<'a>, Self::Error>;
}

impl NodeSource<'static> for Pager {
    type Error = StoreError;
    fn node(&mut self, block: MetaBlock) -> Result<NodeRef<'static>> {
        Ok(NodeRef::Shared(self.read(block)?))
    }
}

/// The node cache alone, for lookups under a shared metadata lock: a node that is not cached
/// stops the lookup with [`CachedLookupError::NotCached`] instead of being loaded. Hits are
/// added to the cache's count once, when this is dropped, not once per node.
pub struct CachedNodes<'a> {
    cache: &'a NodeCache,
    hits: u64,
}

impl<'a> CachedNodes<'a> {
    pub fn new(cache: &'a NodeCache) -> Self {
        CachedNodes { cache, hits: 0 }
    }
}

impl Drop for CachedNodes<'_> {
    fn drop(&mut self) {
        self.cache.count_hits(self.hits);
    }
}

/// Why a lookup through [`CachedNodes`] stopped.
#[derive(Debug)]
pub enum CachedLookupError {
    /// A node on the path is not in the cache: retry through the pager.
    NotCached,
    Store(StoreError),
}

impl From<StoreError> for CachedLookupError {
    fn from(e: StoreError) -> Self {
        CachedLookupError::Store(e)
    }
}

impl<'a> NodeSource<'a> for CachedNodes<'a> {
    type Error = CachedLookupError;
    fn node(&mut self, block: MetaBlock) -> std::result::Result<NodeRef<'a>, CachedLookupError> {
        let Some(node) = self.cache.peek(block.0) else {
            // The caller retries the whole lookup through the pager, which counts these nodes
            // again: counting them here too would inflate the hit ratio users watch.
            self.hits = 0;
            return Err(CachedLookupError::NotCached);
        };
        self.hits += 1;
        Ok(NodeRef::Borrowed(node))
    }
}

/// Index of the child whose range may hold `key` (0 when `key` is below every bound).
fn child_index(node: &Node, key: &Key) -> usize {
    match node.keys.binary_search(key) {
        Ok(i) => i,
        Err(0) => 0,
        Err(i) => i - 1,
    }
}

fn check_depth(node: &Node, block: MetaBlock) -> Result<()> {
    if !node.is_leaf() && node.is_empty() {
        return Err(StoreError::CorruptNode {
            block,
            reason: "internal node with no children".into(),
        });
    }
    Ok(())
}

/// Blocks of the tree at `root`. Reads only internal nodes: a node of level 1 names its
/// leaves, so counting a tree of a million entries reads a few dozen blocks.
pub fn count_nodes(p: &mut Pager, root: MetaBlock) -> Result<u64> {
    let node = p.read(root)?;
    check_depth(&node, root)?;
    if node.is_leaf() {
        return Ok(1);
    }
    if node.level == 1 {
        return Ok(1 + node.children.len() as u64);
    }
    let mut total = 1;
    for child in &node.children {
        total += count_nodes(p, MetaBlock(child.block))?;
    }
    Ok(total)
}

/// The value stored under exactly `key`.
pub fn lookup<'a, S: NodeSource<'a>>(
    s: &mut S,
    root: MetaBlock,
    key: &Key,
) -> std::result::Result<Option<Vec<u8>>, S::Error> {
    let mut block = root;
    loop {
        let node = s.node(block)?;
        check_depth(&node, block)?;
        if node.is_leaf() {
            return Ok(node
                .keys
                .binary_search(key)
                .ok()
                .map(|i| node.value(i).to_vec()));
        }
        block = MetaBlock(node.children[child_index(&node, key)].block);
    }
}

/// A value found by a seek, inline up to the 16 bytes of an exception or private-map entry:
/// a snapshot read seeks once per chunk, and a heap allocation there was measurable.
pub type SeekValue = smallvec::SmallVec<[u8; 16]>;

/// The smallest entry with key >= `key`.
pub fn seek_ge<'a, S: NodeSource<'a>>(
    s: &mut S,
    root: MetaBlock,
    key: &Key,
) -> std::result::Result<Option<(Key, SeekValue)>, S::Error> {
    let node = s.node(root)?;
    check_depth(&node, root)?;
    if node.is_leaf() {
        let i = match node.keys.binary_search(key) {
            Ok(i) | Err(i) => i,
        };
        return Ok((i < node.len()).then(|| (node.keys[i], SeekValue::from_slice(node.value(i)))));
    }
    for i in child_index(&node, key)..node.len() {
        if let Some(found) = seek_ge(s, MetaBlock(node.children[i].block), key)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The largest entry with key <= `key`.
pub fn seek_le(p: &mut Pager, root: MetaBlock, key: &Key) -> Result<Option<(Key, SeekValue)>> {
    let node = p.read(root)?;
    check_depth(&node, root)?;
    if node.is_leaf() {
        let i = match node.keys.binary_search(key) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        return Ok((i > 0).then(|| (node.keys[i - 1], SeekValue::from_slice(node.value(i - 1)))));
    }
    if node.keys.first().is_some_and(|k| key < k) {
        return Ok(None);
    }
    for i in (0..=child_index(&node, key)).rev() {
        if let Some(found) = seek_le(p, MetaBlock(node.children[i].block), key)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Inserts or replaces `key`; returns the new root.
pub fn insert(p: &mut Pager, root: MetaBlock, key: Key, value: &[u8]) -> Result<MetaBlock> {
    let root = p.shadow(root)?;
    let (stamp, split) = insert_into(p, root, key, value)?;
    let Some((right_key, right_block, right_stamp)) = split else {
        return Ok(root);
    };
    let left = p.read(root)?;
    let mut new_root = Node::new_internal(left.kind, left.level + 1);
    new_root.keys.push(left.keys[0]);
    new_root.children.push(Child {
        block: root.0,
        stamp,
    });
    new_root.keys.push(right_key);
    new_root.children.push(Child {
        block: right_block.0,
        stamp: right_stamp,
    });
    p.write_new(new_root)
}

type Split = Option<(Key, MetaBlock, u64)>;

/// Inserts into the subtree at `block`, already shadowed by the caller. Returns the subtree's
/// max stamp and the right half if the node split.
fn insert_into(p: &mut Pager, block: MetaBlock, key: Key, value: &[u8]) -> Result<(u64, Split)> {
    let mut node = p.read_owned(block)?;
    check_depth(&node, block)?;
    if node.is_leaf() {
        let vs = node.kind.value_size();
        if value.len() != vs {
            return Err(StoreError::CorruptNode {
                block,
                reason: format!(
                    "value of {} bytes for a tree of {vs}-byte values",
                    value.len()
                ),
            });
        }
        match node.keys.binary_search(&key) {
            Ok(i) => node.values[i * vs..(i + 1) * vs].copy_from_slice(value),
            Err(i) => {
                node.keys.insert(i, key);
                let at = i * vs;
                node.values.splice(at..at, value.iter().copied());
            }
        }
    } else {
        let i = child_index(&node, &key);
        if key < node.keys[i] {
            node.keys[i] = key;
        }
        let child = p.shadow(MetaBlock(node.children[i].block))?;
        node.children[i].block = child.0;
        let (stamp, split) = insert_into(p, child, key, value)?;
        node.children[i].stamp = stamp;
        if let Some((k, b, s)) = split {
            node.keys.insert(i + 1, k);
            node.children.insert(
                i + 1,
                Child {
                    block: b.0,
                    stamp: s,
                },
            );
        }
    }
    if node.len() <= node.capacity() {
        let stamp = node.max_stamp();
        p.write(block, node)?;
        return Ok((stamp, None));
    }
    let right = split_node(&mut node);
    let (right_key, right_stamp) = (right.keys[0], right.max_stamp());
    let right_block = p.write_new(right)?;
    let stamp = node.max_stamp();
    p.write(block, node)?;
    Ok((stamp, Some((right_key, right_block, right_stamp))))
}

fn split_node(node: &mut Node) -> Node {
    let mid = node.len() / 2;
    let mut right = if node.is_leaf() {
        Node::new_leaf(node.kind)
    } else {
        Node::new_internal(node.kind, node.level)
    };
    right.keys = node.keys.split_off(mid);
    if node.is_leaf() {
        right.values = node.values.split_off(mid * node.kind.value_size());
    } else {
        right.children = node.children.split_off(mid);
    }
    right
}

/// Removes `key`; returns the new root and the removed value.
pub fn remove(p: &mut Pager, root: MetaBlock, key: &Key) -> Result<(MetaBlock, Option<Vec<u8>>)> {
    if lookup(p, root, key)?.is_none() {
        return Ok((root, None));
    }
    let mut root = p.shadow(root)?;
    let (removed, _) = remove_from(p, root, key)?;
    // Collapse internal roots with a single child; an emptied internal root becomes a leaf.
    loop {
        let node = p.read(root)?;
        if node.is_leaf() {
            break;
        }
        match node.len() {
            0 => {
                p.write(root, Node::new_leaf(node.kind))?;
                break;
            }
            1 => {
                let child = MetaBlock(node.children[0].block);
                p.free(root);
                root = p.shadow(child)?;
            }
            _ => break,
        }
    }
    Ok((root, removed))
}

/// Removes from the subtree at `block` (already shadowed). Returns the removed value and the
/// subtree's new max stamp; an emptied child is freed by its parent.
fn remove_from(p: &mut Pager, block: MetaBlock, key: &Key) -> Result<(Option<Vec<u8>>, u64)> {
    let mut node = p.read_owned(block)?;
    check_depth(&node, block)?;
    let removed = if node.is_leaf() {
        match node.keys.binary_search(key) {
            Ok(i) => {
                let vs = node.kind.value_size();
                let v = node.values.drain(i * vs..(i + 1) * vs).collect();
                node.keys.remove(i);
                Some(v)
            }
            Err(_) => None,
        }
    } else {
        let i = child_index(&node, key);
        let child = p.shadow(MetaBlock(node.children[i].block))?;
        node.children[i].block = child.0;
        let (removed, stamp) = remove_from(p, child, key)?;
        let child_node = p.read(child)?;
        if child_node.is_empty() {
            p.free(child);
            node.keys.remove(i);
            node.children.remove(i);
        } else {
            node.children[i].stamp = stamp;
        }
        removed
    };
    let stamp = node.max_stamp();
    p.write(block, node)?;
    Ok((removed, stamp))
}

/// Visits, in key order, every entry with `from <= key <= to` whose stamp is >= `min_stamp`,
/// skipping whole subtrees whose max stamp is below it. `f` returns false to stop.
pub fn walk(
    p: &mut Pager,
    root: MetaBlock,
    from: &Key,
    to: &Key,
    min_stamp: u64,
    f: &mut dyn FnMut(Key, &[u8]) -> Result<bool>,
) -> Result<bool> {
    let node = p.read(root)?;
    check_depth(&node, root)?;
    if node.is_leaf() {
        for i in 0..node.len() {
            let k = node.keys[i];
            if k < *from {
                continue;
            }
            if k > *to {
                return Ok(false);
            }
            if node.kind.stamp(&k, node.value(i)) < min_stamp {
                continue;
            }
            if !f(k, node.value(i))? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    for i in child_index(&node, from)..node.len() {
        if node.keys[i] > *to {
            return Ok(false);
        }
        if node.children[i].stamp < min_stamp {
            continue;
        }
        if !walk(p, MetaBlock(node.children[i].block), from, to, min_stamp, f)? {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
