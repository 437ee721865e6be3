//! Native host for the `taskstore` component: a Redis-backed research-task store that runs
//! as a WebAssembly component under wasmtime and talks to Redis itself over
//! `wasi:sockets` TCP.
//!
//! ```no_run
//! use taskstore_host::{Options, Runtime, TaskStore};
//!
//! let runtime = Runtime::new()?;
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
//! ([`Runtime::with_call_deadline`]). Its stdout and stderr are kept in a small in-memory
//! buffer whose last line is quoted when it traps.
//!
//! # Layout
//!
//! - [`runtime`]: [`Runtime`], the compiled and linked component, and the embedded
//!   [`COMPONENT`] and [`TLS_COMPONENT`] (`rediss://`) that `build.rs` builds from the
//!   workspace's root package.
//! - `store`: [`AsyncTaskStore`] (one instance, async calls) and [`TaskStore`] (blocking),
//!   and the records their calls take and return ([`Task`], [`UpdateOptions`],
//!   [`ListOptions`], [`Page`], ...).
//! - `options`: [`Options`] and reading the Redis address from the URL.
//! - `network`: the socket allow-list derived from that address.
//! - `sandbox`: the component's WASI context: that network, nothing else.
//! - `error`: [`TaskError`], the component's error variant plus host failures.
//! - `output`: the bounded buffer behind the component's stdout and stderr.
//! - [`cache`]: [`ComponentCache`], the compiled component kept on disk for the CLI.
//! - [`bench`]: `taskstore bench`, the component against a native build of the same client.
//! - [`serve`]: `taskstore serve`, the research-task HTTP function (the workspace's
//!   `function/`, composed with the TLS storage component by `build.rs`) over HTTP/1.1;
//!   `serve/` holds its connection cap, request guard and I/O limits.
//! - `main.rs`: the `taskstore` CLI over this library.
//!
//! The throwaway `redis-server` of the CLI's `demo`, `serve --throwaway-redis` and `bench` is
//! the test fixture of the workspace's `taskstore-testing` crate, which this crate uses but
//! does not re-export; the integration tests are the `taskstore-tests` package (`tests/`).

pub mod bench;
pub mod cache;
mod error;
mod network;
mod options;
mod output;
pub mod runtime;
mod sandbox;
pub mod serve;
mod store;

pub use cache::{CacheOutcome, ComponentCache};
pub use error::TaskError;
pub use options::{redact_url, ClusterAllow, Options};
pub use runtime::{Runtime, COMPONENT, DEFAULT_MEMORY_LIMIT, TLS_COMPONENT};
pub use store::{
    AsyncTaskStore, ListOptions, Page, Task, TaskStore, TimeToLive, TtlPolicy, UpdateOptions,
};

mod bindings {
    wasmtime::component::bindgen!({
        world: "redis-task-store",
        path: "../wit",
        exports: { default: async },
    });
}
