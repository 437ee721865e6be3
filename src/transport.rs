//! The seam between the Redis client and the network: raw byte I/O with deadlines.
//!
//! The guest implements it over `wasi:sockets` (`wasi_tcp`, in wasm32 builds only), native
//! builds over `std::net` ([`crate::std_tcp`]), and tests with scripted fakes — so the client
//! and store logic are the same code everywhere.

use std::fmt;
use std::time::Duration;

/// Where to connect: a host name or IP literal (IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How a network operation failed. The messages never contain secrets: transports only
/// ever see addresses and bytes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoError {
    /// The connection could not be established: name not resolvable, refused, unreachable,
    /// or denied by the host's network policy. The string says which.
    Connect(String),
    /// The deadline of the current operation passed.
    Timeout,
    /// The peer closed the connection (end of stream).
    Closed,
    /// The connection broke (reset, aborted, other I/O failure). The string says how.
    Broken(String),
}

/// The rule for a timer kept from one operation to the next (instants in nanoseconds on a
/// monotonic clock), pure so it is tested natively: a transport re-arms a timer only when
/// it must, and never takes an earlier operation's deadline for the current one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptTimer {
    /// When the kept timer fires.
    pub fires_at: u64,
}

impl KeptTimer {
    /// Whether this timer can serve an operation whose deadline is `deadline`: it fires no
    /// later, so the operation is never kept waiting past its deadline. One set for a later
    /// deadline (a longer timeout before) cannot.
    pub fn serves(self, deadline: u64) -> bool {
        self.fires_at <= deadline
    }

    /// Having fired, whether the operation with `deadline` has timed out; if not, an
    /// earlier operation's deadline passed, and the timer is re-armed at this one.
    pub fn fired_means_timeout(self, deadline: u64) -> bool {
        self.fires_at >= deadline
    }
}

/// Opens transports. Kept separate from [`Transport`] so the client can reconnect by itself.
pub trait Connector {
    type Transport: Transport;

    /// Connects to `endpoint`, trying each of its addresses, within `timeout` in total.
    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> Result<Self::Transport, IoError>;
}

/// One established byte stream.
pub trait Transport {
    /// Starts the deadline of one operation: `send` and `receive` fail with
    /// [`IoError::Timeout`] once `timeout` has passed since this call.
    fn start_operation(&mut self, timeout: Duration);

    /// Writes all of `bytes`. Implementations must hand a command to the socket in as few
    /// writes as possible: split writes of one command stall on Nagle + delayed ACK.
    fn send(&mut self, bytes: &[u8]) -> Result<(), IoError>;

    /// Appends at least one received byte to `buf`, waiting until data arrives, the peer
    /// closes ([`IoError::Closed`]) or the deadline passes.
    fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_timer_serves_later_deadlines_and_times_out_only_at_its_own() {
        let kept = KeptTimer { fires_at: 1_000 };
        // The next operation's deadline is later: the timer is reused, and its firing
        // means only that it must be re-armed.
        assert!(kept.serves(1_500));
        assert!(!kept.fired_means_timeout(1_500));
        // Re-armed at the operation's own deadline: now its firing is the timeout.
        assert!(kept.serves(1_000));
        assert!(kept.fired_means_timeout(1_000));
        // A shorter timeout than before: the kept timer would fire too late.
        assert!(!kept.serves(999));
    }

    #[test]
    fn endpoints_print_ipv6_in_brackets() {
        assert_eq!(Endpoint::new("::1", 6379).to_string(), "[::1]:6379");
        assert_eq!(Endpoint::new("redis", 6379).to_string(), "redis:6379");
    }
}
