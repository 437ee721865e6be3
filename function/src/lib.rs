//! research-api: the research-task HTTP API as a serverless `wasi:http` function.
//!
//! The component exports `wasi:http/incoming-handler` and keeps tasks through the
//! `taskstore:storage/task-storage` interface, which a composition plugs with the Redis-backed
//! `taskstore` component; its settings come from `wasi:config/store`. Everything but the glue
//! to those interfaces is plain Rust that builds and is tested natively.
//!
//! # Layout
//! - [`storage`]: the [`storage::TaskStorage`] seam; its calls fail with the shared model's
//!   `TaskError` (the WIT `error`).
//! - [`settings`]: the `wasi:config/store` keys, parsed strictly.
//! - [`request`]: the request head, routing, query and header parsing, bounded body reads.
//! - [`document`]: task documents — parsing request objects, building new tasks, ids, times.
//! - [`error`]: API errors, their status codes, and the one mapping from storage errors.
//! - [`service`]: one request from head to response, over an [`service::Environment`].
//! - [`openapi`]: the published contract (`openapi.json`), served at
//!   `GET /research/openapi.json` and checked against the function's own tables.
//! - `component` (wasm32 only): WIT bindings, the `wasi:http` export, the per-instance store.
//! - `fake` (tests only): an in-memory task store and a scripted environment.
//!
//! `wit/` holds the function's world and the vendored `wasi:config`; the `task-storage`
//! interface is read from the workspace's `wit/`. The host's `build.rs` builds this crate for
//! `wasm32-wasip2` and composes it with the storage component.

pub mod document;
pub mod error;
pub mod openapi;
pub mod request;
pub mod service;
pub mod settings;
pub mod storage;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod fake;
