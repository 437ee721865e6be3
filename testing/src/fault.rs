//! A fault-injecting proxy in front of a real `redis-server`, for what Redis will not do by
//! itself: hang, answer half a frame, answer garbage, reset mid-reply, or drop the client
//! right after executing its command.
//!
//! The proxy reads the client's requests (RESP arrays), forwards each batch to Redis on its
//! own upstream connection and relays the replies, until a batch names a command a fault
//! was armed for: that batch gets the fault instead. Every fault fires a fixed number of
//! times, then the proxy is a plain proxy again, so a test can show the next call working
//! through the same address.
//!
//! Threads poll a stop flag between reads, so `Drop` ends and joins them in bounded time.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::redis_server::{self, frame_len};
use crate::PLAIN_TIMEOUT;

/// How often blocked proxy threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// What the proxy does to a batch of requests (or to a new connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Swallow the batch and never answer; the connection stays open.
    Hang,
    /// Answer with these bytes instead of Redis's reply, then never answer again; the
    /// connection stays open (half a frame, say).
    ReplyThenHang(Vec<u8>),
    /// Answer with these bytes instead of Redis's reply and go on serving.
    Reply(Vec<u8>),
    /// Answer with these bytes instead of Redis's reply, then reset the connection (RST,
    /// `SO_LINGER` 0).
    ReplyThenReset(Vec<u8>),
    /// Close the connection (FIN) without answering; the batch never reaches Redis.
    Close,
    /// Forward the batch to Redis, wait for all its replies, then close the client
    /// connection without relaying them: the commands ran, the client cannot know.
    ForwardThenClose,
    /// Forward the batch, wait for its replies, then never relay them.
    ForwardThenHang,
    /// Answer with these bytes `chunk` bytes at a time, one chunk per `every`, then go on
    /// serving: a slow server, or with enough bytes a server that never finishes.
    Trickle {
        bytes: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
    /// Stop reading from the client as soon as the command's name has arrived, so a large
    /// request fills the socket buffers and the client's write blocks; the connection stays
    /// open. (Other faults wait for the whole batch.)
    Stall,
    /// Run this command on Redis over a connection of its own — another client writing at
    /// that very moment — and wait for its reply; then forward the batch as usual. Armed on
    /// `MULTI`, it puts a write between an optimistic transaction's `WATCH`/`GET` and its
    /// `EXEC`, deterministically.
    WriteFirst(Vec<Vec<u8>>),
}

#[derive(Default)]
struct Plan {
    /// Faults armed per upper-case command name, with how many batches each still hits.
    on_command: HashMap<String, (Fault, usize)>,
    /// A fault applied to new connections before they send anything (`Close`, `Hang`).
    on_accept: Option<(Fault, usize)>,
    /// Requests seen per upper-case command name, faulted or not.
    seen: HashMap<String, usize>,
}

struct Shared {
    plan: Mutex<Plan>,
    connections: AtomicUsize,
    stop: AtomicBool,
    upstream: SocketAddr,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A proxy on a fresh 127.0.0.1 port in front of the Redis at `upstream`.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            plan: Mutex::default(),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            upstream,
        });
        let threads: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (shared, threads) = (shared.clone(), threads.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    // `Drop` wakes this loop with a connection of its own after setting
                    // the flag.
                    if shared.stopped() {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    let thread = thread::spawn(move || serve(client, &shared));
                    threads
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(thread);
                }
            })
        };
        FaultProxy {
            addr,
            shared,
            threads,
            accept: Some(accept),
        }
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next `times` batches holding `command` (any case) get `fault`.
    pub fn arm(&self, command: &str, fault: Fault, times: usize) {
        self.shared
            .plan()
            .on_command
            .insert(command.to_ascii_uppercase(), (fault, times));
    }

    /// The next `times` connections get `fault` before they send anything (`Close` or
    /// `Hang`).
    pub fn arm_accept(&self, fault: Fault, times: usize) {
        self.shared.plan().on_accept = Some((fault, times));
    }

    /// Requests naming `command` (any case) the proxy has received, faulted or not.
    pub fn seen(&self, command: &str) -> usize {
        let plan = self.shared.plan();
        plan.seen
            .get(&command.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, PLAIN_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Serves one client connection until it closes, a fault ends it, or the proxy stops.
fn serve(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let _ = client.set_read_timeout(Some(POLL));
    let _ = client.set_write_timeout(Some(PLAIN_TIMEOUT));

    let on_accept = {
        let mut plan = shared.plan();
        match &mut plan.on_accept {
            Some((fault, times)) if *times > 0 => {
                *times -= 1;
                Some(fault.clone())
            }
            _ => None,
        }
    };
    match on_accept {
        Some(Fault::Hang) => return drain_until_closed(&mut client, shared),
        Some(_) => return close(&client),
        None => {}
    }

    let Ok(mut server) = TcpStream::connect_timeout(&shared.upstream, PLAIN_TIMEOUT) else {
        return close(&client);
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_read_timeout(Some(POLL));
    let _ = server.set_write_timeout(Some(PLAIN_TIMEOUT));

    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {
                if shared.stopped() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        }
        // Requests are RESP arrays; take as many whole ones as have arrived.
        let mut batch_len = 0;
        let mut names = Vec::new();
        while let Some(len) = frame_len(&pending[batch_len..]) {
            names.push(command_name(&pending[batch_len..batch_len + len]));
            batch_len += len;
        }
        if names.is_empty() {
            if let Some(name) = partial_command_name(&pending) {
                if take_fault(shared, &name, |f| *f == Fault::Stall).is_some() {
                    return stall(shared);
                }
            }
            continue;
        }
        let batch: Vec<u8> = pending.drain(..batch_len).collect();
        let fault = {
            let mut plan = shared.plan();
            for name in &names {
                *plan.seen.entry(name.clone()).or_default() += 1;
            }
            drop(plan);
            names
                .iter()
                .find_map(|name| take_fault(shared, name, |_| true))
        };
        let outcome = match fault {
            None => forward(&batch, names.len(), &mut server, shared)
                .and_then(|replies| client.write_all(&replies).ok()),
            Some(Fault::Hang) => return drain_until_closed(&mut client, shared),
            Some(Fault::ReplyThenHang(bytes)) => {
                let _ = client.write_all(&bytes);
                return drain_until_closed(&mut client, shared);
            }
            Some(Fault::Reply(bytes)) => client.write_all(&bytes).ok(),
            Some(Fault::ReplyThenReset(bytes)) => {
                let _ = client.write_all(&bytes);
                // Let the partial reply leave before the reset overtakes it.
                thread::sleep(Duration::from_millis(50));
                return reset(client);
            }
            Some(Fault::Close) => return close(&client),
            Some(Fault::ForwardThenClose) => {
                let _ = forward(&batch, names.len(), &mut server, shared);
                return close(&client);
            }
            Some(Fault::ForwardThenHang) => {
                let _ = forward(&batch, names.len(), &mut server, shared);
                return drain_until_closed(&mut client, shared);
            }
            Some(Fault::Trickle {
                bytes,
                chunk,
                every,
            }) => trickle(&mut client, &bytes, chunk, every, shared),
            Some(Fault::Stall) => return stall(shared),
            Some(Fault::WriteFirst(command)) => {
                let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                let deadline = Instant::now() + PLAIN_TIMEOUT;
                if redis_server::command(shared.upstream, &args, deadline).is_err() {
                    return close(&client);
                }
                forward(&batch, names.len(), &mut server, shared)
                    .and_then(|replies| client.write_all(&replies).ok())
            }
        };
        if outcome.is_none() {
            break;
        }
    }
    close(&client);
}

/// The fault armed for `name`, if it passes `wanted`, used up once.
fn take_fault(shared: &Shared, name: &str, wanted: impl Fn(&Fault) -> bool) -> Option<Fault> {
    match shared.plan().on_command.get_mut(name) {
        Some((fault, times)) if *times > 0 && wanted(fault) => {
            *times -= 1;
            Some(fault.clone())
        }
        _ => None,
    }
}

/// Writes `bytes` a chunk at a time; `None` if the client went away or the proxy stopped.
fn trickle(
    client: &mut TcpStream,
    bytes: &[u8],
    chunk: usize,
    every: Duration,
    shared: &Shared,
) -> Option<()> {
    for piece in bytes.chunks(chunk.max(1)) {
        if shared.stopped() {
            return None;
        }
        client.write_all(piece).ok()?;
        thread::sleep(every);
    }
    Some(())
}

/// Holds the connection without reading from it until the proxy stops.
fn stall(shared: &Shared) {
    while !shared.stopped() {
        thread::sleep(POLL);
    }
}

/// Sends `batch` to Redis and returns the bytes of its `expected` replies.
fn forward(
    batch: &[u8],
    expected: usize,
    server: &mut TcpStream,
    shared: &Shared,
) -> Option<Vec<u8>> {
    server.write_all(batch).ok()?;
    let deadline = Instant::now() + PLAIN_TIMEOUT * 2;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut end = 0;
        let mut count = 0;
        while count < expected {
            match frame_len(&replies[end..]) {
                Some(len) => {
                    end += len;
                    count += 1;
                }
                None => break,
            }
        }
        if count == expected {
            return Some(replies);
        }
        match server.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => replies.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {
                if shared.stopped() || Instant::now() >= deadline {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// Reads and discards what the client sends until it closes or the proxy stops.
fn drain_until_closed(client: &mut TcpStream, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                if shared.stopped() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn close(client: &TcpStream) {
    let _ = client.shutdown(Shutdown::Both);
}

/// Drops the connection with a TCP reset instead of an orderly close.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The upper-case name of the command in one request frame (`*N\r\n$L\r\nNAME\r\n…`).
fn command_name(frame: &[u8]) -> String {
    let mut lines = frame.split(|&b| b == b'\n');
    let _count = lines.next();
    let _len = lines.next();
    let name = lines.next().unwrap_or_default();
    String::from_utf8_lossy(name.strip_suffix(b"\r").unwrap_or(name)).to_ascii_uppercase()
}

/// The command name of a request whose first argument has arrived but not the rest.
fn partial_command_name(pending: &[u8]) -> Option<String> {
    let mut lines = pending.split(|&b| b == b'\n');
    lines.next().filter(|line| line.starts_with(b"*"))?;
    lines.next().filter(|line| line.starts_with(b"$"))?;
    let name = lines.next()?.strip_suffix(b"\r")?;
    // The name line is complete only if something follows it.
    lines.next()?;
    Some(String::from_utf8_lossy(name).to_ascii_uppercase())
}
