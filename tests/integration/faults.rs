//! Faults between the component and Redis, each injected on its own, and what the caller
//! sees: unreachable and restarted servers, dropped connections, servers that hang, answer
//! half a frame or answer nonsense, and the host's own limits (memory, per-call deadline).
//!
//! Real `redis-server`s show what Redis does by itself (restart, `CLIENT KILL`, idle
//! timeout, `CLIENT PAUSE`); the fault-injecting proxy of `crate::support::fault` does the rest.
//! Every wait is bounded: hanging servers meet a short `timeout_ms`, and elapsed times are
//! checked against generous upper bounds only.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::*;
use taskstore_host::{ErrorKind, Options, Runtime, TaskError, TaskStore, UpdateOptions};
use taskstore_testing::fault::{Fault, FaultProxy};

const DOC: &str = r#"{"id": "t1", "status": "pending", "progress": 0}"#;
/// The per-operation timeout of stores that meet a hanging server.
const TIMEOUT_MS: u32 = 500;
/// What a timed-out call may take beyond its timeout: a bound, not a measurement.
const SLACK: Duration = Duration::from_secs(2);

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn timeout() -> Duration {
    Duration::from_millis(u64::from(TIMEOUT_MS))
}

/// A Redis with task `t1` in it, a proxy in front of it, and a store (short timeout)
/// opened through the proxy.
fn proxied() -> (RedisServer, FaultProxy, TaskStore) {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    let mut store = open_with(Options {
        timeout_ms: Some(TIMEOUT_MS),
        ..Options::new(proxy.url())
    })
    .expect("open through the proxy");
    store.set("t1", DOC, None).unwrap();
    (server, proxy, store)
}

/// Runs `call`, returning its result and how long it took.
fn timed<T>(call: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let result = call();
    (result, started.elapsed())
}

#[track_caller]
fn assert_timed_out<T: std::fmt::Debug>(result: Result<T, TaskError>, elapsed: Duration) {
    assert_eq!(
        kind(&result),
        Some(ErrorKind::Timeout),
        "expected a Timeout, got {result:?}"
    );
    assert!(
        elapsed >= timeout() - Duration::from_millis(50),
        "gave up after {elapsed:?}, before the {TIMEOUT_MS} ms timeout"
    );
    assert!(
        elapsed < timeout() + SLACK,
        "took {elapsed:?} for a {TIMEOUT_MS} ms timeout"
    );
}

#[track_caller]
fn assert_protocol_error<T: std::fmt::Debug>(result: Result<T, TaskError>) -> String {
    match result {
        Err(error) if error.kind() == ErrorKind::Protocol => error.into_message(),
        other => panic!("expected a Protocol error, got {other:?}"),
    }
}

/// `INFO stats` field `total_connections_received`.
fn connections_received(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

// --- unreachable --------------------------------------------------------------------------

#[test]
fn unreachable_redis_is_a_connection_error_naming_the_address_and_open_works_once_it_is_up() {
    let mut server = server();
    server.stop().unwrap();
    let (result, elapsed) = timed(|| open_with(Options::new(server.url())));
    match result {
        Err(error) if error.kind() == ErrorKind::Connection => {
            let message = error.message();
            assert!(
                message.contains(&format!("127.0.0.1:{}", server.port())),
                "{message}"
            )
        }
        other => panic!("expected a Connection error, got {other:?}"),
    }
    // Refused at once, well within the default 5 s timeout.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    server.restart().unwrap();
    let mut store = open_with(Options::new(server.url())).unwrap();
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn calls_fail_with_connection_error_while_redis_is_down_and_recover_after_restart() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes"])
        .start()
        .unwrap();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();

    server.stop().unwrap();
    match store.get("t1") {
        Err(error) if error.kind() == ErrorKind::Connection => {
            let message = error.message();
            assert!(
                message.contains(&format!("127.0.0.1:{}", server.port())),
                "{message}"
            )
        }
        other => panic!("expected a Connection error while Redis is down, got {other:?}"),
    }
    // Still down: the store tried to reconnect and failed the same way.
    assert_eq!(kind(&store.exists("t1")), Some(ErrorKind::Connection));

    server.restart().unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn connect_that_gets_no_answer_times_out() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    // neither succeeds nor fails until the client gives up.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    while fillers.len() < 8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => break,
        }
    }
    assert!(fillers.len() < 8, "the listener's queue never filled");

    let (result, elapsed) = timed(|| {
        open_with(Options {
            timeout_ms: Some(TIMEOUT_MS),
            ..Options::new(format!("redis://{addr}"))
        })
    });
    assert_timed_out(result.map(|_| ()), elapsed);
}

// --- hanging servers --------------------------------------------------------------------

#[test]
fn listener_that_never_accepts_times_out_at_open() {
    // The kernel completes the TCP handshake from the listen backlog; nobody ever reads.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let (result, elapsed) = timed(|| {
        open_with(Options {
            timeout_ms: Some(TIMEOUT_MS),
            ..Options::new(url)
        })
    });
    assert_timed_out(result.map(|_| ()), elapsed);
}

#[test]
fn server_that_accepts_but_never_answers_times_out_at_open_and_a_retry_opens() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    proxy.arm_accept(Fault::Hang, 1);
    let options = Options {
        timeout_ms: Some(TIMEOUT_MS),
        ..Options::new(proxy.url())
    };
    let (result, elapsed) = timed(|| open_with(options.clone()));
    assert_timed_out(result.map(|_| ()), elapsed);

    let mut store = open_with(options).unwrap();
    store.set("t1", DOC, None).unwrap();
}

#[test]
fn server_that_stops_answering_gives_a_timeout_and_the_next_call_reconnects() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm("GET", Fault::Hang, 1);
    let (result, elapsed) = timed(|| store.get("t1"));
    assert_timed_out(result, elapsed);

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    // The stale connection was dropped, not reused.
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn half_a_reply_then_silence_gives_a_timeout_and_the_next_call_works() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm(
        "GET",
        Fault::ReplyThenHang(b"$48\r\n{\"id\": \"t1\", \"sta".to_vec()),
        1,
    );
    let (result, elapsed) = timed(|| store.get("t1"));
    assert_timed_out(result, elapsed);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn half_a_header_line_then_silence_gives_a_timeout() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm("EXISTS", Fault::ReplyThenHang(b":1".to_vec()), 1);
    let (result, elapsed) = timed(|| store.exists("t1"));
    assert_timed_out(result, elapsed);
    assert!(store.exists("t1").unwrap());
}

#[test]
fn write_whose_reply_never_comes_gives_a_timeout() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm("SETEX", Fault::ForwardThenHang, 1);
    let (result, elapsed) = timed(|| store.set("t2", DOC, None));
    assert_timed_out(result, elapsed);
    // It reached Redis: a timed-out write may have been applied, as the WIT says.
    assert_eq!(store.get("t2").unwrap().as_deref(), Some(DOC));
}

#[test]
fn trickling_reply_cannot_stretch_an_operation_past_its_timeout() {
    let (_server, proxy, mut store) = proxied();
    // A valid 100 kB reply at 10 bytes per 20 ms would take over three minutes.
    let mut reply = b"$100000\r\n".to_vec();
    reply.resize(reply.len() + 100_000, b'x');
    proxy.arm(
        "GET",
        Fault::Trickle {
            bytes: reply,
            chunk: 10,
            every: Duration::from_millis(20),
        },
        1,
    );
    let (result, elapsed) = timed(|| store.get("t1"));
    assert_timed_out(result, elapsed);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn slow_but_steady_reply_within_the_timeout_is_read_whole() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    let mut store = open_with(Options {
        timeout_ms: Some(5_000),
        ..Options::new(proxy.url())
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();
    let reply = format!("${}\r\n{DOC}\r\n", DOC.len()).into_bytes();
    // Every split point of the reply arrives on its own, headers and CRLFs included.
    proxy.arm(
        "GET",
        Fault::Trickle {
            bytes: reply,
            chunk: 1,
            every: Duration::from_millis(5),
        },
        1,
    );
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    let mut many = b"*2\r\n".to_vec();
    many.extend(format!("${}\r\n{DOC}\r\n$-1\r\n", DOC.len()).bytes());
    proxy.arm(
        "MGET",
        Fault::Trickle {
            bytes: many,
            chunk: 3,
            every: Duration::from_millis(5),
        },
        1,
    );
    assert_eq!(
        store.get_many(&["t1".to_owned(), "t9".to_owned()]).unwrap(),
        vec![Some(DOC.to_owned()), None]
    );
    // Nothing was lost or left over on the connection: it is still in use.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert_eq!(proxy.connections(), 1);
}

/// A store whose connection will meet a server that stops reading mid-request.
fn stalled_store() -> (RedisServer, FaultProxy, TaskStore) {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    let mut store = open_with(Options {
        timeout_ms: Some(TIMEOUT_MS),
        max_document_bytes: Some(64 * 1024 * 1024),
        ..Options::new(proxy.url())
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();
    proxy.arm("SETEX", Fault::Stall, 1);
    (server, proxy, store)
}

/// Far more than the loopback socket buffers hold, so the write itself must wait.
fn huge_document() -> String {
    format!(r#"{{"blob": "{}"}}"#, "x".repeat(32 * 1024 * 1024))
}

#[test]
fn server_that_stops_reading_makes_a_large_write_time_out() {
    let (_server, _proxy, mut store) = stalled_store();
    let big = huge_document();
    let (result, elapsed) = timed(|| store.set("big", &big, None));
    assert_timed_out(result, elapsed);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

// --- misbehaving servers ----------------------------------------------------------------

#[test]
fn garbage_bytes_are_a_protocol_error_and_the_next_call_works() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm("GET", Fault::Reply(b"\x00\xff\xfegarbage\r\n".to_vec()), 1);
    let message = assert_protocol_error(store.get("t1"));
    assert!(message.contains(&proxy.addr().to_string()), "{message}");
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn garbage_answer_to_the_handshake_is_a_protocol_error_at_open() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    proxy.arm("PING", Fault::Reply(b"?garbage\r\n".to_vec()), 1);
    assert_protocol_error(open_with(Options::new(proxy.url())).map(|_| ()));
    open_with(Options::new(proxy.url())).unwrap();
}

#[test]
fn http_response_is_a_protocol_error_and_the_next_call_works() {
    let (_server, proxy, mut store) = proxied();
    let http = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request";
    proxy.arm("GET", Fault::Reply(http.to_vec()), 1);
    assert_protocol_error(store.get("t1"));
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn reply_of_the_wrong_type_is_a_protocol_error_and_the_next_call_works() {
    let (_server, proxy, mut store) = proxied();
    let cases: [(&str, &[u8]); 4] = [
        ("GET", b":1\r\n"),
        ("EXISTS", b"+OK\r\n"),
        ("SETEX", b"$2\r\nOK\r\n"),
        ("TTL", b"*0\r\n"),
    ];
    for (command, reply) in cases {
        proxy.arm(command, Fault::Reply(reply.to_vec()), 1);
        let result = match command {
            "GET" => store.get("t1").map(|_| ()),
            "EXISTS" => store.exists("t1").map(|_| ()),
            "SETEX" => store.set("t1", DOC, None),
            _ => store.ttl("t1").map(|_| ()),
        };
        let message = assert_protocol_error(result);
        assert!(message.contains(command), "{command}: {message}");
        assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC), "{command}");
    }
}

#[test]
fn oversized_length_prefixes_are_protocol_errors_without_allocating() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    // Were the announced lengths believed, the instance would need far more than this.
    let runtime = Runtime::builder()
        .memory_limit(32 * 1024 * 1024)
        .build()
        .unwrap();
    let mut store = TaskStore::open(
        &runtime,
        Options {
            timeout_ms: Some(TIMEOUT_MS),
            ..Options::new(proxy.url())
        },
    )
    .unwrap();
    store.set("t1", DOC, None).unwrap();

    proxy.arm("GET", Fault::Reply(b"$999999999999\r\n".to_vec()), 1);
    assert_protocol_error(store.get("t1"));
    proxy.arm("MGET", Fault::Reply(b"*999999999999\r\n".to_vec()), 1);
    assert_protocol_error(store.get_many(&["t1".to_owned()]));
    // Larger than max-document-bytes (16 MiB by default), though within the memory limit.
    proxy.arm("GET", Fault::Reply(b"$16777217\r\n".to_vec()), 1);
    assert_protocol_error(store.get("t1"));
    proxy.arm("GET", Fault::Reply(b"$-7\r\n".to_vec()), 1);
    assert_protocol_error(store.get("t1"));

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn deeply_nested_or_endless_replies_are_protocol_errors() {
    let (_server, proxy, mut store) = proxied();
    let nested = b"*1\r\n".repeat(10_000);
    proxy.arm("MGET", Fault::Reply(nested), 1);
    assert_protocol_error(store.get_many(&["t1".to_owned()]));

    // A status line that never ends: rejected once it is longer than any Redis line,
    // without waiting for the timeout.
    let endless = [b"+".as_slice(), &[b'x'; 100_000]].concat();
    proxy.arm("GET", Fault::ReplyThenHang(endless), 1);
    let (result, elapsed) = timed(|| store.get("t1"));
    assert_protocol_error(result);
    assert!(elapsed < timeout(), "{elapsed:?}");

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn reset_mid_reply_on_a_reused_connection_is_retried_once_for_a_read() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm(
        "GET",
        Fault::ReplyThenReset(b"$48\r\n{\"id\": ".to_vec()),
        1,
    );
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert_eq!(proxy.seen("GET"), 2);
    assert_eq!(proxy.connections(), 2);
}

#[test]
fn reset_mid_reply_twice_is_a_connection_error_and_the_next_call_works() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm(
        "GET",
        Fault::ReplyThenReset(b"$48\r\n{\"id\": ".to_vec()),
        2,
    );
    match store.get("t1") {
        Err(error) if error.kind() == ErrorKind::Connection => {
            let message = error.message();
            assert!(message.contains(&proxy.addr().to_string()), "{message}")
        }
        other => panic!("expected a Connection error, got {other:?}"),
    }
    // Sent once on the old connection and retried once on a new one; no more.
    assert_eq!(proxy.seen("GET"), 2);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn reset_mid_reply_to_create_is_a_connection_error_and_not_resent() {
    let (_server, proxy, mut store) = proxied();
    proxy.arm("SET", Fault::ReplyThenReset(b"+O".to_vec()), 1);
    assert_eq!(
        kind(&store.create("t2", DOC, None)),
        Some(ErrorKind::Connection),
        "create after a reset"
    );
    assert_eq!(proxy.seen("SET"), 1);
}

#[test]
fn connection_closed_right_after_accept_is_a_connection_error_at_open() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    proxy.arm_accept(Fault::Close, 1);
    match open_with(Options::new(proxy.url())) {
        Err(error) if error.kind() == ErrorKind::Connection => {
            let message = error.message();
            assert!(message.contains(&proxy.addr().to_string()), "{message}")
        }
        other => panic!("expected a Connection error, got {other:?}"),
    }
    let mut store = open_with(Options::new(proxy.url())).unwrap();
    store.set("t1", DOC, None).unwrap();
}

#[test]
fn component_answers_every_fault_with_an_error_never_a_trap() {
    let (_server, proxy, mut store) = proxied();
    let faults = [
        Fault::Hang,
        Fault::ReplyThenHang(b"$5\r\nab".to_vec()),
        Fault::Reply(b"garbage".to_vec()),
        Fault::Reply(b"$999999999999\r\n".to_vec()),
        Fault::ReplyThenReset(b"*2\r\n".to_vec()),
        Fault::Close,
        Fault::ForwardThenClose,
        Fault::ForwardThenHang,
    ];
    for fault in faults {
        // Twice: the first may be absorbed by the retry of a read on a new connection.
        proxy.arm("GET", fault.clone(), 2);
        let result = store.get("t1");
        assert!(
            matches!(
                kind(&result),
                Some(ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Protocol)
            ),
            "{fault:?}: {result:?}"
        );
        proxy.arm("GET", fault.clone(), 0);
        assert_eq!(
            store.get("t1").unwrap().as_deref(),
            Some(DOC),
            "after {fault:?}"
        );
    }
}

// --- Redis restarts and dropped connections ---------------------------------------------

#[test]
fn next_call_succeeds_after_redis_restarts_between_calls() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes"])
        .start()
        .unwrap();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    server.restart().unwrap();

    // The connection died with the old process; the read is retried on a new one.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    server.restart().unwrap();
    store.set("t2", DOC, None).unwrap();
    assert!(store.exists("t2").unwrap());
}

#[test]
fn next_call_succeeds_after_client_kill() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    let before = connections_received(&mut con);

    // Every normal client but the one asking.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 1);

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert_eq!(connections_received(&mut con), before + 1);
    // A write after another kill is retried too.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 1);
    store.set("t1", r#"{"status": "done"}"#, None).unwrap();
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(br#"{"status": "done"}"#.to_vec())
    );
}

#[test]
fn next_call_succeeds_after_an_idle_timeout_disconnect() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "timeout", "1"])
        .query(&mut con)
        .unwrap();

    // Wait until Redis has dropped the idle store connection: only the asking one is left.
    // (The plain client asks every 25 ms, so it is never idle for a second.)
    let dropped = eventually(Duration::from_secs(5), || {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
        clients.lines().count() == 1
    });
    assert!(dropped, "Redis did not drop the idle connection");

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn close_without_reply_on_a_reused_connection_is_retried_for_idempotent_writes() {
    let (server, proxy, mut store) = proxied();
    let before = proxy.seen("SETEX");
    proxy.arm("SETEX", Fault::Close, 1);
    store.set("t2", DOC, Some(100)).unwrap();
    assert_eq!(proxy.seen("SETEX") - before, 2);
    proxy.arm("DEL", Fault::Close, 1);
    assert!(store.delete("t2").unwrap());
    assert_eq!(proxy.seen("DEL"), 2);
    assert_eq!(plain_get(&mut plain(&server), &key("t2")), None);
}

// --- update and create are never applied twice ------------------------------------------

#[test]
fn update_whose_connection_drops_after_exec_fails_and_was_applied_once() {
    let (server, proxy, mut store) = proxied();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    proxy.arm("EXEC", Fault::ForwardThenClose, 1);
    let result = store.update("t1", r#"{"status": "running"}"#, &UpdateOptions::default());
    assert_eq!(kind(&result), Some(ErrorKind::Connection), "{result:?}");

    let delta = command_delta(&before, &command_calls(&mut con));
    assert_eq!(delta.get("exec"), Some(&1), "{delta:?}");
    assert_eq!(delta.get("watch"), Some(&1), "{delta:?}");
    assert_eq!(proxy.seen("EXEC"), 1);
    let patched = r#"{"id": "t1", "status": "running", "progress": 0}"#;
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(patched.as_bytes().to_vec())
    );
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(patched));
}

#[test]
fn update_whose_reply_never_comes_times_out_and_was_applied_once() {
    let (server, proxy, mut store) = proxied();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    proxy.arm("EXEC", Fault::ForwardThenHang, 1);
    let (result, elapsed) =
        timed(|| store.update("t1", r#"{"progress": 50}"#, &UpdateOptions::default()));
    assert_timed_out(result, elapsed);

    let delta = command_delta(&before, &command_calls(&mut con));
    assert_eq!(delta.get("exec"), Some(&1), "{delta:?}");
    assert_eq!(delta.get("watch"), Some(&1), "{delta:?}");
    let patched = r#"{"id": "t1", "status": "pending", "progress": 50}"#;
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(patched));
}

#[test]
fn update_retries_its_read_but_never_its_transaction() {
    let (server, proxy, mut store) = proxied();
    // WATCH + GET only read: found dead on a reused connection, they are sent again.
    proxy.arm("WATCH", Fault::Close, 1);
    let updated = store
        .update("t1", r#"{"progress": 1}"#, &UpdateOptions::default())
        .unwrap()
        .expect("the task exists");
    assert!(updated.contains(r#""progress": 1"#), "{updated}");
    assert_eq!((proxy.seen("WATCH"), proxy.seen("EXEC")), (2, 1));

    // MULTI … EXEC is never sent twice, even when it certainly did not run.
    proxy.arm("EXEC", Fault::Close, 1);
    let result = store.update("t1", r#"{"progress": 2}"#, &UpdateOptions::default());
    assert_eq!(kind(&result), Some(ErrorKind::Connection), "{result:?}");
    assert_eq!(proxy.seen("EXEC"), 2);
    assert_eq!(
        plain_get(&mut plain(&server), &key("t1")),
        Some(updated.into_bytes())
    );
}

#[test]
fn create_whose_connection_drops_after_it_ran_fails_and_is_not_resent() {
    let (server, proxy, mut store) = proxied();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    proxy.arm("SET", Fault::ForwardThenClose, 1);
    assert_eq!(
        kind(&store.create("t2", DOC, None)),
        Some(ErrorKind::Connection)
    );
    let delta = command_delta(&before, &command_calls(&mut con));
    assert_eq!(delta.get("set"), Some(&1), "{delta:?}");
    // It ran: a second create finds the task.
    assert!(!store.create("t2", DOC, None).unwrap());
}

// --- host limits ------------------------------------------------------------------------

#[test]
fn reply_that_outgrows_the_memory_limit_traps_as_a_host_error_and_the_store_recovers() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    let runtime = Runtime::builder()
        .memory_limit(16 * 1024 * 1024)
        .build()
        .unwrap();
    let mut store = TaskStore::open(
        &runtime,
        Options {
            // Allowed by the options, but not by the host's memory limit.
            max_document_bytes: Some(64 * 1024 * 1024),
            ..Options::new(proxy.url())
        },
    )
    .unwrap();
    store.set("t1", DOC, None).unwrap();

    let len = 40 * 1024 * 1024;
    let mut reply = format!("${len}\r\n").into_bytes();
    reply.resize(reply.len() + len, b'x');
    reply.extend_from_slice(b"\r\n");
    proxy.arm("GET", Fault::Reply(reply), 1);
    match store.get("t1") {
        Err(error) if error.kind() == ErrorKind::Host => {
            let message = error.message();
            assert!(message.contains("trapped"), "{message}");
            assert!(message.contains("new instance"), "{message}");
        }
        other => panic!("expected a Host error, got {other:?}"),
    }
    // A new instance, a new connection, the same store.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn call_running_past_the_call_deadline_traps_and_the_store_recovers() {
    let server = server();
    let runtime = Runtime::builder()
        .call_deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut store = TaskStore::open(&runtime, Options::new(server.url())).unwrap();
    store.set("t1", DOC, None).unwrap();

    // Redis holds every command for 1.5 s: well within the 5 s operation timeout, but past
    // the 300 ms the host lets a call run.
    let mut con = plain(&server);
    let () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "ALL"])
        .query(&mut con)
        .unwrap();
    let (result, elapsed) = timed(|| store.get("t1"));
    match result {
        Err(error) if error.kind() == ErrorKind::Host => {
            let message = error.message();
            assert!(message.contains("deadline"), "{message}")
        }
        other => panic!("expected a Host error, got {other:?}"),
    }
    assert!(elapsed < Duration::from_millis(1500) + SLACK, "{elapsed:?}");

    let recovered = eventually(PLAIN_TIMEOUT, || store.get("t1").is_ok());
    assert!(recovered, "the store did not recover after the pause");
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn every_call_gets_the_whole_deadline() {
    let server = server();
    let deadline = Duration::from_millis(300);
    let runtime = Runtime::builder().call_deadline(deadline).build().unwrap();
    let mut store = TaskStore::open(&runtime, Options::new(server.url())).unwrap();
    let started = Instant::now();
    while started.elapsed() < deadline * 3 {
        store.set("t1", DOC, None).unwrap();
        assert!(store.exists("t1").unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- properties -------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Bytes that look like RESP often enough to reach past the first header.
    fn reply_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "([-+:$*](-?[0-9]{1,13}|[a-zA-Z ]{0,6})\r\n){1,5}".prop_map(String::into_bytes),
            (
                "[$*]-?[0-9]{1,19}\r\n",
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(header, tail)| [header.into_bytes(), tail].concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn no_reply_bytes_make_the_component_trap(bytes in reply_bytes()) {
            thread_local! {
                static SETUP: (RedisServer, FaultProxy, std::cell::RefCell<TaskStore>) = {
                    let server = server();
                    let proxy = FaultProxy::start(server.addr());
                    let mut store = open_with(Options {
                        timeout_ms: Some(200),
                        ..Options::new(proxy.url())
                    })
                    .unwrap();
                    store.set("t1", DOC, None).unwrap();
                    (server, proxy, std::cell::RefCell::new(store))
                };
            }
            SETUP.with(|(_, proxy, store)| {
                let mut store = store.borrow_mut();
                proxy.arm("GET", Fault::Reply(bytes.clone()), 1);
                let result = store.get("t1");
                prop_assert_ne!(kind(&result), Some(ErrorKind::Host), "{:?}", result);
                proxy.arm("GET", Fault::Hang, 0);
                let next = store.get("t1").unwrap();
                prop_assert_eq!(next.as_deref(), Some(DOC));
                Ok(())
            })?;
        }
    }
}
