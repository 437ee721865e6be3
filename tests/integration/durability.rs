//! What the store promises across a Redis restart or crash: what it acknowledged is what a
//! restarted host reads back (documents, deletions and TTLs exactly as the store left them),
//! a store that lived through the outage says so and then reconnects by itself, and tasks
//! Redis lost read as absent, never as an error or a stale copy.
//!
//! The component acknowledges a write once Redis has; how much of that survives a crash is
//! Redis's persistence setting (AOF with `appendfsync always` keeps every acknowledged write,
//! a snapshot keeps what it holds, no persistence keeps nothing). Each test picks the setting
//! under which the project's side of the promise can be checked exactly.
//!
//! A `SIGKILL` of Redis kills the process, not the machine: what Redis wrote to its AOF is
//! still in the page cache, so these tests would pass with `appendfsync no` too. They show
//! that what the store acknowledged is what Redis had written, not that it reached the disk;
//! surviving a power loss is Redis's `appendfsync` guarantee (README, "Durability"). The
//! Redis here (7.0) has no `WAITAOF` to confirm an fsync.

use std::collections::HashMap;

use crate::support::*;
use taskstore_host::{
    ErrorKind, ListOptions, Options, Runtime, Task, TaskError, TaskStore, TimeToLive, TtlPolicy,
    UpdateOptions, COMPONENT,
};

const TTL: u64 = 1_000;
/// Slack for the seconds a test takes between writing a TTL and reading it back.
const SLACK: u64 = 30;

fn doc(i: usize) -> String {
    format!(r#"{{"id": "t{i}", "status": "pending", "n": {i}}}"#)
}

fn aof_always() -> RedisServer {
    RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .start()
        .unwrap()
}

/// A store of a brand-new runtime (a new engine, new instances, new connections): what a
/// restarted host process would have.
fn open_as_a_restarted_host(server: &RedisServer, options: Options) -> TaskStore {
    let runtime = Runtime::builder()
        .component(COMPONENT)
        .build()
        .expect("a second runtime compiles");
    TaskStore::open(&runtime, options)
        .unwrap_or_else(|e| panic!("a store opens on the restarted {}: {e}", server.url()))
}

/// Asserts that `id` expires in `expected` seconds, less what the test has taken since.
#[track_caller]
fn assert_expires_in(store: &mut TaskStore, id: &str, expected: u64) {
    match store.ttl(id).unwrap() {
        // Redis keeps absolute expiry times: the clock kept running across the restart.
        Some(TimeToLive::ExpiresIn(left)) => assert!(
            (expected - SLACK..=expected).contains(&left),
            "{id}: {left} s left, expected about {expected}"
        ),
        other => panic!("{id}: expected an expiry, got {other:?}"),
    }
}

/// Whether the store reported a failed connection. By its text, which names the kind the
/// same way whether `TaskError` is an enum or a kind and a message.
fn is_connection_failure(error: &TaskError) -> bool {
    error.kind() == ErrorKind::Connection
}

#[test]
fn every_write_the_store_acknowledged_survives_a_crash() {
    let mut server = aof_always();
    let mut store = open(&server);
    let mut expected: HashMap<String, Option<String>> = HashMap::new();
    for i in 0..10 {
        store.set(&format!("t{i}"), &doc(i), Some(TTL)).unwrap();
        expected.insert(format!("t{i}"), Some(doc(i)));
    }
    assert!(store.create("created", &doc(10), Some(TTL)).unwrap());
    expected.insert("created".into(), Some(doc(10)));
    // A refused create changes nothing, before or after the crash.
    assert!(!store.create("t0", &doc(99), Some(TTL)).unwrap());
    let options = UpdateOptions {
        expect_status: Some("pending".into()),
        ttl: TtlPolicy::Keep,
    };
    let updated = store
        .update("t1", r#"{"status": "running", "progress": 40}"#, &options)
        .unwrap()
        .expect("t1 exists");
    expected.insert("t1".into(), Some(updated));
    assert!(store.delete("t2").unwrap());
    expected.insert("t2".into(), None);
    assert!(store.expire("t3", 2 * TTL).unwrap());

    // SIGKILL right after the last acknowledgement: Redis gets no chance to write anything
    // more (a clean shutdown would rewrite or flush its files).
    server.kill().unwrap();
    server.restart().unwrap();

    let mut restarted = open_as_a_restarted_host(&server, Options::new(server.url()));
    for (id, document) in &expected {
        assert_eq!(&restarted.get(id).unwrap(), document, "{id}");
        assert_eq!(restarted.exists(id).unwrap(), document.is_some(), "{id}");
    }
    assert_expires_in(&mut restarted, "t1", TTL);
    assert_expires_in(&mut restarted, "t3", 2 * TTL);
    assert_expires_in(&mut restarted, "created", TTL);
}

#[test]
fn each_batch_item_reported_written_or_deleted_stays_so_through_a_crash() {
    let mut server = aof_always();
    let mut store = open(&server);
    let tasks: Vec<Task> = (0..50)
        .map(|i| Task {
            id: format!("t{i}"),
            document: doc(i),
        })
        .collect();
    let written = store.set_many(&tasks, Some(TTL)).unwrap();
    assert_eq!(written.len(), tasks.len());
    assert!(written.iter().all(Result::is_ok), "{written:?}");
    let doomed: Vec<String> = (0..50).step_by(5).map(|i| format!("t{i}")).collect();
    let deleted = store.delete_many(&doomed).unwrap();
    assert_eq!(deleted, vec![true; doomed.len()]);

    server.kill().unwrap();
    server.restart().unwrap();

    let mut restarted = open_as_a_restarted_host(&server, Options::new(server.url()));
    let ids: Vec<String> = tasks.iter().map(|task| task.id.clone()).collect();
    let read = restarted.get_many(&ids).unwrap();
    for (task, document) in tasks.iter().zip(read) {
        let expected = (!doomed.contains(&task.id)).then(|| task.document.clone());
        assert_eq!(document, expected, "{}", task.id);
    }
    // Deleted means deleted: no resurrection from the log.
    assert_eq!(
        restarted.delete_many(&doomed).unwrap(),
        vec![false; doomed.len()]
    );
}

#[test]
fn ttls_survive_a_restart_as_the_store_set_them() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .start()
        .unwrap();
    let configured = Options {
        default_ttl_seconds: Some(3 * TTL),
        ..Options::new(server.url())
    };
    let mut store = open(&server);
    store.set("default", &doc(0), None).unwrap();
    store.set("explicit", &doc(1), Some(TTL)).unwrap();
    store.set("kept", &doc(2), Some(TTL)).unwrap();
    let keep = UpdateOptions::default();
    store.update("kept", r#"{"progress": 1}"#, &keep).unwrap();
    store.set("renewed", &doc(3), Some(TTL)).unwrap();
    let renew = UpdateOptions {
        ttl: TtlPolicy::Set(4 * TTL),
        ..UpdateOptions::default()
    };
    store
        .update("renewed", r#"{"progress": 2}"#, &renew)
        .unwrap();
    store.set("expired-later", &doc(4), Some(TTL)).unwrap();
    store.expire("expired-later", 5 * TTL).unwrap();
    let mut configured_store = TaskStore::open(runtime(), configured.clone()).unwrap();
    configured_store.set("configured", &doc(5), None).unwrap();
    // Written by another client without expiry: the store must not give it one.
    plain_set(
        &mut plain(&server),
        &format!("{DEFAULT_PREFIX}forever"),
        r#"{"status": "kept"}"#,
    );

    // SIGTERM: Redis flushes and fsyncs the AOF before it exits.
    server.stop().unwrap();
    server.restart().unwrap();

    let mut restarted = open_as_a_restarted_host(&server, configured);
    assert_expires_in(&mut restarted, "default", DEFAULT_TTL);
    assert_expires_in(&mut restarted, "explicit", TTL);
    assert_expires_in(&mut restarted, "kept", TTL);
    assert_expires_in(&mut restarted, "renewed", 4 * TTL);
    assert_expires_in(&mut restarted, "expired-later", 5 * TTL);
    assert_expires_in(&mut restarted, "configured", 3 * TTL);
    assert_eq!(
        restarted.ttl("forever").unwrap(),
        Some(TimeToLive::Persistent)
    );
}

#[test]
fn a_store_reports_the_outage_then_reconnects_by_itself() {
    let mut server = aof_always();
    let mut store = open(&server);
    store.set("t1", &doc(1), Some(TTL)).unwrap();
    server.kill().unwrap();

    // While Redis is down every call fails, and says it is the connection.
    let error = store.get("t1").unwrap_err();
    assert!(is_connection_failure(&error), "{error}");
    let error = store.set("t2", &doc(2), Some(TTL)).unwrap_err();
    assert!(is_connection_failure(&error), "{error}");

    server.restart().unwrap();
    // Same store, same instance: its dead connection is replaced on the next call.
    assert_eq!(store.get("t1").unwrap(), Some(doc(1)));
    // The write that failed was not applied behind the caller's back.
    assert_eq!(store.get("t2").unwrap(), None);
    store.set("t2", &doc(2), Some(TTL)).unwrap();
    assert!(store.exists("t2").unwrap());
}

#[test]
fn tasks_a_crash_lost_read_as_absent_and_can_be_created_again() {
    let mut server = RedisServer::builder()
        .args(["--save", "3600 1"])
        .start()
        .unwrap();
    let mut store = open(&server);
    store.set("t0", &doc(0), Some(TTL)).unwrap();
    // A clean shutdown with save points configured writes a snapshot holding t0.
    server.stop().unwrap();
    server.restart().unwrap();
    assert_eq!(store.get("t0").unwrap(), Some(doc(0)));

    // Written after that snapshot, then a crash: Redis comes back without it.
    store.set("late", &doc(1), Some(TTL)).unwrap();
    server.kill().unwrap();
    server.restart().unwrap();

    // The store that wrote it reconnects and reports the loss as absence, on every path.
    assert_eq!(store.get("late").unwrap(), None);
    assert!(!store.exists("late").unwrap());
    assert_eq!(store.ttl("late").unwrap(), None);
    assert_eq!(
        store
            .update(
                "late",
                r#"{"status": "running"}"#,
                &UpdateOptions::default()
            )
            .unwrap(),
        None
    );
    assert_eq!(store.get("t0").unwrap(), Some(doc(0)));
    assert_expires_in(&mut store, "t0", TTL);
    // A worker can start the lost task over.
    assert!(store.create("late", &doc(1), Some(TTL)).unwrap());
    assert_eq!(store.get("late").unwrap(), Some(doc(1)));
}

#[test]
fn after_a_restart_that_lost_everything_the_store_lists_nothing_and_writes_again() {
    let mut server = server();
    let mut store = open(&server);
    for i in 0..20 {
        store.set(&format!("t{i}"), &doc(i), Some(TTL)).unwrap();
    }
    server.restart().unwrap();

    let page = store.list(&ListOptions::default()).unwrap();
    assert!(page.tasks.is_empty(), "{:?}", page.tasks);
    assert_eq!(page.cursor, None);
    assert_eq!(
        store.get_many(&["t0".into(), "t19".into()]).unwrap(),
        [None, None]
    );
    store.set("t0", &doc(0), Some(TTL)).unwrap();
    let page = store.list(&ListOptions::default()).unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert_eq!(page.tasks[0].document, doc(0));
}
