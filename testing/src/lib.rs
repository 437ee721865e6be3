//! Test fixtures of the taskstore workspace: what only tests (and the CLI's throwaway
//! server) use, kept out of the host library's public API.
//!
//! Every fixture but `redis_server` sits behind a cargo feature of its name (all on by
//! default), so the CLI takes the throwaway server without the rest.
//!
//! Every fixture is a guard object with bounded waits: it starts its processes or threads on
//! free loopback ports and ends them (killed and reaped, or joined) when dropped.
//!
//! # Layout
//!
//! - [`redis_server`]: [`RedisServer`](redis_server::RedisServer), one private `redis-server` on its own port and
//!   temporary directory, optionally with TLS ([`TlsFiles`](redis_server::TlsFiles)).
//! - [`redis_cluster`]: [`RedisCluster`](redis_cluster::RedisCluster), a private Redis Cluster of masters, and single
//!   cluster-enabled nodes ([`redis_cluster::start_node_announcing`]).
//! - [`redis_sentinel`]: [`RedisSentinel`](redis_sentinel::RedisSentinel), a master, a
//!   replica and three sentinels with fast failover settings (behind the `cluster` feature).
//! - [`pki`]: a CA and a server certificate it signs, generated per test run.
//! - [`fault`]: [`FaultProxy`](fault::FaultProxy), a proxy in front of a real
//!   `redis-server` that injects what Redis will not do by itself (hangs, garbage, resets).

use std::time::Duration;

#[cfg(feature = "fault")]
pub mod fault;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "cluster")]
pub mod redis_cluster;
// With the cluster: the other high-availability fixture, kept out of the CLI's build too.
#[cfg(feature = "cluster")]
pub mod redis_sentinel;
pub mod redis_server;

/// Every plain-client wait, and every poll loop, ends within this.
pub const PLAIN_TIMEOUT: Duration = Duration::from_secs(5);
