//! Test harness: a private `redis-server` per test (from `taskstore-testing`, with the
//! cluster, certificate and fault-proxy fixtures), the component compiled once per test
//! process, and an independent plain Redis client to check what the component wrote (and to
//! write data the way other clients do).

use std::net::{Ipv4Addr, TcpListener};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use taskstore_host::{ErrorKind, Options, Runtime, TaskError, TaskStore};
pub use taskstore_testing::redis_server::{RedisServer, RefusingPort};

/// The key prefix the component uses when none is configured.
pub const DEFAULT_PREFIX: &str = "research_task:";
/// The TTL the component gives when none is configured: 7 days.
pub const DEFAULT_TTL: u64 = 604_800;
/// Every plain-client wait, and every poll loop, ends within this (the fault proxy's too).
pub use taskstore_testing::PLAIN_TIMEOUT;

/// The component, compiled once and shared by every test in this process.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::builder()
            .build()
            .expect("the taskstore component compiles")
    })
}

/// A fresh private `redis-server`.
pub fn server() -> RedisServer {
    RedisServer::start().expect("redis-server starts (run scripts/setup.sh if it is missing)")
}

/// Opens a component store with the given options.
pub fn open_with(options: Options) -> Result<TaskStore, TaskError> {
    TaskStore::open(runtime(), options)
}

/// The kind of `result`'s error; `None` if it succeeded.
pub fn kind<T>(result: &Result<T, TaskError>) -> Option<ErrorKind> {
    result.as_ref().err().map(TaskError::kind)
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

/// A loopback port that refuses connections for the rest of this test process: its
/// [`RefusingPort`] guard is leaked, so no other test can take the port meanwhile (a port
/// bound and released could be).
pub fn closed_port() -> u16 {
    let refusing = RefusingPort::bind().expect("bind 127.0.0.1:0 without listening");
    let port = refusing.port();
    std::mem::forget(refusing);
    port
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

/// `PTTL key`: milliseconds left, -1 for no expiry, -2 for no key.
pub fn plain_pttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).expect("plain PTTL")
}

/// How many times the server has run each command (`INFO commandstats`), by lower-case
/// name (`setex`, `mget`, `info`, ...). Subcommands appear as `client|list`.
pub fn command_calls(con: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .expect("plain INFO commandstats");
    // Lines look like `cmdstat_setex:calls=100,usec=...,...`.
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// The calls of each command between two [`command_calls`] snapshots, commands that ran at
/// least once only, without the `info` calls that took the snapshots.
pub fn command_delta(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, &calls)| {
            let delta = calls - before.get(name).copied().unwrap_or(0);
            (delta > 0).then(|| (name.clone(), delta))
        })
        .collect()
}

/// A loopback TCP proxy in front of Redis that counts round trips.
///
/// It forwards the client's bytes in *bursts*: it gathers what the client sends until the
/// client has been quiet for [`CountingProxy::QUIET`], then passes it on in one write and
/// counts one burst. A client that waits for a reply before sending its next command can
/// never fit two commands in one burst (the reply only comes once the burst is passed on),
/// so N sequential commands are N bursts; a pipelined batch written at once is one burst.
/// Replies are passed back as they come.
///
/// Every connection thread polls a stop flag between reads, so `Drop` stops and joins them
/// all within a bounded time.
pub struct CountingProxy {
    addr: std::net::SocketAddr,
    bursts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: std::sync::Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    /// How long the client must be silent before the bytes gathered so far are one burst.
    pub const QUIET: Duration = Duration::from_millis(50);

    /// A proxy on a fresh 127.0.0.1 port forwarding every connection to `upstream`.
    pub fn start(upstream: std::net::SocketAddr) -> CountingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let bursts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (bursts, stop, threads) = (bursts.clone(), stop.clone(), threads.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    // `Drop` wakes this loop with a connection of its own after setting
                    // the flag.
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = std::net::TcpStream::connect_timeout(&upstream, PLAIN_TIMEOUT)
                    else {
                        continue;
                    };
                    let pair = proxy_connection(client, server, bursts.clone(), stop.clone());
                    threads.lock().expect("proxy thread list").extend(pair);
                }
            })
        };
        CountingProxy {
            addr,
            bursts,
            stop,
            threads,
            accept: Some(accept),
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Client bursts passed on so far, over every connection.
    pub fn bursts(&self) -> usize {
        self.bursts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, PLAIN_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let threads = std::mem::take(&mut *self.threads.lock().expect("proxy thread list"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The two forwarding threads of one proxied connection.
fn proxy_connection(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    bursts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> [std::thread::JoinHandle<()>; 2] {
    use std::io::{ErrorKind, Read, Write};
    use std::net::Shutdown;
    use std::sync::atomic::Ordering;

    let streams = [&client, &server];
    for stream in streams {
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(CountingProxy::QUIET))
            .expect("proxy read timeout");
        stream
            .set_write_timeout(Some(PLAIN_TIMEOUT))
            .expect("proxy write timeout");
    }
    let (mut client_in, mut server_out) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    let upstream_stop = stop.clone();
    let upstream = std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_in.read(&mut buf) {
                Ok(0) => {
                    if !pending.is_empty() {
                        bursts.fetch_add(1, Ordering::SeqCst);
                        let _ = server_out.write_all(&pending);
                    }
                    break;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !pending.is_empty() {
                        bursts.fetch_add(1, Ordering::SeqCst);
                        if server_out.write_all(&pending).is_err() {
                            break;
                        }
                        pending.clear();
                    }
                    if upstream_stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = server_out.shutdown(Shutdown::Both);
        let _ = client_in.shutdown(Shutdown::Both);
    });
    let (mut server_in, mut client_out) = (server, client);
    let downstream = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_in.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = client_out.shutdown(Shutdown::Both);
        let _ = server_in.shutdown(Shutdown::Both);
    });
    [upstream, downstream]
}
