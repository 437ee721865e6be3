//! Test harness: a private `redis-server` per test, the component compiled once per test
//! process, and an independent plain Redis client to check what the component wrote (and to
//! write data the way other clients do).

// Each test crate uses a different part of the harness.
#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use taskstore_host::redis_server::RedisServer;
use taskstore_host::{Options, Runtime, TaskError, TaskStore};

/// The key prefix the component uses when none is configured.
pub const DEFAULT_PREFIX: &str = "research_task:";
/// The TTL the component gives when none is configured: 7 days.
pub const DEFAULT_TTL: u64 = 604_800;
/// Every plain-client wait, and every poll loop, ends within this.
pub const PLAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The component, compiled once and shared by every test in this process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("the taskstore component compiles"))
}

/// A fresh private `redis-server`.
pub fn server() -> RedisServer {
    RedisServer::start().expect("redis-server starts (run scripts/setup.sh if it is missing)")
}

/// Opens a component store with the given options.
pub fn open_with(options: Options) -> Result<TaskStore, TaskError> {
    TaskStore::open(runtime(), options)
}

/// Opens a component store with default options against `server`.
pub fn open(server: &RedisServer) -> TaskStore {
    open_with(Options::new(server.url())).expect("the component opens a store")
}

/// A plain Redis connection (no component involved) to `server`, database 0.
pub fn plain(server: &RedisServer) -> redis::Connection {
    plain_url(&server.url())
}

/// A plain Redis connection to `url`.
pub fn plain_url(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("a valid plain-client URL");
    let con = client
        .get_connection_with_timeout(PLAIN_TIMEOUT)
        .expect("the plain client connects");
    con.set_read_timeout(Some(PLAIN_TIMEOUT))
        .expect("read timeout");
    con.set_write_timeout(Some(PLAIN_TIMEOUT))
        .expect("write timeout");
    con
}

/// The raw bytes stored under `key`, as a plain `GET` sees them.
pub fn plain_get(con: &mut redis::Connection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(con).expect("plain GET")
}

/// Redis's `TTL` of `key`: seconds left, -1 for no expiry, -2 for no key.
pub fn plain_ttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(con).expect("plain TTL")
}

/// `SET key value` without an expiry.
pub fn plain_set(con: &mut redis::Connection, key: &str, value: impl redis::ToRedisArgs) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(con)
        .expect("plain SET");
}

/// Number of keys in the current database.
pub fn dbsize(con: &mut redis::Connection) -> i64 {
    redis::cmd("DBSIZE").query(con).expect("plain DBSIZE")
}

/// A loopback port where nothing listens: bound a moment ago, then released.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Calls `probe` until it returns `true` or `limit` has passed; returns its last answer.
pub fn eventually(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
