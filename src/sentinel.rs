//! Redis Sentinel: the master of a `redis+sentinel://` URL's service, found by asking the
//! sentinels, and found again when it stops being the master.
//!
//! Discovery asks the URL's sentinels in order (`SENTINEL get-master-addr-by-name`, with
//! the sentinel password only), connects to the address the first answer names (with the
//! data password) and keeps it only if `ROLE` says `master`: a sentinel that has not yet
//! seen a failover names the old master, now a replica, and the next sentinel is asked.
//!
//! Work runs on the master's [`Client`] ([`SentinelClient::on_key`]). When it fails in a
//! way that means the master moved — the connection is lost or refused, or Redis answers
//! `READONLY`, `LOADING` or `MASTERDOWN` — the master is forgotten and found again, and the
//! work runs again, within the operation's deadline and at most [`MAX_ATTEMPTS`] times, but
//! only if it cannot have applied: nothing that writes was sent, or the failure says Redis
//! refused it ([`TaskError::may_have_applied`]). A write that may have applied is reported
//! as such; the next operation finds the new master.
//!
//! A master that was replaced while it stayed up (a forced or manual failover, a partition)
//! keeps accepting writes until the sentinels turn it into a replica, seconds later, and
//! those writes are then lost. So before an operation, at most once per
//! [`RECHECK_INTERVAL`], the sentinels are asked again, and a master they no longer name is
//! left for the one they do.

use std::time::{Duration, Instant};

use crate::client::{server_error, Client, Retry};
use crate::config::RedisUrl;
use crate::resp::{RedisErrorCode, Reply, ReplyLimits};
use crate::transport::{Connector, Endpoint};
use crate::{ErrorKind, TaskError};

/// Runs of one operation (the first included) across re-discoveries.
pub const MAX_ATTEMPTS: u32 = 20;
/// Pause before the first re-run; doubled each time, up to [`MAX_PAUSE`]: a failover takes
/// the sentinels from a few hundred milliseconds to seconds.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(400);
/// Least time between two checks that the sentinels still name the master in use.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Largest reply taken from a sentinel: an address and a port.
const SENTINEL_MAX_REPLY_BYTES: usize = 4096;

pub struct SentinelClient<C: Connector + Clone> {
    connector: C,
    /// The Sentinel URL: sentinels, service, both passwords, database.
    url: RedisUrl,
    timeout: Duration,
    max_value_bytes: usize,
    /// The master found last; `None` until found, and after it failed. Boxed: a client
    /// holds its buffers inline, and the backend enum should not grow by one.
    master: Option<Box<Client<C>>>,
    /// When the sentinels last named `master`.
    checked_at: Instant,
}

/// Why discovery failed, and whether trying again soon could help.
struct NotFound {
    error: TaskError,
    /// Refused credentials, or every sentinel that answered knows no such service.
    is_final: bool,
}

impl<C: Connector + Clone> SentinelClient<C> {
    /// A client for the Sentinel `url`; nothing is sent until [`SentinelClient::connect`]
    /// or the first command.
    pub fn new(connector: C, url: RedisUrl, timeout: Duration, max_value_bytes: usize) -> Self {
        SentinelClient {
            connector,
            url,
            timeout,
            max_value_bytes,
            master: None,
            checked_at: Instant::now(),
        }
    }

    /// Finds the master now and connects to it (authenticating).
    ///
    /// # Errors
    /// As [`SentinelClient::on_key`].
    pub fn connect(&mut self) -> Result<(), TaskError> {
        self.on_key(|client| client.connect())
    }

    /// The master's address, once found.
    pub fn master_endpoint(&self) -> Option<&Endpoint> {
        self.master.as_ref().map(|master| master.endpoint_ref())
    }

    /// Runs `op` on the master's connection, finding the master first if needed, and again
    /// after a failure that means it moved (see the module documentation).
    ///
    /// # Errors
    /// `op`'s error; a discovery error (`connection`, or `authentication` for a refused
    /// sentinel or data password) when no master is found within the deadline.
    pub fn on_key<T>(
        &mut self,
        mut op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = FIRST_PAUSE;
        if self.master.is_some() && self.checked_at.elapsed() >= RECHECK_INTERVAL {
            self.recheck(deadline);
        }
        for attempt in 1.. {
            let (error, may_retry) = match self.master(deadline) {
                Ok(master) => {
                    master.take_sent_write();
                    let outcome = op(master);
                    let wrote = master.take_sent_write();
                    match outcome {
                        Ok(value) => return Ok(value),
                        Err(error) if !means_master_moved(&error) => return Err(error),
                        Err(error) => {
                            self.master = None;
                            let may_retry = !wrote || !error.may_have_applied();
                            (error, may_retry)
                        }
                    }
                }
                Err(NotFound { error, is_final }) => (error, !is_final),
            };
            if !may_retry || attempt >= MAX_ATTEMPTS || Instant::now() + pause >= deadline {
                return Err(error);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
        unreachable!("the loop returns by its last attempt")
    }

    /// The master's client, found first (by `deadline`) if there is none.
    fn master(&mut self, deadline: Instant) -> Result<&mut Client<C>, NotFound> {
        if self.master.is_none() {
            let found = self.discover(deadline)?;
            self.master = Some(Box::new(found));
            self.checked_at = Instant::now();
        }
        Ok(self.master.as_deref_mut().expect("just found"))
    }

    /// Asks the first sentinel that answers which master it names; forgets the master in
    /// use if that is another. A failure to ask changes nothing: the master in use is then
    /// as good a guess as any, and its own failures lead to discovery.
    fn recheck(&mut self, deadline: Instant) {
        self.checked_at = Instant::now();
        let Some(target) = &self.url.sentinel else {
            return;
        };
        for sentinel in &target.sentinels {
            match self.ask_sentinel(sentinel, &target.service, deadline) {
                Ok(Ok(Some(named))) => {
                    if self.master_endpoint() != Some(&named) {
                        self.master = None;
                    }
                    return;
                }
                Ok(_) | Err(_) => continue,
            }
        }
    }

    /// `SENTINEL get-master-addr-by-name` on `sentinel`: its answer (`Ok(None)`: no such
    /// service; `Err`: a malformed answer), or the failure to ask — within what is left
    /// until `deadline`, so that asking several sentinels that do not answer stays within
    /// one operation's deadline.
    #[allow(clippy::type_complexity)]
    fn ask_sentinel(
        &self,
        sentinel: &Endpoint,
        service: &str,
        deadline: Instant,
    ) -> Result<Result<Option<Endpoint>, String>, TaskError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TaskError::timeout(format!(
                "no time left to ask Redis Sentinel at {sentinel} within {} ms",
                self.timeout.as_millis() as u64
            )));
        }
        let limits = ReplyLimits {
            max_bulk_bytes: SENTINEL_MAX_REPLY_BYTES,
            max_array_len: 16,
            max_reply_bytes: SENTINEL_MAX_REPLY_BYTES,
        };
        let mut asking = Client::new(
            self.connector.clone(),
            self.url.for_sentinel(sentinel.clone()),
            left.min(self.timeout),
            SENTINEL_MAX_REPLY_BYTES,
        )
        .with_reply_limits(limits);
        let command: [&[u8]; 3] = [b"SENTINEL", b"get-master-addr-by-name", service.as_bytes()];
        let reply = asking.command(&command, Retry::Idempotent)?;
        Ok(master_address(&reply))
    }

    /// Asks each sentinel in turn for the master and returns a client connected to the
    /// first address that says it is the master.
    fn discover(&self, deadline: Instant) -> Result<Client<C>, NotFound> {
        let target = self.url.sentinel.as_ref().ok_or_else(|| NotFound {
            error: TaskError::invalid_input("not a Redis Sentinel URL"),
            is_final: true,
        })?;
        let mut last = TaskError::connection("the Redis Sentinel URL names no sentinel");
        let (mut answered, mut unknown) = (0, 0);
        for sentinel in &target.sentinels {
            let reply = match self.ask_sentinel(sentinel, &target.service, deadline) {
                Ok(reply) => reply,
                Err(error) if error.kind() == ErrorKind::Authentication => {
                    return Err(NotFound {
                        error: sentinel_auth_error(sentinel, error),
                        is_final: true,
                    })
                }
                Err(error) => {
                    last = error.context(&format!("asking Redis Sentinel at {sentinel}"));
                    continue;
                }
            };
            answered += 1;
            let master = match reply {
                Ok(Some(master)) => master,
                Ok(None) => {
                    unknown += 1;
                    // The service name is never quoted: it comes from the URL's path.
                    last = TaskError::connection(format!(
                        "Redis Sentinel at {sentinel} monitors no master by the service name \
                         the URL gives (check the name after the sentinels' host:port/)"
                    ));
                    continue;
                }
                Err(why) => {
                    last = TaskError::protocol(format!(
                        "bad SENTINEL get-master-addr-by-name reply from {sentinel}: {why}"
                    ));
                    continue;
                }
            };
            let mut client = Client::new(
                self.connector.clone(),
                self.url.for_node(master.clone()),
                self.timeout,
                self.max_value_bytes,
            );
            match client.command(&[b"ROLE"], Retry::Idempotent) {
                Ok(Reply::Array(parts)) if is_master_role(&parts) => return Ok(client),
                Ok(Reply::Array(_)) => {
                    last = TaskError::connection(format!(
                        "Redis at {master}, which Redis Sentinel at {sentinel} names the \
                         master, is not (yet) a master: a failover is under way"
                    ))
                }
                Ok(other) => last = client.unexpected_reply("ROLE", &other),
                Err(error) if error.kind() == ErrorKind::Authentication => {
                    return Err(NotFound {
                        error,
                        is_final: true,
                    })
                }
                Err(error) => {
                    last = error.context(&format!(
                        "reaching the master Redis Sentinel at {sentinel} names"
                    ))
                }
            }
        }
        Err(NotFound {
            error: last,
            is_final: answered > 0 && unknown == answered,
        })
    }

    /// The error an error reply stands for.
    pub fn reply_error(&self, message: String) -> TaskError {
        match &self.master {
            Some(master) => master.reply_error(message),
            None => server_error(message, &self.url),
        }
    }

    /// A reply of the wrong shape for `command`, as a protocol error.
    pub fn unexpected_reply(&self, command: &str, reply: &Reply) -> TaskError {
        match &self.master {
            Some(master) => master.unexpected_reply(command, reply),
            None => TaskError::protocol(format!(
                "unexpected {} reply to {command} from Redis",
                crate::client::reply_kind(reply)
            )),
        }
    }
}

/// Whether `error` means the master may have moved: the connection failed, or the server
/// says it is a replica, is loading, or lost its master.
fn means_master_moved(error: &TaskError) -> bool {
    match error.kind() {
        ErrorKind::Connection | ErrorKind::Timeout => true,
        ErrorKind::Server => matches!(
            error.redis_code(),
            Some(RedisErrorCode::ReadOnly | RedisErrorCode::Loading | RedisErrorCode::MasterDown)
        ),
        _ => false,
    }
}

/// A sentinel refused the sentinel password (or wants one): said so, since the URL's own
/// password is not what sentinels are sent.
fn sentinel_auth_error(sentinel: &Endpoint, error: TaskError) -> TaskError {
    TaskError::authentication(format!(
        "Redis Sentinel at {sentinel} refused the sentinel password or needs one (give it \
         with sentinel-password; the URL's own password goes to the data nodes only): {}",
        error.message()
    ))
}

/// The `[host, port]` of a `SENTINEL get-master-addr-by-name` reply; `None` for nil (the
/// sentinel monitors no such service).
fn master_address(reply: &Reply) -> Result<Option<Endpoint>, String> {
    match reply {
        Reply::Null => Ok(None),
        Reply::Array(parts) if parts.is_empty() => Ok(None),
        Reply::Array(parts) => match parts.as_slice() {
            [Reply::BulkString(host), Reply::BulkString(port)] => {
                let host = std::str::from_utf8(host).map_err(|_| "host is not text")?;
                let port = std::str::from_utf8(port)
                    .ok()
                    .and_then(|port| port.parse::<u16>().ok())
                    .filter(|&port| port != 0)
                    .ok_or("port is not a number between 1 and 65535")?;
                let valid_host = !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
                if !valid_host {
                    return Err("host is not a host name or IP address".into());
                }
                Ok(Some(Endpoint::new(host, port)))
            }
            _ => Err("not a [host, port] pair".into()),
        },
        _ => Err(format!("a {} reply", crate::client::reply_kind(reply))),
    }
}

/// Whether a `ROLE` reply's first element is `master`.
fn is_master_role(parts: &[Reply]) -> bool {
    matches!(parts.first(), Some(Reply::BulkString(role)) if role == b"master")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{FakeConnector, Step};
    use crate::transport::IoError;

    const PONG: Step = Step::Reply(b"+PONG\r\n");
    const MASTER_AT_6380: Step = Step::Reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
    const MASTER_AT_6381: Step = Step::Reply(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6381\r\n");
    const ROLE_MASTER: Step = Step::Reply(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n");
    const ROLE_REPLICA: Step =
        Step::Reply(b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6381\r\n$9\r\nconnected\r\n:0\r\n");

    fn sentinel_client(
        url: &str,
        connections: Vec<Result<Vec<Step>, IoError>>,
    ) -> (SentinelClient<FakeConnector>, FakeConnector) {
        let connector = FakeConnector::default();
        connector.0.borrow_mut().connections = connections.into();
        let url = RedisUrl::parse(url).unwrap();
        let client = SentinelClient::new(connector.clone(), url, Duration::from_secs(2), 1024);
        (client, connector)
    }

    fn sent_text(connector: &FakeConnector) -> Vec<String> {
        connector
            .0
            .borrow()
            .sent
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect()
    }

    #[test]
    fn asks_the_sentinels_in_order_and_keeps_a_master_that_says_so() {
        let (mut client, connector) = sentinel_client(
            "redis+sentinel://:data@127.0.0.1:26379,127.0.0.1:26380/svc/2?sentinel-password=sp",
            vec![
                Err(IoError::Connect("connection refused".into())),
                Ok(vec![Step::Reply(b"+OK\r\n"), MASTER_AT_6380]),
                Ok(vec![
                    Step::Reply(b"+OK\r\n+OK\r\n"),
                    ROLE_MASTER,
                    Step::Reply(b"$-1\r\n"),
                ]),
            ],
        );
        assert_eq!(client.on_key(|c| c.get(b"k")).unwrap(), None);
        assert_eq!(
            client.master_endpoint(),
            Some(&Endpoint::new("127.0.0.1", 6380))
        );
        let sent = sent_text(&connector);
        assert!(
            sent[0].contains("AUTH\r\n$2\r\nsp\r\n"),
            "sentinel password: {}",
            sent[0]
        );
        assert!(
            sent[1].contains("get-master-addr-by-name\r\n$3\r\nsvc"),
            "{}",
            sent[1]
        );
        assert!(
            sent[2].contains("AUTH\r\n$4\r\ndata") && sent[2].contains("SELECT"),
            "{}",
            sent[2]
        );
        assert!(sent[3].contains("ROLE"));
    }

    #[test]
    fn a_sentinel_naming_a_replica_is_passed_over_for_the_next() {
        let (mut client, _) = sentinel_client(
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/svc",
            vec![
                Ok(vec![PONG, MASTER_AT_6380]),
                Ok(vec![PONG, ROLE_REPLICA]),
                Ok(vec![PONG, MASTER_AT_6381]),
                Ok(vec![PONG, ROLE_MASTER]),
            ],
        );
        client.connect().unwrap();
        assert_eq!(
            client.master_endpoint(),
            Some(&Endpoint::new("127.0.0.1", 6381))
        );
    }

    #[test]
    fn readonly_or_loading_finds_the_new_master_and_runs_the_write_again() {
        let refusals: [&'static [u8]; 3] = [
            b"-READONLY You can't write against a read only replica.\r\n",
            b"-LOADING Redis is loading the dataset in memory\r\n",
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
        ];
        for refusal in refusals {
            let (mut client, connector) = sentinel_client(
                "redis+sentinel://127.0.0.1:26379/svc",
                vec![
                    Ok(vec![PONG, MASTER_AT_6380]),
                    Ok(vec![PONG, ROLE_MASTER, Step::Reply(refusal)]),
                    Ok(vec![PONG, MASTER_AT_6381]),
                    Ok(vec![PONG, ROLE_MASTER, Step::Reply(b"+OK\r\n")]),
                ],
            );
            client.on_key(|c| c.set_with_ttl(b"k", 5, b"v")).unwrap();
            assert_eq!(
                client.master_endpoint(),
                Some(&Endpoint::new("127.0.0.1", 6381))
            );
            assert_eq!(connector.0.borrow().connects, 4);
        }
    }

    #[test]
    fn a_write_whose_connection_broke_is_not_run_again_but_the_next_call_rediscovers() {
        let (mut client, connector) = sentinel_client(
            "redis+sentinel://127.0.0.1:26379/svc",
            vec![
                Ok(vec![PONG, MASTER_AT_6380]),
                Ok(vec![
                    PONG,
                    ROLE_MASTER,
                    Step::Fail(IoError::Broken("reset".into())),
                ]),
                // The client's own one retry of the idempotent SETEX, to the dead master.
                Err(IoError::Connect("connection refused".into())),
                Ok(vec![PONG, MASTER_AT_6381]),
                Ok(vec![PONG, ROLE_MASTER, Step::Reply(b"$1\r\nv\r\n")]),
            ],
        );
        let err = client
            .on_key(|c| c.set_with_ttl(b"k", 5, b"v"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
        assert!(err.may_have_applied());
        assert_eq!(
            connector.0.borrow().connects,
            3,
            "no rediscovery to run it again"
        );
        assert_eq!(client.on_key(|c| c.get(b"k")).unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            client.master_endpoint(),
            Some(&Endpoint::new("127.0.0.1", 6381))
        );
    }

    #[test]
    fn a_read_whose_master_died_runs_again_on_the_new_master() {
        let (mut client, _) = sentinel_client(
            "redis+sentinel://127.0.0.1:26379/svc",
            vec![
                Ok(vec![PONG, MASTER_AT_6380]),
                Ok(vec![PONG, ROLE_MASTER, Step::Fail(IoError::Closed)]),
                // The client's own retry on a fresh connection to the dead master.
                Err(IoError::Connect("connection refused".into())),
                Ok(vec![PONG, MASTER_AT_6381]),
                Ok(vec![PONG, ROLE_MASTER, Step::Reply(b"$1\r\nv\r\n")]),
            ],
        );
        client.connect().unwrap();
        assert_eq!(client.on_key(|c| c.get(b"k")).unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_master_the_sentinels_no_longer_name_is_left_at_the_next_check() {
        let (mut client, _) = sentinel_client(
            "redis+sentinel://127.0.0.1:26379/svc",
            vec![
                Ok(vec![PONG, MASTER_AT_6380]),
                Ok(vec![PONG, ROLE_MASTER, Step::Reply(b"$-1\r\n")]),
                // The check: the sentinels name another master (the old one still answers).
                Ok(vec![PONG, MASTER_AT_6381]),
                Ok(vec![PONG, MASTER_AT_6381]),
                Ok(vec![PONG, ROLE_MASTER, Step::Reply(b"$1\r\nv\r\n")]),
            ],
        );
        assert_eq!(client.on_key(|c| c.get(b"k")).unwrap(), None);
        std::thread::sleep(RECHECK_INTERVAL + Duration::from_millis(10));
        assert_eq!(client.on_key(|c| c.get(b"k")).unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            client.master_endpoint(),
            Some(&Endpoint::new("127.0.0.1", 6381))
        );
    }

    #[test]
    fn an_unknown_service_is_a_final_error_that_quotes_no_part_of_the_url() {
        let (mut client, connector) = sentinel_client(
            "redis+sentinel://:Zp2Secret@127.0.0.1:26379,127.0.0.1:26380/nosuchsvc",
            vec![
                Ok(vec![PONG, Step::Reply(b"*-1\r\n")]),
                Ok(vec![PONG, Step::Reply(b"*-1\r\n")]),
            ],
        );
        let started = Instant::now();
        let err = client.connect().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
        assert!(err.message().contains("monitors no master"), "{err}");
        assert!(!err.message().contains("nosuchsvc") && !err.message().contains("Zp2"));
        assert_eq!(
            connector.0.borrow().connects,
            2,
            "asked once, not until the deadline"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_refused_sentinel_password_is_final_and_says_which_password() {
        let (mut client, _) = sentinel_client(
            "redis+sentinel://127.0.0.1:26379/svc?sentinel-password=Zp2Secret",
            vec![Ok(vec![Step::Reply(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            )])],
        );
        let err = client.connect().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
        assert!(err.message().contains("sentinel password"), "{err}");
        assert!(!err.message().contains("Zp2"), "{err}");
    }

    #[test]
    fn no_sentinel_reachable_is_retried_until_the_deadline_then_reported() {
        let (mut client, connector) =
            sentinel_client("redis+sentinel://127.0.0.1:26379/svc", vec![]);
        let started = Instant::now();
        let err = client.connect().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err:?}");
        assert!(err.message().contains("127.0.0.1:26379"), "{err}");
        let connects = connector.0.borrow().connects;
        assert!(
            (2..=MAX_ATTEMPTS as usize).contains(&connects),
            "{connects}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// Sentinels that accept connections and never answer: asking all of them takes one
    /// operation's deadline, not one per sentinel.
    #[test]
    fn silent_sentinels_are_asked_within_one_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        let url = RedisUrl::parse(&format!(
            "redis+sentinel://127.0.0.1:{port},127.0.0.1:{port},127.0.0.1:{port}/svc"
        ))
        .unwrap();
        let timeout = Duration::from_millis(500);
        let mut client = SentinelClient::new(crate::std_tcp::StdConnector, url, timeout, 1024);
        let started = Instant::now();
        let err = client.connect().unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        assert!(
            took < timeout * 2,
            "took {took:?} for a {timeout:?} deadline"
        );
    }

    #[test]
    fn master_address_replies_are_checked() {
        assert_eq!(master_address(&Reply::Null), Ok(None));
        let pair = |host: &[u8], port: &[u8]| {
            Reply::Array(vec![
                Reply::BulkString(host.to_vec()),
                Reply::BulkString(port.to_vec()),
            ])
        };
        assert_eq!(
            master_address(&pair(b"::1", b"6379")),
            Ok(Some(Endpoint::new("::1", 6379)))
        );
        assert!(master_address(&pair(b"h", b"0")).is_err());
        assert!(master_address(&pair(b"h st", b"1")).is_err());
        assert!(master_address(&Reply::Integer(1)).is_err());
    }
}
