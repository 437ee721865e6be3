//! Authentication, secrets and least privilege.
//!
//! Credentials come from the URL (`redis://:password@host` for `requirepass`,
//! `redis://user:password@host` for an ACL user) and are checked when the store opens. The
//! password must never show in an error, in `Debug` output, or in a trap report — not even
//! when the server itself quotes it: every path that passes on server text (each single
//! operation, `set-many`'s per-item errors, the batches, `AUTH` at open and on reconnect)
//! is checked against an echoing server, for passwords of 1, 2, 3 and 16 characters. The
//! component gets TCP to the Redis address and nothing else; `host/src/sandbox.rs` checks
//! that on the WASI context itself, the test here from outside.

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use crate::support::*;
use taskstore_host::{ErrorKind, ListOptions, Options, Runtime, TaskError, UpdateOptions};
use taskstore_testing::fault::{Fault, FaultProxy};

const DOC: &str = r#"{"id": "t1", "status": "pending", "progress": 0}"#;
const SECRET: &str = "hunter2-S3CRET";

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn requirepass(password: &str) -> RedisServer {
    RedisServer::builder()
        .arg("--requirepass")
        .arg(password)
        .start()
        .unwrap()
}

#[track_caller]
fn assert_authentication<T>(result: Result<T, TaskError>) -> String {
    match result {
        Err(error) if error.kind() == ErrorKind::Authentication => error.into_message(),
        Err(other) => panic!("expected Authentication, got {other:?}"),
        Ok(_) => panic!("expected Authentication, got Ok"),
    }
}

/// Every rendering of `error` a caller might log.
fn shown(error: &TaskError) -> String {
    format!("{error} / {error:?} / {}", error.message())
}

// --- authentication ---------------------------------------------------------------------

#[test]
fn requirepass_password_from_the_url_authenticates() {
    let server = requirepass("right-password");
    let url = format!("redis://:right-password@127.0.0.1:{}", server.port());
    let mut store = open_with(Options::new(url)).unwrap();
    store.set("t1", DOC, None).unwrap();
    let mut con = plain_url(&format!(
        "redis://:right-password@127.0.0.1:{}",
        server.port()
    ));
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(DOC.as_bytes().to_vec())
    );
}

#[test]
fn percent_encoded_password_from_the_url_authenticates() {
    let server = requirepass("p@ss w:rd/%");
    let url = format!("redis://:p%40ss%20w%3Ard%2F%25@127.0.0.1:{}", server.port());
    let mut store = open_with(Options::new(url.as_str())).unwrap();
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn acl_user_and_password_from_the_url_authenticate() {
    let server = server();
    let mut con = plain(&server);
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "alice", "on", ">alice-pw", "~*", "+@all"])
        .query(&mut con)
        .unwrap();
    let url = format!("redis://alice:alice-pw@127.0.0.1:{}", server.port());
    let mut store = open_with(Options::new(url.as_str())).unwrap();
    store.set("t1", DOC, None).unwrap();
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(DOC.as_bytes().to_vec())
    );
    let whoami: Vec<String> = redis::cmd("CLIENT")
        .arg("LIST")
        .query::<String>(&mut con)
        .unwrap()
        .lines()
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("user="))
                .map(str::to_owned)
        })
        .collect();
    assert!(whoami.contains(&"alice".to_owned()), "{whoami:?}");
}

#[test]
fn wrong_password_is_an_authentication_error_at_open() {
    let server = requirepass("right-password");
    let url = format!("redis://:wrong-password@127.0.0.1:{}", server.port());
    let message = assert_authentication(open_with(Options::new(url)));
    assert!(!message.contains("wrong-password"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", server.port())),
        "{message}"
    );
}

#[test]
fn wrong_acl_password_or_disabled_user_is_an_authentication_error() {
    let server = server();
    let mut con = plain(&server);
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "alice", "on", ">alice-pw", "~*", "+@all"])
        .query(&mut con)
        .unwrap();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "bob", "off", ">bob-pw", "~*", "+@all"])
        .query(&mut con)
        .unwrap();
    for url in [
        format!("redis://alice:not-alice-pw@127.0.0.1:{}", server.port()),
        format!("redis://nobody:alice-pw@127.0.0.1:{}", server.port()),
        format!("redis://bob:bob-pw@127.0.0.1:{}", server.port()),
    ] {
        let message = assert_authentication(open_with(Options::new(url.as_str())));
        assert!(!message.contains("-pw"), "{url}: {message}");
    }
}

#[test]
fn missing_password_is_an_authentication_error_at_open() {
    let server = requirepass("right-password");
    // `open` checks the connection (PING), so a missing password fails there, not later.
    let message = assert_authentication(open_with(Options::new(server.url())));
    assert!(message.contains("password"), "{message}");
}

#[test]
fn reconnect_authenticates_again() {
    // The handshake (AUTH) is repeated on every new connection.
    let server = requirepass("right-password");
    let url = format!("redis://:right-password@127.0.0.1:{}", server.port());
    let mut store = open_with(Options::new(url)).unwrap();
    store.set("t1", DOC, None).unwrap();
    let mut con = plain_url(&format!(
        "redis://:right-password@127.0.0.1:{}",
        server.port()
    ));
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 1);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

// --- secrets ----------------------------------------------------------------------------

#[test]
fn password_never_appears_in_error_messages() {
    let server = requirepass("right-password");
    let port = closed_port();
    let urls = [
        // Unreachable.
        format!("redis://:{SECRET}@127.0.0.1:{port}"),
        format!("redis://someone:{SECRET}@127.0.0.1:{port}"),
        // Malformed.
        format!("redis://:{SECRET}@127.0.0.1:notaport"),
        format!("redis://user:{SECRET}@127.0.0.1:{}/x", server.port()),
        format!("http://user:{SECRET}@127.0.0.1:{}", server.port()),
        format!("redis://:{SECRET}@127.0.0.1:{}?db=1", server.port()),
        format!("redis://:{SECRET}%zz@127.0.0.1:{}", server.port()),
        // Rejected by the server.
        format!("redis://:{SECRET}@127.0.0.1:{}", server.port()),
        format!("redis://someone:{SECRET}@127.0.0.1:{}", server.port()),
        // Percent-encoded: neither the encoded nor the decoded form may show.
        format!("redis://:{SECRET}%21@127.0.0.1:{}", server.port()),
    ];
    for url in urls {
        match open_with(Options::new(url.as_str())) {
            Err(e) => {
                let shown = shown(&e);
                assert!(!shown.contains(SECRET), "{url}: {shown}");
            }
            Ok(_) => panic!("{url}: opened a store"),
        }
    }
}

#[test]
fn password_never_appears_in_timeout_protocol_or_server_errors() {
    let server = requirepass(SECRET);
    let proxy = FaultProxy::start(server.addr());
    let url = format!("redis://:{SECRET}@{}", proxy.addr());
    let mut store = open_with(Options {
        timeout_ms: Some(300),
        ..Options::new(url.as_str())
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();

    let mut errors = Vec::new();
    proxy.arm("GET", Fault::Hang, 1);
    errors.push(store.get("t1").unwrap_err());
    proxy.arm("GET", Fault::Reply(b"?nonsense\r\n".to_vec()), 1);
    errors.push(store.get("t1").unwrap_err());
    proxy.arm("GET", Fault::Reply(b"-ERR out of luck\r\n".to_vec()), 1);
    errors.push(store.get("t1").unwrap_err());
    proxy.arm("GET", Fault::ReplyThenReset(b"$3\r\n".to_vec()), 2);
    errors.push(store.get("t1").unwrap_err());
    // A server that echoes the password back: the host scrubs what the component passes on.
    proxy.arm(
        "AUTH",
        Fault::Reply(format!("-WRONGPASS {SECRET} is not it\r\n").into_bytes()),
        1,
    );
    proxy.arm("GET", Fault::Close, 1);
    errors.push(store.get("t1").unwrap_err());
    proxy.arm(
        "GET",
        Fault::Reply(format!("-ERR unknown key {SECRET}\r\n").into_bytes()),
        1,
    );
    errors.push(store.get("t1").unwrap_err());

    assert_eq!(errors.len(), 6);
    for error in &errors {
        let shown = shown(error);
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert_eq!(errors[0].kind(), ErrorKind::Timeout, "{:?}", errors[0]);
    assert_eq!(errors[1].kind(), ErrorKind::Protocol, "{:?}", errors[1]);
    assert_eq!(errors[2].kind(), ErrorKind::Server, "{:?}", errors[2]);
    assert_eq!(errors[3].kind(), ErrorKind::Connection, "{:?}", errors[3]);
    assert_eq!(
        errors[4].kind(),
        ErrorKind::Authentication,
        "{:?}",
        errors[4]
    );
    assert_eq!(errors[5].kind(), ErrorKind::Server, "{:?}", errors[5]);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn password_never_appears_in_debug_output_or_trap_reports() {
    let server = requirepass(SECRET);
    let url = format!("redis://user:{SECRET}@127.0.0.1:{}/0", server.port());
    let mut con = plain_url(&format!("redis://:{SECRET}@127.0.0.1:{}", server.port()));
    let () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "user",
            "on",
            &format!(">{SECRET}"),
            "~*",
            "+@all",
        ])
        .query(&mut con)
        .unwrap();

    let options = Options::new(url.as_str());
    let options_debug = format!("{options:?}");
    assert!(!options_debug.contains(SECRET), "{options_debug}");

    let runtime = Runtime::builder()
        .memory_limit(4 * 1024 * 1024)
        .build()
        .unwrap();
    let mut store = taskstore_host::TaskStore::open(&runtime, options).unwrap();
    let store_debug = format!("{store:?} {runtime:?}");
    assert!(!store_debug.contains(SECRET), "{store_debug}");

    // A trap report quotes the component's last output line; it holds no secret either.
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(6 * 1024 * 1024));
    let trapped = store.set("big", &big, None).unwrap_err();
    assert_eq!(trapped.kind(), ErrorKind::Host, "{trapped:?}");
    assert!(!shown(&trapped).contains(SECRET), "{}", shown(&trapped));
}

// --- least privilege --------------------------------------------------------------------

/// Counts connections to a loopback port nobody should use, until dropped.
struct Tripwire {
    listener: TcpListener,
}

impl Tripwire {
    fn new() -> Tripwire {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        Tripwire { listener }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().unwrap().port()
    }

    fn touched(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn component_connects_to_the_configured_redis_and_nowhere_else() {
    let tripwire = Tripwire::new();
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes"])
        .start()
        .unwrap();
    // A host name: the component resolves it itself, and may still only reach this port.
    let url = format!("redis://localhost:{}", server.port());
    let mut store = open_with(Options::new(url)).unwrap();

    // Every operation, a reconnect after a restart, and a store reopened after a trap.
    store.set("t1", DOC, None).unwrap();
    store.get("t1").unwrap();
    store.exists("t1").unwrap();
    store.ttl("t1").unwrap();
    store.expire("t1", 100).unwrap();
    store.create("t2", DOC, None).unwrap();
    store
        .update("t1", r#"{"progress": 1}"#, &UpdateOptions::default())
        .unwrap();
    store.list(&ListOptions::default()).unwrap();
    store.get_many(&["t1".to_owned(), "t2".to_owned()]).unwrap();
    server.restart().unwrap();
    store.delete_many(&["t1".to_owned()]).unwrap();
    store.delete("t2").unwrap();
    store.close();

    assert!(
        !tripwire.touched(),
        "port {} saw a connection",
        tripwire.port()
    );
    // Positive control: the same check does notice a connection.
    let _probe = std::net::TcpStream::connect_timeout(
        &tripwire.listener.local_addr().unwrap(),
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(1), || tripwire.touched()));
}

#[test]
fn password_changed_under_an_open_store_is_an_authentication_error_on_reconnect() {
    let server = requirepass("old-password");
    let url = format!("redis://:old-password@127.0.0.1:{}", server.port());
    let mut store = open_with(Options::new(url)).unwrap();
    store.set("t1", DOC, None).unwrap();

    let mut con = plain_url(&format!(
        "redis://:old-password@127.0.0.1:{}",
        server.port()
    ));
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "new-password"])
        .query(&mut con)
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query(&mut con)
        .unwrap();

    let message = assert_authentication(store.get("t1"));
    assert!(!message.contains("old-password"), "{message}");
}

// --- a server that echoes the password, on every path that carries its text -------------

/// Passwords of every length the redactor must handle, 1, 2, 3 and 16 characters, made of
/// characters that occur in no message template, address or document here: any of them
/// left in a message is the password leaking.
const ECHOED_PASSWORDS: [&str; 4] = ["§", "§¤", "§¤¶", "§¤¶µ¦¬°±²³·¸¹º¼½"];

/// `password` percent-encoded for a URL's userinfo (UTF-8 bytes as `%XX`).
fn percent_encoded(password: &str) -> String {
    password.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A Redis error reply that quotes `password`, as a server (or a proxy) might.
fn echoing(password: &str) -> Vec<u8> {
    format!("-ERR echoed {password} back\r\n").into_bytes()
}

/// `error` is a `kind` error that passes on the server's echoing text, password redacted.
#[track_caller]
fn assert_scrubbed(what: &str, password: &str, error: &TaskError, kind: ErrorKind) {
    let shown = shown(error);
    assert_eq!(error.kind(), kind, "{what}: {shown}");
    for c in password.chars() {
        assert!(
            !shown.contains(c),
            "{what}: {c:?} of the password in {shown}"
        );
    }
    // The server's text did come through (so the check above looked at it), scrubbed.
    assert!(
        error.message().contains("echoed *** back"),
        "{what}: {shown}"
    );
}

/// A server requiring `password`, a fault proxy in front of it, and a store opened through
/// the proxy with the password in its URL.
fn echoing_setup(password: &str) -> (RedisServer, FaultProxy, taskstore_host::TaskStore) {
    let server = requirepass(password);
    let proxy = FaultProxy::start(server.addr());
    let url = format!("redis://:{}@{}", percent_encoded(password), proxy.addr());
    let store = open_with(Options::new(url)).expect("the store opens with the password");
    (server, proxy, store)
}

#[test]
fn single_operations_scrub_a_password_the_server_echoes() {
    for password in ECHOED_PASSWORDS {
        let (_server, proxy, mut store) = echoing_setup(password);
        store.set("t1", DOC, None).unwrap();
        let echo = echoing(password);
        let mut errors = Vec::new();
        proxy.arm("GET", Fault::Reply(echo.clone()), 1);
        errors.push(("get", store.get("t1").unwrap_err()));
        proxy.arm("SETEX", Fault::Reply(echo.clone()), 1);
        errors.push(("set", store.set("t1", DOC, None).unwrap_err()));
        proxy.arm("SET", Fault::Reply(echo.clone()), 1);
        errors.push(("create", store.create("t2", DOC, None).unwrap_err()));
        // `update` pipelines WATCH with its GET: WATCH succeeds, the GET is refused.
        let mut watched = b"+OK\r\n".to_vec();
        watched.extend_from_slice(&echo);
        proxy.arm("GET", Fault::Reply(watched), 1);
        errors.push((
            "update",
            store
                .update("t1", r#"{"progress": 1}"#, &UpdateOptions::default())
                .unwrap_err(),
        ));
        // ... or the GET succeeds and Redis refuses the SET queued in MULTI/SET/EXEC.
        let mut queued = b"+OK\r\n".to_vec();
        queued.extend_from_slice(&echo);
        queued.extend_from_slice(b"-EXECABORT Transaction discarded\r\n");
        proxy.arm("MULTI", Fault::Reply(queued), 1);
        errors.push((
            "update's SET",
            store
                .update("t1", r#"{"progress": 1}"#, &UpdateOptions::default())
                .unwrap_err(),
        ));
        proxy.arm("DEL", Fault::Reply(echo.clone()), 1);
        errors.push(("delete", store.delete("t1").unwrap_err()));
        proxy.arm("TTL", Fault::Reply(echo.clone()), 1);
        errors.push(("ttl", store.ttl("t1").unwrap_err()));
        proxy.arm("EXPIRE", Fault::Reply(echo.clone()), 1);
        errors.push(("expire", store.expire("t1", 100).unwrap_err()));
        proxy.arm("EXISTS", Fault::Reply(echo.clone()), 1);
        errors.push(("exists", store.exists("t1").unwrap_err()));
        proxy.arm("SCAN", Fault::Reply(echo.clone()), 1);
        errors.push(("list", store.list(&ListOptions::default()).unwrap_err()));
        proxy.arm("MGET", Fault::Reply(echo.clone()), 1);
        errors.push(("get-many", store.get_many(&["t1".to_owned()]).unwrap_err()));
        for (what, error) in &errors {
            assert_scrubbed(what, password, error, ErrorKind::Server);
        }
        // Nothing was changed by any refused call: the task is as first written.
        assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC), "{password}");
    }
}

#[test]
fn batch_per_item_errors_scrub_a_password_the_server_echoes() {
    let tasks: Vec<taskstore_host::Task> = ["t1", "t2", "t3"]
        .into_iter()
        .map(|id| taskstore_host::Task {
            id: id.to_owned(),
            document: DOC.to_owned(),
        })
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    for password in ECHOED_PASSWORDS {
        let (_server, proxy, mut store) = echoing_setup(password);
        // `set-many` pipelines one SETEX per task: the second is refused, the others
        // succeed, so the refusal is a per-item error of an otherwise good batch.
        let mut replies = b"+OK\r\n".to_vec();
        replies.extend_from_slice(&echoing(password));
        replies.extend_from_slice(b"+OK\r\n");
        proxy.arm("SETEX", Fault::Reply(replies), 1);
        let results = store.set_many(&tasks, None).expect("the batch ran");
        assert_eq!(results.len(), 3, "{password}");
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let per_item = results[1].as_ref().unwrap_err();
        assert_scrubbed("set-many item", password, per_item, ErrorKind::Server);

        // `delete-many` pipelines one DEL per id; one refused fails the call.
        let mut replies = b":1\r\n".to_vec();
        replies.extend_from_slice(&echoing(password));
        replies.extend_from_slice(b":0\r\n");
        proxy.arm("DEL", Fault::Reply(replies), 1);
        let error = store.delete_many(&ids).unwrap_err();
        assert_scrubbed("delete-many", password, &error, ErrorKind::Server);

        // `get-many` is one MGET: refused as a whole.
        proxy.arm("MGET", Fault::Reply(echoing(password)), 1);
        let error = store.get_many(&ids).unwrap_err();
        assert_scrubbed("get-many", password, &error, ErrorKind::Server);
    }
}

#[test]
fn open_and_reconnect_scrub_a_password_the_server_echoes_in_auth_errors() {
    for password in ECHOED_PASSWORDS {
        let server = requirepass(password);
        let proxy = FaultProxy::start(server.addr());
        let url = format!("redis://:{}@{}", percent_encoded(password), proxy.addr());
        let wrongpass = format!("-WRONGPASS echoed {password} back\r\n").into_bytes();
        // At open.
        proxy.arm("AUTH", Fault::Reply(wrongpass.clone()), 1);
        let error = open_with(Options::new(url.as_str())).unwrap_err();
        assert_scrubbed("open", password, &error, ErrorKind::Authentication);
        // On the reconnect after a dropped connection.
        let mut store = open_with(Options::new(url.as_str())).unwrap();
        store.set("t1", DOC, None).unwrap();
        proxy.arm("AUTH", Fault::Reply(wrongpass), 1);
        proxy.arm("GET", Fault::Close, 1);
        let error = store.get("t1").unwrap_err();
        assert_scrubbed("reconnect", password, &error, ErrorKind::Authentication);
        assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    }
}
