//! Integration tests: the component, run through the host, against a private `redis-server`
//! (or TLS server, or 3-master cluster) per test.
//!
//! One test binary rather than one per file: each binary links wasmtime, so one per file
//! multiplied link time and disk (a cold `cargo test --workspace` needed ~9 GB), and each
//! compiled the component again. Select a group by module path, e.g.
//! `cargo test -p taskstore-tests --test integration faults::`.
//!
//! # Layout
//! - `support`: the shared runtime, a private server per test, a plain `redis` client.
//! - `storage`, `lifecycle`: every operation and the task lifecycle on one server.
//! - `bad_input`: invalid input, operation by operation; nothing reaches Redis.
//! - `listing`: listing while the data changes never misses a task.
//! - `races`: another client's write at an exact point of an operation (fault proxy).
//! - `faults`: unreachable, restarted, hanging and misbehaving servers; host limits.
//! - `durability`: what the store acknowledged across Redis restarts and crashes.
//! - `real_failures`: `READONLY` from a real replica, `LOADING` from a server loading.
//! - `security`: authentication, secrets never shown, least privilege.
//! - `tls`: `rediss://` with a private CA.
//! - `cluster`, `cluster_policy`: a real 3-master cluster; where its answers may lead.
//! - `sentinel`: a master, a replica and 3 sentinels; failovers while a writer runs.
//! - `status_index`: listing through the status index (`listing: index`), `reindex`.
//! - `keyvalue`: applications written against `wasi:keyvalue`, composed with the key-value
//!   component, on a server and a cluster: every function, CAS races, counters, listing.
//! - `python_compat`: the original Python service's own code reads and writes our tasks.

mod support;

mod bad_input;
mod cluster;
mod cluster_policy;
mod durability;
mod faults;
mod keyvalue;
mod lifecycle;
mod listing;
mod python_compat;
mod races;
mod real_failures;
mod security;
mod sentinel;
mod status_index;
mod storage;
mod tls;
