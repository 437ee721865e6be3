//! The `taskstore` binary, run as a user would: its commands, its behaviour under failure,
//! `rediss://`, and `taskstore serve` over real HTTP, each against a private `redis-server`
//! per test.
//!
//! One test binary rather than one per file, to link (and store) the test harness once.
//! Select a group by module path, e.g. `cargo test -p taskstore-cli --test cli serve::`.

mod commands;
mod contract;
mod failures;
mod keyvalue;
mod operations;
mod reliability;
mod run;
mod sentinel;
mod serve;
mod tls;
