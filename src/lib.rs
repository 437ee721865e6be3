//! taskstore: research tasks stored as JSON documents in Redis, as a WebAssembly component.
//!
//! The component implements the `taskstore:storage/task-storage` interface (see
//! `wit/task-storage.wit`) and talks RESP to Redis by itself over `wasi:sockets` TCP. The
//! same client and store code also builds natively, over `std::net`, for tests and for
//! measuring what the WebAssembly layer costs.
//!
//! # Layout
//! - [`resp`]: RESP2 codec — command encoding, bounded reply decoding. Pure.
//! - [`transport`]: the byte-stream seam (`Connector`, `Transport`) and its error type.
//! - [`tls`] (feature `tls`): `rediss://` — rustls over any transport.
//! - `wasi_tcp` (wasm32 only): the component's connection layer over `wasi:sockets`.
//! - [`std_tcp`] (native only): the same over `std::net`.
//! - [`client`]: typed Redis commands, connection lifecycle, retry of idempotent commands.
//! - [`cluster`]: Redis Cluster, pure: key slots, `CLUSTER SLOTS`, redirects, list cursors.
//! - [`cluster_client`]: a client per node, routing by slot, following `MOVED` / `ASK`.
//! - [`sentinel`]: Redis Sentinel: the master found by asking the sentinels, found again
//!   after a failover.
//!   These two are in every native build, and in a component only with the `topologies`
//!   feature (the full build, `taskstore-tls.wasm`); the plain one reaches one server.
//! - [`backend`]: one server, a cluster or a Sentinel master, behind the one surface the
//!   store uses.
//! - [`config`]: options and URL parsing (`redis://`, `+cluster`, `+sentinel`).
//! - [`kv`]: `wasi:keyvalue` semantics on Redis (buckets, CAS, counters, key listing), for
//!   the key-value component (`kv/`), which reuses this crate without its task-storage
//!   exports (`default-features = false`: no `component` feature).
//! - [`store`]: task semantics ([`store::Store`]) — keys, documents, TTLs, listing; the
//!   error model, the id rule and documents come from the shared `taskstore-model` crate
//!   (re-exported here as [`TaskError`], [`ErrorKind`], [`RedisErrorCode`], [`document`]).
//! - [`text`]: untrusted text made safe for messages.
//! - `component` (wasm32, feature `component`, on by default): WIT bindings and the one mapping of [`TaskError`] to the WIT
//!   error.
//!
//! The host (`host/`), the HTTP function (`function/`), the test fixtures (`testing/`) and the
//! integration tests (`tests/`) are their own workspace packages; this crate depends on none
//! of them, not even to test.

pub mod backend;
pub mod client;
pub mod cluster;
/// Not in a component built without the `topologies` feature (the plain `taskstore.wasm`).
#[cfg(any(feature = "topologies", not(target_arch = "wasm32")))]
pub mod cluster_client;
pub mod config;
pub mod kv;
pub mod resp;
/// Not in a component built without the `topologies` feature (the plain `taskstore.wasm`).
#[cfg(any(feature = "topologies", not(target_arch = "wasm32")))]
pub mod sentinel;
pub mod store;
pub mod text;
pub mod transport;

/// Documents and merge patches live in the shared model crate; re-exported under their old path.
pub use taskstore_model::document;
pub use taskstore_model::{ErrorKind, RedisErrorCode, TaskError};

#[cfg(feature = "tls")]
pub mod tls;

#[cfg(not(target_arch = "wasm32"))]
pub mod std_tcp;
/// Public so another guest crate (the key-value component) connects the same way.
#[cfg(target_arch = "wasm32")]
pub mod wasi_tcp;

/// The `task-storage` exports: a crate that only reuses the client turns the feature off, so
/// its component does not carry (and export) them.
#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;
