//! B+tree nodes. Leaves hold sorted (key, value) entries; internal nodes hold sorted
//! (first key of child, child block, newest stamp in child) entries. The stamp lets a scan skip
//! every subtree with nothing newer than a given snapshot (delta export).

use super::*;
use crate::checksum::{is_sealed, seal, NODE_SALT};

const OFF_SELF: usize = 8;
const OFF_GENERATION: usize = 16;
const OFF_COUNT: usize = 24;
const OFF_VALUE_SIZE: usize = 26;
const OFF_KIND: usize = 28;
const OFF_LEVEL: usize = 30;
/// Where entries start.
pub const ENTRIES_OFFSET: usize = 32;
const KEY_SIZE: usize = 16;
const INTERNAL_ENTRY: usize = KEY_SIZE + 16;

/// A B+tree key: two u64s compared lexicographically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub hi: u64,
    pub lo: u64,
}

impl Key {
    pub const fn new(hi: u64, lo: u64) -> Key {
        Key { hi, lo }
    }
    pub const MIN: Key = Key::new(0, 0);
    pub const MAX: Key = Key::new(u64::MAX, u64::MAX);
}

/// Which tree a node belongs to; fixes the value size and the stamp of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeKind {
    /// key (origin chunk, last snapshot id) -> value (first snapshot id, store chunk).
    Exceptions = 1,
    /// key (snapshot id, 0) -> value: a snapshot record.
    Snapshots = 2,
    /// Writable snapshots' own chunks: key (snapshot id, origin chunk) -> value (store chunk, 0).
    Private = 3,
}

impl TreeKind {
    pub fn value_size(self) -> usize {
        match self {
            TreeKind::Exceptions | TreeKind::Private => 16,
            TreeKind::Snapshots => snapshot_record::RECORD_SIZE,
        }
    }
    pub fn from_u8(v: u8) -> Option<TreeKind> {
        match v {
            1 => Some(TreeKind::Exceptions),
            2 => Some(TreeKind::Snapshots),
            3 => Some(TreeKind::Private),
            _ => None,
        }
    }
    /// Entries per leaf.
    pub fn leaf_capacity(self) -> usize {
        (BLOCK_SIZE - ENTRIES_OFFSET) / (KEY_SIZE + self.value_size())
    }
    /// Entries per internal node.
    pub fn internal_capacity(self) -> usize {
        (BLOCK_SIZE - ENTRIES_OFFSET) / INTERNAL_ENTRY
    }
    /// The stamp of a leaf entry: for exceptions the last snapshot that sees it, which only
    /// grows over time, so "max stamp < A" proves a subtree holds nothing newer than A.
    pub fn stamp(self, key: &Key, _value: &[u8]) -> u64 {
        match self {
            TreeKind::Exceptions => key.lo,
            TreeKind::Snapshots | TreeKind::Private => key.hi,
        }
    }
}

/// A child pointer in an internal node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub block: u64,
    /// Max stamp of any entry in the subtree.
    pub stamp: u64,
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: TreeKind,
    /// 0 for leaves.
    pub level: u16,
    pub keys: Vec<Key>,
    /// Leaf only: `keys.len() * kind.value_size()` bytes.
    pub values: Vec<u8>,
    /// Internal only: one per key.
    pub children: Vec<Child>,
}

impl Node {
    pub fn new_leaf(kind: TreeKind) -> Node {
        Node {
            kind,
            level: 0,
            keys: Vec::new(),
            values: Vec::new(),
            children: Vec::new(),
        }
    }
    pub fn new_internal(kind: TreeKind, level: u16) -> Node {
        Node {
            kind,
            level,
            keys: Vec::new(),
            values: Vec::new(),
            children: Vec::new(),
        }
    }
    pub fn is_leaf(&self) -> bool {
        self.level == 0
    }
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn capacity(&self) -> usize {
        if self.is_leaf() {
            self.kind.leaf_capacity()
        } else {
            self.kind.internal_capacity()
        }
    }
    pub fn value(&self, i: usize) -> &[u8] {
        let vs = self.kind.value_size();
        &self.values[i * vs..(i + 1) * vs]
    }
    /// Max stamp over the node's entries (0 when empty).
    pub fn max_stamp(&self) -> u64 {
        if self.is_leaf() {
            (0..self.len())
                .map(|i| self.kind.stamp(&self.keys[i], self.value(i)))
                .max()
                .unwrap_or(0)
        } else {
            self.children.iter().map(|c| c.stamp).max().unwrap_or(0)
        }
    }

    pub fn pack(&self, self_block: u64, generation: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u64(&mut b, OFF_SELF, self_block);
        put_u64(&mut b, OFF_GENERATION, generation);
        put_u16(&mut b, OFF_COUNT, self.keys.len() as u16);
        put_u16(&mut b, OFF_VALUE_SIZE, self.kind.value_size() as u16);
        b[OFF_KIND] = self.kind as u8;
        put_u16(&mut b, OFF_LEVEL, self.level);
        let mut at = ENTRIES_OFFSET;
        for (i, k) in self.keys.iter().enumerate() {
            put_u64(&mut b, at, k.hi);
            put_u64(&mut b, at + 8, k.lo);
            at += KEY_SIZE;
            if self.is_leaf() {
                let v = self.value(i);
                b[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            } else {
                put_u64(&mut b, at, self.children[i].block);
                put_u64(&mut b, at + 8, self.children[i].stamp);
                at += 16;
            }
        }
        seal(&mut b, NODE_SALT);
        b
    }

    /// Decodes and checks a node read from `self_block`. Returns the node and the generation
    /// that wrote it.
    pub fn unpack(b: &[u8], self_block: u64) -> Result<(Node, u64), String> {
        if b.len() != BLOCK_SIZE || !is_sealed(b, NODE_SALT) {
            return Err("checksum mismatch".into());
        }
        let written_at = get_u64(b, OFF_SELF);
        if written_at != self_block {
            return Err(format!(
                "node written for block {written_at} found at {self_block}"
            ));
        }
        let kind = TreeKind::from_u8(b[OFF_KIND]).ok_or("unknown tree kind")?;
        if get_u16(b, OFF_VALUE_SIZE) as usize != kind.value_size() {
            return Err("value size does not match the tree kind".into());
        }
        let level = get_u16(b, OFF_LEVEL);
        let count = get_u16(b, OFF_COUNT) as usize;
        let mut node = if level == 0 {
            Node::new_leaf(kind)
        } else {
            Node::new_internal(kind, level)
        };
        if count > node.capacity() {
            return Err(format!(
                "{count} entries exceed the node capacity {}",
                node.capacity()
            ));
        }
        let vs = kind.value_size();
        let mut at = ENTRIES_OFFSET;
        for _ in 0..count {
            node.keys.push(Key::new(get_u64(b, at), get_u64(b, at + 8)));
            at += KEY_SIZE;
            if level == 0 {
                node.values.extend_from_slice(&b[at..at + vs]);
                at += vs;
            } else {
                node.children.push(Child {
                    block: get_u64(b, at),
                    stamp: get_u64(b, at + 8),
                });
                at += 16;
            }
        }
        if node.keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err("keys are not strictly increasing".into());
        }
        Ok((node, get_u64(b, OFF_GENERATION)))
    }
}
