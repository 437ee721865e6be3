//! The key-value component: `wasi:keyvalue/store`, `atomics` and `batch`, at both
//! `@0.2.0-draft2` and `@0.2.0-draft`, exported over Redis from inside the guest.
//!
//! The Redis semantics are `taskstore::kv` (unit-tested natively there); this crate is only
//! the WIT glue (`component`, wasm32 only): configuration from `wasi:config/store`, one
//! connection per instance shared by every bucket, and the mapping of both WIT shapes onto
//! the one semantics module. See the README section "wasi:keyvalue: Redis for any
//! component".

#[cfg(target_arch = "wasm32")]
mod component;
