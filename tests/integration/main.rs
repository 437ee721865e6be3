//! Integration tests: the component, run through the host, against a private `redis-server`
//! (or TLS server, or 3-master cluster) per test.
//!
//! One test binary rather than one per file: each binary links wasmtime, so one per file
//! multiplied link time and disk (a cold `cargo test --workspace` needed ~9 GB), and each
//! compiled the component again. Select a group by module path, e.g.
//! `cargo test -p taskstore-tests --test integration faults::`.

mod support;

mod bad_input;
mod cluster;
mod cluster_policy;
mod durability;
mod faults;
mod lifecycle;
mod listing;
mod python_compat;
mod races;
mod security;
mod storage;
mod tls;
