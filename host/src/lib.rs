//! Native host for the `taskstore` component: a Redis-backed research-task store that runs
//! as a WebAssembly component under wasmtime and talks to Redis itself over
//! `wasi:sockets` TCP.
//!
//! ```no_run
//! use taskstore_host::{Options, Runtime, TaskStore};
//!
//! let runtime = Runtime::builder().build()?;
//! let mut store = TaskStore::open(&runtime, Options::new("redis://127.0.0.1:6379"))?;
//! store.set("t1", r#"{"status":"pending"}"#, None)?;
//! assert_eq!(store.get("t1")?.as_deref(), Some(r#"{"status":"pending"}"#));
//! # anyhow::Ok(())
//! ```
//!
//! # Sandbox
//!
//! Each store gets its own instance with exactly the access the WIT world asks for: TCP
//! connections to the addresses the URL's host resolves to (resolved by the host), name
//! lookup only when the URL names a host, no UDP, no listening, no environment, arguments
//! or preopened directories, an empty stdin, a memory cap, and a deadline on every call
//! ([`RuntimeBuilder::call_deadline`]). Its stdout and stderr are kept in a small in-memory
//! buffer whose last line is quoted when it traps.
//!
//! # Layout
//!
//! Each module uses only modules listed above it, so none imports one that imports it back:
//!
//! - `output`: the bounded buffer behind the component's stdout and stderr.
//! - `error`: [`TaskError`] (the shared model's, re-exported) and the one mapping from the
//!   component's error variant to it.
//! - `options`: [`Options`] and reading the Redis address from the URL.
//! - `network`: the socket allow-list derived from that address.
//! - `engine`: the engine configuration, the epoch ticker behind every deadline,
//!   compilation, the embedded [`COMPONENT`] and [`TLS_COMPONENT`] (the full build:
//!   `rediss://`, Redis Cluster and Sentinel URLs) that
//!   `build.rs` builds from the workspace's root package, and [`ComponentCache`], the
//!   compiled component kept on disk for the CLI (public as [`cache`]).
//! - `sandbox`: the component's WASI context: that network, nothing else, and caps on
//!   sockets and resources.
//! - `instance`: the one factory of sandboxed instances: the linker and a builder of the
//!   wasmtime `Store` every guest runs in (memory limit, deadline, sandboxed WASI, and
//!   wasi:http and wasi:config for the HTTP function), used by stores, `serve` and `bench`.
//! - [`runtime`]: [`Runtime`], the compiled and linked component with its limits.
//! - [`probe`]: bare instances of a runtime's component, to measure what instantiation and
//!   an idle instance cost (`taskstore bench`).
//! - `store`: [`AsyncTaskStore`] (one instance, async calls) and [`TaskStore`] (blocking),
//!   and the records their calls take and return ([`Task`], [`UpdateOptions`],
//!   [`ListOptions`], [`Page`], ...).
//! - [`serve`]: the research-task HTTP function (the workspace's `function/`, composed with
//!   the TLS storage component by `build.rs`) served over HTTP/1.1, as `taskstore serve`
//!   runs it; `serve/` holds its connection cap, request guard and I/O limits.
//!
//! - [`keyvalue`]: `wasi:keyvalue` for any component: the key-value component
//!   ([`keyvalue::KV_COMPONENT`], the workspace's `kv/`), [`keyvalue::compose`] to plug it
//!   into an application, [`keyvalue::run_command`] to run the result in the sandbox.
//!
//! The `taskstore` CLI (its commands, `demo`, `bench` and the `serve` command) is the
//! workspace's `taskstore-cli` crate (`cli/`), a user of this library's public API; the
//! integration tests are the `taskstore-tests` package (`tests/`).

mod engine;
mod error;
mod instance;
pub mod keyvalue;
mod network;
mod options;
mod output;
pub mod probe;
pub mod runtime;
mod sandbox;
pub mod serve;
mod store;

pub use engine::{CacheOutcome, ComponentCache};
pub use error::{ErrorKind, RedisErrorCode, TaskError};
pub use options::{read_tls_ca_file, redact_url, ClusterAllow, Options};
pub use runtime::{Runtime, RuntimeBuilder, COMPONENT, DEFAULT_MEMORY_LIMIT, TLS_COMPONENT};
pub use store::{
    AsyncTaskStore, ListOptions, ListingMode, Page, ReindexPage, Task, TaskStore, TimeToLive,
    TtlPolicy, UpdateOptions,
};

/// The compiled component kept on disk for short-lived processes; see [`ComponentCache`].
pub mod cache {
    pub use crate::engine::{new_engine, CacheOutcome, ComponentCache, MissReason, CACHE_DIR_ENV};
}

mod bindings {
    // The world's WASI imports are wasmtime-wasi's own bindings, which the linker gets from
    // `wasmtime_wasi::p2` (in `instance`); only the exported interface is generated here.
    wasmtime::component::bindgen!({
        world: "redis-task-store",
        path: "../wit",
        with: { "wasi": wasmtime_wasi::p2::bindings },
        imports: { default: async },
        exports: { default: async },
    });
}

#[cfg(test)]
mod world_check;
