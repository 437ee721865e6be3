//! A minimal Redis client: typed commands over one lazily (re)established connection.
//!
//! The client owns the connection lifecycle: it connects and authenticates on first use,
//! discards the connection after any I/O or protocol failure (its state is unknown), and
//! retries an idempotent command once when a *reused* connection turns out to be dead —
//! the usual case after a Redis restart, `CLIENT KILL` or an idle-timeout disconnect.

use std::time::Duration;

use crate::config::RedisUrl;
use crate::resp::{
    decode_reply_resuming, encode_command, push_decimal, RedisErrorCode, Reply, ReplyLimits,
    ReplyScan,
};
use crate::transport::{Connector, IoError, Transport};
use crate::TaskError;

/// Whether a command may be sent a second time after its connection died under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Applying it twice leaves the same state (GET, SETEX, DEL, TTL, EXISTS).
    Idempotent,
    /// Never resend (a command whose second application would differ).
    Never,
}

/// Failure of one exchange before it is described for the caller.
enum Failure {
    Io(IoError),
    Protocol(String),
}

impl From<IoError> for Failure {
    fn from(err: IoError) -> Failure {
        Failure::Io(err)
    }
}

/// One `SCAN` call's answer: the next cursor (`0`: the iteration is over) and the keys.
pub type ScanBatch = (u64, Vec<Vec<u8>>);

pub struct Client<C: Connector> {
    connector: C,
    url: RedisUrl,
    timeout: Duration,
    limits: ReplyLimits,
    connection: Option<C::Transport>,
    /// Reused across commands so a steady stream of operations does not allocate buffers.
    write_buf: Vec<u8>,
    read_buf: Vec<u8>,
    /// Cluster `ASK` redirect mode: each command outside `MULTI` goes out preceded by
    /// `ASKING` (in the same write), since the flag it sets lasts one command.
    asking: bool,
    /// Whether a write command was handed to a connection since [`Client::take_sent_write`]
    /// last asked: what tells a failover retry whether the failed work may have applied.
    sent_write: bool,
}

/// Commands that never change data: everything else counts as a write (for `WAIT`, and for
/// whether a failed exchange may have applied). Unknown commands are writes, to be safe.
const READ_COMMANDS: [&[u8]; 18] = [
    b"GET",
    b"MGET",
    b"EXISTS",
    b"TTL",
    b"PTTL",
    b"SCAN",
    b"ZSCAN",
    b"STRLEN",
    b"PING",
    b"WATCH",
    b"UNWATCH",
    b"ROLE",
    b"INFO",
    b"AUTH",
    b"SELECT",
    b"ASKING",
    b"CLUSTER",
    b"SENTINEL",
];

/// Whether `command` (its name first) may change data.
pub fn is_write(command: &[&[u8]]) -> bool {
    match command.first() {
        Some(name) => !READ_COMMANDS
            .iter()
            .any(|read| name.eq_ignore_ascii_case(read)),
        None => false,
    }
}

/// Largest reply buffer kept between commands; a bigger one (after a large document) is
/// released so an idle store stays small.
const RETAINED_READ_BUFFER: usize = 1024 * 1024;

impl<C: Connector> Client<C> {
    /// A client for `url`; nothing is sent until the first command or [`Client::connect`].
    /// `max_value_bytes` bounds any single value in a reply.
    pub fn new(connector: C, url: RedisUrl, timeout: Duration, max_value_bytes: usize) -> Self {
        Client {
            connector,
            url,
            timeout,
            limits: ReplyLimits {
                // Room for the value plus a little framing; arrays are bounded separately.
                max_bulk_bytes: max_value_bytes,
                max_array_len: 1 << 20,
                max_reply_bytes: usize::MAX,
            },
            connection: None,
            write_buf: Vec::new(),
            read_buf: Vec::new(),
            asking: false,
            sent_write: false,
        }
    }

    /// Whether a write command was sent (or handed to a connection that then failed) since
    /// the last call; clears the flag.
    pub fn take_sent_write(&mut self) -> bool {
        std::mem::take(&mut self.sent_write)
    }

    /// The same client with tighter reply limits: for callers that expect only small
    /// replies from a server they do not trust (the host asking a cluster for its nodes).
    pub fn with_reply_limits(mut self, limits: ReplyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Turns `ASK` redirect mode on or off (see the Redis Cluster specification): while on,
    /// every command is sent right after an `ASKING`, except inside `MULTI … EXEC`, where the
    /// one `ASKING` before `MULTI` holds for the whole transaction.
    pub fn set_asking(&mut self, on: bool) {
        self.asking = on;
    }

    /// The server's address.
    pub fn endpoint_ref(&self) -> &crate::transport::Endpoint {
        &self.url.endpoint
    }

    /// Establishes the connection now (connect, `AUTH`, `SELECT`), if there is none.
    pub fn connect(&mut self) -> Result<(), TaskError> {
        if self.connection.is_none() {
            let transport = self.open_connection()?;
            self.connection = Some(transport);
        }
        Ok(())
    }

    /// `GET key`: the value, or `None` when the key does not exist.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TaskError> {
        match self.command(&[b"GET", key], Retry::Idempotent)? {
            Reply::BulkString(value) => Ok(Some(value)),
            Reply::Null => Ok(None),
            other => Err(self.unexpected("GET", &other)),
        }
    }

    /// `SETEX key seconds value`.
    pub fn set_with_ttl(
        &mut self,
        key: &[u8],
        ttl_seconds: u64,
        value: &[u8],
    ) -> Result<(), TaskError> {
        let mut seconds = Vec::with_capacity(20);
        push_decimal(&mut seconds, ttl_seconds);
        match self.command(&[b"SETEX", key, &seconds, value], Retry::Idempotent)? {
            Reply::SimpleString(ok) if ok == b"OK" => Ok(()),
            other => Err(self.unexpected("SETEX", &other)),
        }
    }

    /// `DEL key`: whether a key was removed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, TaskError> {
        self.integer_command(&[b"DEL", key], "DEL")
            .map(|removed| removed > 0)
    }

    /// `EXISTS key`.
    pub fn exists(&mut self, key: &[u8]) -> Result<bool, TaskError> {
        self.integer_command(&[b"EXISTS", key], "EXISTS")
            .map(|count| count > 0)
    }

    /// `TTL key`: Redis's raw answer (-2 absent, -1 no expiry, else seconds left).
    pub fn ttl(&mut self, key: &[u8]) -> Result<i64, TaskError> {
        self.integer_command(&[b"TTL", key], "TTL")
    }

    /// `SET key value NX EX seconds`: whether the key was created (it did not exist).
    pub fn set_if_absent(
        &mut self,
        key: &[u8],
        ttl_seconds: u64,
        value: &[u8],
    ) -> Result<bool, TaskError> {
        let mut seconds = Vec::with_capacity(20);
        push_decimal(&mut seconds, ttl_seconds);
        match self.command(&[b"SET", key, value, b"NX", b"EX", &seconds], Retry::Never)? {
            Reply::SimpleString(ok) if ok == b"OK" => Ok(true),
            Reply::Null => Ok(false),
            other => Err(self.unexpected("SET NX", &other)),
        }
    }

    /// `EXPIRE key seconds`: whether the key exists (and now has that TTL).
    pub fn expire(&mut self, key: &[u8], ttl_seconds: u64) -> Result<bool, TaskError> {
        let mut seconds = Vec::with_capacity(20);
        push_decimal(&mut seconds, ttl_seconds);
        self.integer_command(&[b"EXPIRE", key, &seconds], "EXPIRE")
            .map(|set| set > 0)
    }

    /// `MGET key…`: one value (or `None`) per key, in order.
    pub fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TaskError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        args.push(b"MGET");
        args.extend(keys.iter().map(Vec::as_slice));
        match self.command(&args, Retry::Idempotent)? {
            Reply::Array(values) if values.len() == keys.len() => values
                .into_iter()
                .map(|value| match value {
                    Reply::BulkString(bytes) => Ok(Some(bytes)),
                    Reply::Null => Ok(None),
                    other => Err(self.unexpected("MGET", &other)),
                })
                .collect(),
            other => Err(self.unexpected("MGET", &other)),
        }
    }

    /// `SCAN cursor MATCH pattern COUNT count TYPE string`: the next cursor and a batch of
    /// keys. Cursor `0` starts and, returned, ends the iteration.
    pub fn scan(
        &mut self,
        cursor: u64,
        pattern: &[u8],
        count: u32,
    ) -> Result<ScanBatch, TaskError> {
        let mut cursor_text = Vec::with_capacity(20);
        push_decimal(&mut cursor_text, cursor);
        let mut count_text = Vec::with_capacity(10);
        push_decimal(&mut count_text, u64::from(count));
        let args: [&[u8]; 8] = [
            b"SCAN",
            &cursor_text,
            b"MATCH",
            pattern,
            b"COUNT",
            &count_text,
            b"TYPE",
            b"string",
        ];
        let reply = self.command(&args, Retry::Idempotent)?;
        let parsed = match reply {
            Reply::Array(mut parts) if parts.len() == 2 => {
                let keys = parts.pop();
                let next = parts.pop();
                match (next, keys) {
                    (Some(Reply::BulkString(next)), Some(Reply::Array(keys))) => {
                        let next = std::str::from_utf8(&next).ok().and_then(|n| n.parse().ok());
                        let keys: Option<Vec<Vec<u8>>> = keys
                            .into_iter()
                            .map(|key| match key {
                                Reply::BulkString(key) => Some(key),
                                _ => None,
                            })
                            .collect();
                        next.zip(keys)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        parsed.ok_or_else(|| {
            TaskError::protocol(format!("malformed SCAN reply from {}", self.url.endpoint))
        })
    }

    /// Sends `commands` in one write and reads all their replies: one round trip. Error
    /// replies stay in the result, one per failed command, for the caller to map per item
    /// with [`Client::reply_error`].
    pub fn pipeline(
        &mut self,
        commands: &[&[&[u8]]],
        retry: Retry,
    ) -> Result<Vec<Reply>, TaskError> {
        self.write_buf.clear();
        let writes = commands.iter().any(|command| is_write(command));
        self.sent_write |= writes;
        if !self.asking {
            for command in commands {
                encode_command(&mut self.write_buf, command);
            }
            let wait = self
                .url
                .wait
                .filter(|_| writes && !ends_inside_multi(commands));
            let Some(wait) = wait else {
                return self.exchange(commands.len(), retry);
            };
            // In the same write as the commands: replica acknowledgement costs no extra
            // round trip.
            let mut replicas = Vec::with_capacity(10);
            push_decimal(&mut replicas, u64::from(wait.replicas));
            let mut timeout = Vec::with_capacity(10);
            push_decimal(&mut timeout, u64::from(wait.timeout_ms));
            encode_command(&mut self.write_buf, &[b"WAIT", &replicas, &timeout]);
            let mut replies = self.exchange(commands.len() + 1, retry)?;
            return match replies.pop() {
                Some(Reply::Integer(acknowledged)) if acknowledged >= i64::from(wait.replicas) => {
                    Ok(replies)
                }
                Some(Reply::Integer(acknowledged)) => Err(TaskError::timeout(format!(
                    "the write reached Redis at {} but only {acknowledged} of the {} replicas \
                     asked for acknowledged it within {} ms (wait-replicas); it may have \
                     applied, and may be lost should that server fail now",
                    self.url.endpoint, wait.replicas, wait.timeout_ms
                ))),
                Some(Reply::Error(message)) => Err(server_error(message, &self.url)),
                Some(other) => Err(self.unexpected("WAIT", &other)),
                None => Err(TaskError::protocol("no reply")),
            };
        }
        let mut in_multi = false;
        let mut is_asking = Vec::with_capacity(commands.len() * 2);
        for command in commands {
            if !in_multi {
                encode_command(&mut self.write_buf, &[b"ASKING"]);
                is_asking.push(true);
            }
            encode_command(&mut self.write_buf, command);
            is_asking.push(false);
            match command.first().copied() {
                Some(name) if name.eq_ignore_ascii_case(b"MULTI") => in_multi = true,
                Some(name)
                    if name.eq_ignore_ascii_case(b"EXEC")
                        || name.eq_ignore_ascii_case(b"DISCARD") =>
                {
                    in_multi = false
                }
                _ => {}
            }
        }
        let replies = self.exchange(is_asking.len(), retry)?;
        let mut kept = Vec::with_capacity(commands.len());
        for (reply, asking) in replies.into_iter().zip(is_asking) {
            match (asking, reply) {
                (false, reply) => kept.push(reply),
                (true, Reply::SimpleString(ok)) if ok == b"OK" => {}
                (true, Reply::Error(message)) => return Err(server_error(message, &self.url)),
                (true, other) => return Err(self.unexpected("ASKING", &other)),
            }
        }
        Ok(kept)
    }

    /// The error an error reply stands for (the same mapping [`Client::command`] applies).
    pub fn reply_error(&self, message: String) -> TaskError {
        server_error(message, &self.url)
    }

    /// A reply of the wrong shape for `command`, as a protocol error.
    pub fn unexpected_reply(&self, command: &str, reply: &Reply) -> TaskError {
        self.unexpected(command, reply)
    }

    fn integer_command(&mut self, args: &[&[u8]], name: &str) -> Result<i64, TaskError> {
        match self.command(args, Retry::Idempotent)? {
            Reply::Integer(value) => Ok(value),
            other => Err(self.unexpected(name, &other)),
        }
    }

    /// Sends one command and returns its reply; an error reply becomes an `Err`.
    pub fn command(&mut self, args: &[&[u8]], retry: Retry) -> Result<Reply, TaskError> {
        let mut replies = if self.asking || is_write(args) {
            self.pipeline(&[args], retry)?
        } else {
            self.write_buf.clear();
            encode_command(&mut self.write_buf, args);
            self.exchange(1, retry)?
        };
        match replies.pop() {
            Some(Reply::Error(message)) => Err(server_error(message, &self.url)),
            Some(reply) => Ok(reply),
            None => Err(TaskError::protocol("no reply")),
        }
    }

    fn unexpected(&self, command: &str, reply: &Reply) -> TaskError {
        TaskError::protocol(format!(
            "unexpected {} reply to {command} from {}",
            reply_kind(reply),
            self.url.endpoint
        ))
    }

    /// Sends what is in `write_buf` and reads `expected` replies, reconnecting as needed.
    fn exchange(&mut self, expected: usize, retry: Retry) -> Result<Vec<Reply>, TaskError> {
        let mut retried = false;
        loop {
            let reused = self.connection.is_some();
            let mut transport = match self.connection.take() {
                Some(transport) => transport,
                None => self.open_connection()?,
            };
            let mut replies = Vec::with_capacity(expected);
            let outcome = exchange_on(
                &mut transport,
                self.timeout,
                &self.limits,
                &self.write_buf,
                &mut self.read_buf,
                expected,
                &mut replies,
            );
            if self.read_buf.capacity() > RETAINED_READ_BUFFER {
                self.read_buf = Vec::new();
            }
            match outcome {
                Ok(()) => {
                    self.connection = Some(transport);
                    return Ok(replies);
                }
                // A reused connection that is found closed or reset was most likely dropped
                // while idle (restart, CLIENT KILL, idle timeout): worth exactly one retry.
                Err(Failure::Io(IoError::Closed | IoError::Broken(_)))
                    if reused && !retried && retry == Retry::Idempotent =>
                {
                    retried = true;
                }
                Err(failure) => return Err(self.describe(failure)),
            }
        }
    }

    /// Connects and runs the handshake (`AUTH`, `SELECT`, or a `PING` to prove it is Redis).
    fn open_connection(&mut self) -> Result<C::Transport, TaskError> {
        let mut transport = self
            .connector
            .connect(&self.url.endpoint, self.timeout)
            .map_err(|err| self.describe(Failure::Io(err)))?;
        let mut handshake = Vec::new();
        let mut steps: Vec<&'static str> = Vec::new();
        if let Some(credentials) = &self.url.credentials {
            let password = credentials.password.expose().as_bytes();
            match &credentials.username {
                Some(user) => encode_command(&mut handshake, &[b"AUTH", user.as_bytes(), password]),
                None => encode_command(&mut handshake, &[b"AUTH", password]),
            }
            steps.push("AUTH");
        }
        if self.url.database != 0 {
            let mut db = Vec::new();
            push_decimal(&mut db, u64::from(self.url.database));
            encode_command(&mut handshake, &[b"SELECT", &db]);
            steps.push("SELECT");
        }
        if steps.is_empty() {
            encode_command(&mut handshake, &[b"PING"]);
            steps.push("PING");
        }
        let mut replies = Vec::with_capacity(steps.len());
        exchange_on(
            &mut transport,
            self.timeout,
            &self.limits,
            &handshake,
            &mut self.read_buf,
            steps.len(),
            &mut replies,
        )
        .map_err(|failure| self.describe(failure))?;
        for (step, reply) in steps.iter().zip(replies) {
            if let Reply::Error(message) = reply {
                return Err(match *step {
                    "AUTH" => TaskError::authentication(format!(
                        "Redis at {} rejected the credentials: {message}",
                        self.url.endpoint
                    )),
                    _ => server_error(message, &self.url),
                });
            }
        }
        Ok(transport)
    }

    fn describe(&self, failure: Failure) -> TaskError {
        let endpoint = &self.url.endpoint;
        match failure {
            Failure::Io(IoError::Connect(why)) => {
                TaskError::connection(format!("cannot connect to Redis at {endpoint}: {why}"))
            }
            Failure::Io(IoError::Timeout) => TaskError::timeout(format!(
                "Redis at {endpoint} did not answer within {} ms",
                self.timeout.as_millis() as u64
            )),
            Failure::Io(IoError::Closed) => {
                TaskError::connection(format!("Redis at {endpoint} closed the connection"))
            }
            Failure::Io(IoError::Broken(why)) => {
                TaskError::connection(format!("connection to Redis at {endpoint} broke: {why}"))
            }
            Failure::Protocol(why) => {
                TaskError::protocol(format!("bad reply from Redis at {endpoint}: {why}"))
            }
        }
    }
}

/// Whether `commands` open a `MULTI` they do not close: no `WAIT` may follow inside it.
fn ends_inside_multi(commands: &[&[&[u8]]]) -> bool {
    let mut in_multi = false;
    for command in commands {
        match command.first().copied() {
            Some(name) if name.eq_ignore_ascii_case(b"MULTI") => in_multi = true,
            Some(name)
                if name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD") =>
            {
                in_multi = false
            }
            _ => {}
        }
    }
    in_multi
}

/// One write of `request`, then replies until `expected` are decoded.
fn exchange_on<T: Transport>(
    transport: &mut T,
    timeout: Duration,
    limits: &ReplyLimits,
    request: &[u8],
    read_buf: &mut Vec<u8>,
    expected: usize,
    replies: &mut Vec<Reply>,
) -> Result<(), Failure> {
    transport.start_operation(timeout);
    transport.send(request)?;
    read_buf.clear();
    let mut start = 0;
    // Resumed after every read, so a reply that arrives in many reads is walked once.
    let mut scan = ReplyScan::default();
    while replies.len() < expected {
        match decode_reply_resuming(&read_buf[start..], limits, &mut scan)
            .map_err(|err| Failure::Protocol(err.0))?
        {
            Some((reply, used)) => {
                start += used;
                scan = ReplyScan::default();
                replies.push(reply);
            }
            None => transport.receive(read_buf)?,
        }
    }
    // RESP2 servers speak only when spoken to: surplus bytes mean we lost track of framing.
    if start != read_buf.len() {
        return Err(Failure::Protocol(format!(
            "{} unexpected bytes after the reply",
            read_buf.len() - start
        )));
    }
    Ok(())
}

/// Describes a Redis error reply: refused credentials become `authentication` errors that
/// say what to do; every other reply stays Redis's text, as a `server` error. The code is
/// read once, by [`RedisErrorCode::of`].
pub(crate) fn server_error(message: String, url: &RedisUrl) -> TaskError {
    match RedisErrorCode::of(&message) {
        RedisErrorCode::NoAuth => TaskError::authentication(format!(
            "Redis at {} requires a password; give it in the URL (redis://:password@host): {message}",
            url.endpoint
        )),
        RedisErrorCode::WrongPass | RedisErrorCode::NoPerm => TaskError::authentication(format!(
            "Redis at {} refused: {message}",
            url.endpoint
        )),
        _ => TaskError::server(message),
    }
}

pub(crate) fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::SimpleString(_) => "simple-string",
        Reply::Error(_) => "error",
        Reply::Integer(_) => "integer",
        Reply::BulkString(_) => "bulk-string",
        Reply::Array(_) => "array",
        Reply::Null => "nil",
    }
}

/// `reply`, one reply of a pipeline or transaction, must be `+OK` for `command`; an error
/// reply becomes its error, anything else (or no reply) a protocol error.
pub fn expect_ok<C: Connector>(
    client: &Client<C>,
    reply: Option<Reply>,
    command: &str,
) -> Result<(), TaskError> {
    match reply {
        Some(Reply::SimpleString(ok)) if ok == b"OK" => Ok(()),
        Some(Reply::Error(message)) => Err(client.reply_error(message)),
        other => Err(protocol_error(client, command, other)),
    }
}

/// `MULTI`, `write`, `EXEC` in one pipeline, after the caller's `WATCH`: `Ok(true)` when
/// the write ran and answered `OK`, `Ok(false)` when someone wrote a watched key first and
/// `EXEC` wrote nothing. Never resent: if the connection dies here the write may have
/// happened. A queued command refused (on a cluster: redirected) aborts the `EXEC`: nothing
/// written, and its error is returned.
pub fn exec_watched_write<C: Connector>(
    client: &mut Client<C>,
    write: &[&[u8]],
) -> Result<bool, TaskError> {
    let mut replies = client.pipeline(&[&[b"MULTI"], write, &[b"EXEC"]], Retry::Never)?;
    let exec = replies.pop();
    let queued = replies.pop();
    let multi = replies.pop();
    expect_ok(client, multi, "MULTI")?;
    if let Some(Reply::Error(message)) = queued {
        return Err(client.reply_error(message));
    }
    match exec {
        Some(Reply::Null) => Ok(false),
        Some(Reply::Array(results)) => match results.into_iter().next() {
            Some(Reply::SimpleString(ok)) if ok == b"OK" => Ok(true),
            Some(Reply::Error(message)) => Err(client.reply_error(message)),
            other => Err(protocol_error(client, "EXEC", other)),
        },
        Some(Reply::Error(message)) => Err(client.reply_error(message)),
        other => Err(protocol_error(client, "EXEC", other)),
    }
}

/// The protocol error for a reply of the wrong shape for `command`, or for none at all.
pub fn protocol_error<C: Connector>(
    client: &Client<C>,
    command: &str,
    reply: Option<Reply>,
) -> TaskError {
    match reply {
        Some(reply) => client.unexpected_reply(command, &reply),
        None => TaskError::protocol(format!("no reply to {command}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transport::Endpoint;
    use crate::ErrorKind;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// What a scripted connection does after receiving each request.
    #[derive(Clone, Debug)]
    pub enum Step {
        Reply(&'static [u8]),
        Fail(IoError),
    }

    /// Shared record of everything the fake server saw, across reconnects.
    #[derive(Default)]
    pub struct Script {
        /// One entry per connection attempt: `Err` refuses it, `Ok` scripts its exchanges.
        pub connections: VecDeque<Result<Vec<Step>, IoError>>,
        pub sent: Vec<Vec<u8>>,
        pub connects: usize,
        /// Bytes delivered per `receive`; 0 means one at a time, to exercise every
        /// partial-frame path.
        pub chunk: usize,
    }

    #[derive(Clone, Default)]
    pub struct FakeConnector(pub Rc<RefCell<Script>>);

    pub struct FakeTransport {
        script: Rc<RefCell<Script>>,
        steps: VecDeque<Step>,
        pending: Option<&'static [u8]>,
    }

    impl Connector for FakeConnector {
        type Transport = FakeTransport;
        fn connect(&self, _: &Endpoint, _: Duration) -> Result<FakeTransport, IoError> {
            let mut script = self.0.borrow_mut();
            script.connects += 1;
            let steps = script
                .connections
                .pop_front()
                .unwrap_or(Err(IoError::Connect("connection refused".into())))?;
            Ok(FakeTransport {
                script: self.0.clone(),
                steps: steps.into(),
                pending: None,
            })
        }
    }

    impl Transport for FakeTransport {
        fn start_operation(&mut self, _: Duration) {}
        fn send(&mut self, bytes: &[u8]) -> Result<(), IoError> {
            self.script.borrow_mut().sent.push(bytes.to_vec());
            match self.steps.pop_front() {
                Some(Step::Reply(reply)) => {
                    self.pending = Some(reply);
                    Ok(())
                }
                Some(Step::Fail(err)) => Err(err),
                None => Err(IoError::Closed),
            }
        }
        fn receive(&mut self, buf: &mut Vec<u8>) -> Result<(), IoError> {
            let chunk = self.script.borrow().chunk.max(1);
            match self.pending {
                Some(bytes) if !bytes.is_empty() => {
                    let (now, later) = bytes.split_at(chunk.min(bytes.len()));
                    buf.extend_from_slice(now);
                    self.pending = Some(later);
                    Ok(())
                }
                _ => Err(IoError::Timeout),
            }
        }
    }

    pub fn client_with(
        url: &str,
        connections: Vec<Result<Vec<Step>, IoError>>,
    ) -> (Client<FakeConnector>, FakeConnector) {
        let connector = FakeConnector::default();
        connector.0.borrow_mut().connections = connections.into();
        let url = RedisUrl::parse(url).unwrap();
        let client = Client::new(connector.clone(), url, Duration::from_secs(1), 1024);
        (client, connector)
    }

    const PONG: Step = Step::Reply(b"+PONG\r\n");

    #[test]
    fn get_decodes_value_and_nil() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1:6379",
            vec![Ok(vec![
                PONG,
                Step::Reply(b"$2\r\n{}\r\n"),
                Step::Reply(b"$-1\r\n"),
            ])],
        );
        assert_eq!(client.get(b"k").unwrap(), Some(b"{}".to_vec()));
        assert_eq!(client.get(b"k").unwrap(), None);
        let sent = &connector.0.borrow().sent;
        assert_eq!(sent[0], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(sent[1], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn handshake_sends_auth_and_select_in_one_write() {
        let (mut client, connector) = client_with(
            "redis://app:pw@127.0.0.1/3",
            vec![Ok(vec![Step::Reply(b"+OK\r\n+OK\r\n")])],
        );
        client.connect().unwrap();
        assert_eq!(
            connector.0.borrow().sent[0],
            b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
        );
    }

    #[test]
    fn rejected_password_is_an_authentication_error_without_the_password() {
        let (mut client, _) = client_with(
            "redis://:hunter2@127.0.0.1",
            vec![Ok(vec![Step::Reply(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            )])],
        );
        let err = client.connect().unwrap_err();
        assert!(err.kind() == ErrorKind::Authentication, "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn missing_password_is_an_authentication_error() {
        let (mut client, _) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![Step::Reply(
                b"-NOAUTH Authentication required.\r\n",
            )])],
        );
        assert_eq!(
            client.connect().unwrap_err().kind(),
            ErrorKind::Authentication
        );
    }

    #[test]
    fn error_reply_is_a_server_error_and_keeps_the_connection() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(
                    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                ),
                Step::Reply(b":1\r\n"),
            ])],
        );
        let err = client.get(b"k").unwrap_err();
        assert_eq!(
            err,
            TaskError::server("WRONGTYPE Operation against a key holding the wrong kind of value")
        );
        assert!(client.exists(b"k").unwrap());
        assert_eq!(connector.0.borrow().connects, 1);
    }

    #[test]
    fn dead_reused_connection_is_replaced_and_the_command_retried_once() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![
                Ok(vec![
                    PONG,
                    Step::Reply(b":1\r\n"),
                    Step::Fail(IoError::Closed),
                ]),
                Ok(vec![PONG, Step::Reply(b":0\r\n")]),
            ],
        );
        assert!(client.delete(b"k").unwrap());
        assert!(!client.delete(b"k").unwrap());
        assert_eq!(connector.0.borrow().connects, 2);
    }

    #[test]
    fn retry_happens_at_most_once() {
        let (mut client, _) = client_with(
            "redis://127.0.0.1",
            vec![
                Ok(vec![
                    PONG,
                    Step::Reply(b":1\r\n"),
                    Step::Fail(IoError::Closed),
                ]),
                Ok(vec![PONG, Step::Fail(IoError::Broken("reset".into()))]),
            ],
        );
        client.exists(b"k").unwrap();
        let err = client.exists(b"k").unwrap_err();
        assert!(err.kind() == ErrorKind::Connection, "{err:?}");
    }

    #[test]
    fn non_idempotent_commands_are_not_retried() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(b":1\r\n"),
                Step::Fail(IoError::Closed),
            ])],
        );
        client.exists(b"k").unwrap();
        let err = client.command(&[b"INCR", b"n"], Retry::Never).unwrap_err();
        assert!(err.kind() == ErrorKind::Connection, "{err:?}");
        assert_eq!(connector.0.borrow().connects, 1);
    }

    #[test]
    fn timeout_discards_the_connection_without_retry() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1:7001",
            vec![
                Ok(vec![PONG, Step::Fail(IoError::Timeout)]),
                Ok(vec![PONG, Step::Reply(b":1\r\n")]),
            ],
        );
        client.connect().unwrap();
        let err = client.exists(b"k").unwrap_err();
        assert_eq!(
            err,
            TaskError::timeout("Redis at 127.0.0.1:7001 did not answer within 1000 ms")
        );
        assert!(client.exists(b"k").unwrap());
        assert_eq!(connector.0.borrow().connects, 2);
    }

    #[test]
    fn refused_connection_names_the_endpoint() {
        let (mut client, _) = client_with("redis://127.0.0.1:7002", vec![]);
        assert_eq!(
            client.connect().unwrap_err(),
            TaskError::connection("cannot connect to Redis at 127.0.0.1:7002: connection refused")
        );
    }

    #[test]
    fn garbage_reply_is_a_protocol_error_and_drops_the_connection() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![
                Ok(vec![PONG, Step::Reply(b"HTTP/1.1 400 Bad Request\r\n\r\n")]),
                Ok(vec![PONG, Step::Reply(b"$-1\r\n")]),
            ],
        );
        assert!(client.get(b"k").unwrap_err().kind() == ErrorKind::Protocol);
        assert_eq!(client.get(b"k").unwrap(), None);
        assert_eq!(connector.0.borrow().connects, 2);
    }

    #[test]
    fn wrong_reply_type_is_a_protocol_error() {
        let (mut client, _) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![PONG, Step::Reply(b"+OK\r\n")])],
        );
        let err = client.ttl(b"k").unwrap_err();
        assert!(
            err.kind() == ErrorKind::Protocol
                && err.message().contains("simple-string reply to TTL"),
            "{err:?}"
        );
    }

    #[test]
    fn value_over_the_limit_is_a_protocol_error() {
        let (mut client, _) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![PONG, Step::Reply(b"$2048\r\n")])],
        );
        assert!(client.get(b"k").unwrap_err().kind() == ErrorKind::Protocol);
    }

    #[test]
    fn asking_mode_prefixes_each_command_but_not_inside_multi() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(b"+OK\r\n+OK\r\n+OK\r\n$2\r\n{}\r\n"),
                Step::Reply(b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
                Step::Reply(b"$-1\r\n"),
            ])],
        );
        client.connect().unwrap();
        client.set_asking(true);
        let replies = client
            .pipeline(&[&[b"WATCH", b"k"], &[b"GET", b"k"]], Retry::Idempotent)
            .unwrap();
        assert_eq!(
            replies,
            vec![
                Reply::SimpleString(b"OK".to_vec()),
                Reply::BulkString(b"{}".to_vec())
            ]
        );
        let replies = client
            .pipeline(
                &[&[b"multi"], &[b"SET", b"k", b"v"], &[b"EXEC"]],
                Retry::Never,
            )
            .unwrap();
        assert_eq!(replies.len(), 3);
        client.set_asking(false);
        assert_eq!(client.get(b"k").unwrap(), None);
        let sent = &connector.0.borrow().sent;
        let asking = b"*1\r\n$6\r\nASKING\r\n".as_slice();
        let count = |bytes: &[u8]| bytes.windows(asking.len()).filter(|w| *w == asking).count();
        assert_eq!(count(&sent[1]), 2);
        assert_eq!(count(&sent[2]), 1);
        assert!(sent[2].starts_with(asking));
        assert_eq!(count(&sent[3]), 0);
    }

    #[test]
    fn surplus_bytes_after_a_reply_are_a_protocol_error() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![PONG, Step::Reply(b":1\r\n:2\r\n")])],
        );
        connector.0.borrow_mut().chunk = 64;
        let err = client.exists(b"k").unwrap_err();
        assert!(
            err.kind() == ErrorKind::Protocol && err.message().contains("4 unexpected bytes"),
            "{err:?}"
        );
    }

    #[test]
    fn with_wait_replicas_a_write_is_followed_by_wait_in_the_same_write() {
        let (mut client, connector) = client_with(
            "redis://127.0.0.1?wait-replicas=1&wait-timeout-ms=50",
            vec![Ok(vec![
                PONG,
                Step::Reply(b"+OK\r\n:1\r\n"),
                Step::Reply(b"$-1\r\n"),
                Step::Reply(b"+OK\r\n:0\r\n"),
            ])],
        );
        client.set_with_ttl(b"k", 10, b"v").unwrap();
        assert!(client.take_sent_write());
        assert_eq!(client.get(b"k").unwrap(), None);
        assert!(!client.take_sent_write(), "a read is no write");
        let err = client.set_with_ttl(b"k", 10, b"v").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        assert!(err.may_have_applied());
        assert!(err.message().contains("only 0 of the 1 replicas"), "{err}");
        let sent = &connector.0.borrow().sent;
        let wait = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$2\r\n50\r\n".as_slice();
        assert!(
            sent[1].ends_with(wait),
            "{:?}",
            String::from_utf8_lossy(&sent[1])
        );
        assert!(!sent[2].ends_with(wait));
        assert!(sent[3].ends_with(wait));
    }

    #[test]
    fn no_wait_inside_an_open_multi_and_none_without_the_option() {
        assert!(ends_inside_multi(&[&[b"MULTI"], &[b"SET", b"k", b"v"]]));
        assert!(!ends_inside_multi(&[
            &[b"MULTI"],
            &[b"SET", b"k", b"v"],
            &[b"exec"]
        ]));
        assert!(is_write(&[b"setex", b"k"]) && is_write(&[b"EXEC"]) && !is_write(&[b"mget"]));
        let (mut client, connector) = client_with(
            "redis://127.0.0.1",
            vec![Ok(vec![PONG, Step::Reply(b"+OK\r\n")])],
        );
        client.set_with_ttl(b"k", 10, b"v").unwrap();
        assert!(!connector.0.borrow().sent[1]
            .windows(4)
            .any(|w| w == b"WAIT"));
    }
}
