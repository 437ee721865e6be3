//! The connection layer of the component: TCP over `wasi:sockets`, every wait bounded by a
//! deadline on the monotonic clock. Only socket I/O lives here.
//!
//! Three rules from measuring wasmtime-wasi shape this file:
//! - a command goes out in one `write` when the stream's permit allows (up to 64 KiB in
//!   wasmtime): the host never sets TCP_NODELAY, so splitting a command stalls ~40 ms on
//!   Nagle + delayed ACK;
//! - child resources (pollables, then streams) must be dropped before their socket, or the
//!   guest traps; struct fields drop in declaration order, so the order below is load-bearing;
//! - dropping an output stream makes wasmtime-wasi 48 wait for the stream's pending write,
//!   and so does shutting the socket down: with a peer that stopped reading, forever. A
//!   connection given up with a write in flight is therefore leaked (see `Drop`).

use std::time::Duration;

use wasi::clocks::monotonic_clock;
use wasi::io::poll::{poll, Pollable};
use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wasi::sockets::instance_network::instance_network;
use wasi::sockets::ip_name_lookup::resolve_addresses;
use wasi::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
    Network,
};
use wasi::sockets::tcp::TcpSocket;
use wasi::sockets::tcp_create_socket::create_tcp_socket;

use crate::transport::{Connector, Endpoint, IoError, KeptTimer, Transport};

/// Reads start at this size and grow while reads fill the buffer: wasmtime zero-fills the
/// requested length on every read, so a large fixed length costs time on every reply.
const INITIAL_READ: u64 = 4 * 1024;
const MAX_READ: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct WasiConnector;

pub struct WasiTcp {
    /// `None` only while being dropped.
    connection: Option<Connection>,
    /// A timer kept from operation to operation, and the instant it fires: never later than
    /// the current operation's deadline (an earlier operation's deadline, or this one's).
    /// Reusing it saves creating and dropping a timer resource on every operation; when an
    /// earlier deadline fires, the timer is re-armed at the current one.
    timer: Option<(Pollable, monotonic_clock::Instant)>,
    /// Deadline of the current operation, set at its first wait: an operation whose reply
    /// is already there makes no clock call at all.
    deadline: Option<monotonic_clock::Instant>,
    /// Timeout of the current operation, in nanoseconds.
    timeout_ns: u64,
    read_len: u64,
}

/// The socket and its child resources. Drop order matters: pollables, then streams, then
/// the socket (see module docs).
struct Connection {
    input_ready: Pollable,
    output_ready: Pollable,
    input: InputStream,
    output: OutputStream,
    socket: TcpSocket,
}

impl Connector for WasiConnector {
    type Transport = WasiTcp;

    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<WasiTcp, IoError> {
        let deadline = deadline_after(timeout);
        let network = instance_network();
        let addresses = resolve(&network, &endpoint.host, deadline)?;
        let mut last = IoError::Connect("host name resolves to no address".into());
        for address in addresses {
            match connect_one(&network, address, endpoint.port, deadline) {
                Ok(tcp) => return Ok(tcp),
                Err(IoError::Timeout) => return Err(IoError::Timeout),
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

fn deadline_after(timeout: Duration) -> monotonic_clock::Instant {
    monotonic_clock::now().saturating_add(nanos(timeout))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Blocks until `ready` fires or `timer` does. A fired timer wins even when data is ready
/// too, so a server trickling bytes cannot stretch an operation past its deadline.
fn wait_until(ready: &Pollable, timer: &Pollable) -> Result<(), IoError> {
    let fired = poll(&[ready, timer]);
    if fired.contains(&1) {
        Err(IoError::Timeout)
    } else {
        Ok(())
    }
}

fn resolve(
    network: &Network,
    host: &str,
    deadline: monotonic_clock::Instant,
) -> Result<Vec<IpAddress>, IoError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![to_wasi_ip(ip)]);
    }
    let stream = resolve_addresses(network, host).map_err(connect_error)?;
    let ready = stream.subscribe();
    let timer = monotonic_clock::subscribe_instant(deadline);
    let mut addresses = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(address)) => addresses.push(address),
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => wait_until(&ready, &timer)?,
            Err(code) => return Err(connect_error(code)),
        }
    }
    Ok(addresses)
}

fn to_wasi_ip(ip: std::net::IpAddr) -> IpAddress {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    }
}

fn connect_one(
    network: &Network,
    address: IpAddress,
    port: u16,
    deadline: monotonic_clock::Instant,
) -> Result<WasiTcp, IoError> {
    let (family, remote) = match address {
        IpAddress::Ipv4(address) => (
            IpAddressFamily::Ipv4,
            IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address }),
        ),
        IpAddress::Ipv6(address) => (
            IpAddressFamily::Ipv6,
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port,
                address,
                flow_info: 0,
                scope_id: 0,
            }),
        ),
    };
    let socket = create_tcp_socket(family).map_err(connect_error)?;
    socket
        .start_connect(network, remote)
        .map_err(connect_error)?;
    let (input, output) = {
        let ready = socket.subscribe();
        let timer = monotonic_clock::subscribe_instant(deadline);
        loop {
            match socket.finish_connect() {
                Ok(streams) => break streams,
                Err(ErrorCode::WouldBlock) => wait_until(&ready, &timer)?,
                Err(code) => return Err(connect_error(code)),
            }
        }
    };
    Ok(WasiTcp {
        connection: Some(Connection {
            input_ready: input.subscribe(),
            output_ready: output.subscribe(),
            input,
            output,
            socket,
        }),
        timer: None,
        deadline: None,
        timeout_ns: 0,
        read_len: INITIAL_READ,
    })
}

fn connect_error(code: ErrorCode) -> IoError {
    let why = match code {
        ErrorCode::Timeout => return IoError::Timeout,
        ErrorCode::ConnectionRefused => "connection refused",
        ErrorCode::AccessDenied => "access denied by the host's network policy",
        ErrorCode::RemoteUnreachable => "address unreachable",
        ErrorCode::NameUnresolvable => "host name does not resolve",
        ErrorCode::TemporaryResolverFailure => "temporary name resolution failure",
        ErrorCode::PermanentResolverFailure => "name resolution failed",
        ErrorCode::ConnectionReset | ErrorCode::ConnectionAborted => "connection reset",
        ErrorCode::NotSupported => "TCP is not supported by the host",
        ErrorCode::InvalidArgument => "invalid address",
        ErrorCode::NewSocketLimit | ErrorCode::OutOfMemory => "out of sockets or memory",
        _ => "network error",
    };
    IoError::Connect(why.into())
}

fn stream_error(err: StreamError) -> IoError {
    match err {
        StreamError::Closed => IoError::Closed,
        StreamError::LastOperationFailed(detail) => IoError::Broken(detail.to_debug_string()),
    }
}

impl Drop for WasiTcp {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        // A permit of 0 means a write is still in flight (or the socket buffer is full):
        // dropping the output stream, or the socket, would block this call until the peer
        // reads — maybe never. Leak both instead; the host frees them with the instance.
        if matches!(connection.output.check_write(), Ok(0)) {
            let Connection {
                input_ready,
                output_ready,
                input,
                output,
                socket,
            } = connection;
            drop(input_ready);
            drop(output_ready);
            drop(input);
            std::mem::forget(output);
            std::mem::forget(socket);
        }
    }
}

impl WasiTcp {
    fn connection(&self) -> Result<&Connection, IoError> {
        self.connection.as_ref().ok_or(IoError::Closed)
    }

    /// Waits for `which` (one of this connection's pollables) or the operation deadline.
    ///
    /// The operation's clock starts at its first wait, microseconds after the operation
    /// itself started: the time before it is the guest's own work, not a wait on Redis.
    fn wait(&mut self, which: Readiness) -> Result<(), IoError> {
        let deadline = match self.deadline {
            Some(deadline) => deadline,
            None => {
                let deadline = monotonic_clock::now().saturating_add(self.timeout_ns);
                self.deadline = Some(deadline);
                deadline
            }
        };
        loop {
            let (timer, kept) = match self.timer.take() {
                Some((timer, fires_at)) if (KeptTimer { fires_at }).serves(deadline) => {
                    (timer, KeptTimer { fires_at })
                }
                // None yet, or one set for a later deadline (a longer timeout before).
                _ => (
                    monotonic_clock::subscribe_instant(deadline),
                    KeptTimer { fires_at: deadline },
                ),
            };
            let connection = self.connection.as_ref().ok_or(IoError::Closed)?;
            let ready = match which {
                Readiness::Input => &connection.input_ready,
                Readiness::Output => &connection.output_ready,
            };
            let outcome = wait_until(ready, &timer);
            if outcome.is_ok() || kept.fired_means_timeout(deadline) {
                self.timer = Some((timer, kept.fires_at));
                return outcome;
            }
            // An earlier operation's deadline passed, not this one's: re-arm at this one.
            drop(timer);
        }
    }
}

enum Readiness {
    Input,
    Output,
}

impl Transport for WasiTcp {
    fn start_operation(&mut self, timeout: Duration) {
        self.timeout_ns = nanos(timeout);
        self.deadline = None;
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let permit = self
                .connection()?
                .output
                .check_write()
                .map_err(stream_error)?;
            if permit == 0 {
                self.wait(Readiness::Output)?;
                continue;
            }
            let take = rest
                .len()
                .min(usize::try_from(permit).unwrap_or(usize::MAX));
            self.connection()?
                .output
                .write(&rest[..take])
                .map_err(stream_error)?;
            rest = &rest[take..];
        }
        // Start transmission now; completion need not be awaited, since the reply can only
        // arrive after the request was sent and a failed write surfaces on the next call.
        self.connection()?.output.flush().map_err(stream_error)
    }

    fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
        loop {
            // Read before waiting: on a loaded core Redis has often answered by the time the
            // request's write returns (waking it preempts us), and then one read is the only
            // host call of the whole wait. Waiting first measured slower, pinned and not.
            let chunk = self
                .connection()?
                .input
                .read(self.read_len)
                .map_err(stream_error)?;
            if chunk.is_empty() {
                self.wait(Readiness::Input)?;
                continue;
            }
            if chunk.len() as u64 == self.read_len {
                self.read_len = (self.read_len * 2).min(MAX_READ);
            }
            if buf.is_empty() {
                *buf = chunk;
            } else {
                buf.extend_from_slice(&chunk);
            }
            return Ok(());
        }
    }
}
