//! Persistent data: the layer below the metadata transaction, which knows blocks, nodes and
//! keys but not what an exception or a snapshot is. The copy-on-write B+tree ([`btree`]) reads
//! and shadows nodes through the [`pager`], which keeps them in the node [`cache`] and takes
//! blocks and chunks from the allocator ([`alloc`]); [`locations`] remembers where snapshot
//! reads found their chunks. Nothing here imports `meta` or `store`.

pub mod alloc;
pub mod btree;
pub mod cache;
pub mod locations;
pub mod pager;
