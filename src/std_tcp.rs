//! The connection layer for native builds, over `std::net`: the same client and store code
//! as the component, for tests and for measuring what the WebAssembly layer costs.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::transport::{Connector, Endpoint, IoError, Transport};

/// Connects with `std::net::TcpStream`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdConnector;

pub struct StdTcp {
    stream: TcpStream,
    deadline: Instant,
    /// Timeout currently set on the socket; changed only when the operation timeout
    /// changes, since a `setsockopt` per operation would skew the native baseline.
    socket_timeout: Option<Duration>,
    /// Read scratch space, reused so a read zero-fills nothing.
    chunk: Box<[u8]>,
}

const READ_CHUNK: usize = 16 * 1024;

impl Connector for StdConnector {
    type Transport = StdTcp;

    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<StdTcp, IoError> {
        let deadline = Instant::now() + timeout;
        let addresses = (endpoint.host.as_str(), endpoint.port)
            .to_socket_addrs()
            .map_err(|err| IoError::Connect(format!("cannot resolve host: {err}")))?;
        let mut last = IoError::Connect("host name resolves to no address".into());
        for address in addresses {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(IoError::Timeout);
            }
            match TcpStream::connect_timeout(&address, remaining) {
                Ok(stream) => {
                    // Redis commands are small request/response pairs: Nagle only adds delay.
                    stream
                        .set_nodelay(true)
                        .map_err(|err| IoError::Broken(err.to_string()))?;
                    return Ok(StdTcp {
                        stream,
                        deadline,
                        socket_timeout: None,
                        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
                    });
                }
                Err(err) if err.kind() == ErrorKind::TimedOut => last = IoError::Timeout,
                Err(err) => last = IoError::Connect(describe_connect_error(&err)),
            }
        }
        Err(last)
    }
}

fn describe_connect_error(err: &std::io::Error) -> String {
    match err.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::PermissionDenied => "access denied".into(),
        _ => err.to_string(),
    }
}

impl StdTcp {
    /// Each blocking call waits at most the whole operation timeout and the deadline is
    /// checked between calls, so an operation ends within twice its timeout at worst.
    fn check_deadline(&self) -> Result<(), IoError> {
        if Instant::now() >= self.deadline {
            Err(IoError::Timeout)
        } else {
            Ok(())
        }
    }
}

fn map_io(err: std::io::Error) -> IoError {
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => IoError::Timeout,
        ErrorKind::UnexpectedEof => IoError::Closed,
        _ => IoError::Broken(err.to_string()),
    }
}

impl Transport for StdTcp {
    fn start_operation(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
        if self.socket_timeout != Some(timeout) {
            let applied = self.stream.set_read_timeout(Some(timeout)).is_ok()
                && self.stream.set_write_timeout(Some(timeout)).is_ok();
            self.socket_timeout = applied.then_some(timeout);
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.check_deadline()?;
        self.stream.write_all(bytes).map_err(map_io)
    }

    fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
        self.check_deadline()?;
        match self.stream.read(&mut self.chunk) {
            Ok(0) => Err(IoError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&self.chunk[..n]);
                Ok(())
            }
            Err(err) => Err(map_io(err)),
        }
    }
}
