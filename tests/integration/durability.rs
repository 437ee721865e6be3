//! What survives a Redis restart or crash, by Redis persistence setting, for tasks written
//! through the component and read back by a new host runtime (a new engine, new instances,
//! new connections: what a restarted host process would have).
//!
//! The component acknowledges a write once Redis has; from then on, durability is Redis's.
//! These tests pin down what each setting promises so the README can state it.

use std::time::Duration;

use crate::support::*;
use taskstore_host::{Options, Runtime, TaskStore, TimeToLive, COMPONENT};

const TTL: u64 = 1_000;
const TASKS: usize = 50;

fn doc(i: usize) -> String {
    format!(r#"{{"id": "t{i}", "status": "pending", "n": {i}}}"#)
}

/// Writes [`TASKS`] tasks with a [`TTL`] and one without expiry (by plain `SET`, as other
/// clients may write).
fn write_tasks(server: &RedisServer) {
    let mut store = open(server);
    for i in 0..TASKS {
        store.set(&format!("t{i}"), &doc(i), Some(TTL)).unwrap();
    }
    plain_set(
        &mut plain(server),
        &format!("{DEFAULT_PREFIX}forever"),
        r#"{"status": "kept"}"#,
    );
}

/// Reads the tasks back through a store of a brand-new runtime, checking documents and
/// TTLs.
fn assert_tasks_survived(server: &RedisServer) {
    let runtime = Runtime::builder()
        .component(COMPONENT)
        .build()
        .expect("a second runtime compiles");
    let mut store = TaskStore::open(&runtime, Options::new(server.url())).unwrap();
    for i in 0..TASKS {
        let id = format!("t{i}");
        assert_eq!(store.get(&id).unwrap(), Some(doc(i)), "{id}");
        match store.ttl(&id).unwrap() {
            // Redis keeps absolute expiry times: the clock kept running across the restart.
            Some(TimeToLive::ExpiresIn(left)) => {
                assert!((TTL - 30..=TTL).contains(&left), "{id}: {left} s left")
            }
            other => panic!("{id}: expected an expiry, got {other:?}"),
        }
    }
    assert_eq!(store.ttl("forever").unwrap(), Some(TimeToLive::Persistent));
}

#[test]
fn aof_with_fsync_always_keeps_every_acknowledged_write_through_a_crash() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .start()
        .unwrap();
    write_tasks(&server);
    // SIGKILL right after the last acknowledgement: no chance to flush anything more.
    server.kill().unwrap();
    server.restart().unwrap();
    assert_tasks_survived(&server);
}

#[test]
fn aof_with_fsync_everysec_keeps_writes_older_than_a_second_through_a_crash() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .start()
        .unwrap();
    write_tasks(&server);
    // everysec may lose the last second of writes in a crash; wait it out (and then some).
    std::thread::sleep(Duration::from_millis(2_500));
    server.kill().unwrap();
    server.restart().unwrap();
    assert_tasks_survived(&server);
}

#[test]
fn aof_keeps_everything_through_a_clean_shutdown() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .start()
        .unwrap();
    write_tasks(&server);
    // SIGTERM: Redis flushes and fsyncs the AOF before it exits.
    server.stop().unwrap();
    server.restart().unwrap();
    assert_tasks_survived(&server);
}

#[test]
fn rdb_snapshots_keep_what_the_last_snapshot_holds() {
    let mut server = RedisServer::builder()
        .args(["--save", "3600 1"])
        .start()
        .unwrap();
    write_tasks(&server);
    // A clean shutdown with save points configured writes a final snapshot.
    server.stop().unwrap();
    server.restart().unwrap();
    assert_tasks_survived(&server);

    // A crash keeps only the last snapshot: what came after it is gone.
    open(&server).set("late", &doc(0), None).unwrap();
    server.kill().unwrap();
    server.restart().unwrap();
    let mut store = open(&server);
    assert_eq!(store.get("late").unwrap(), None);
    assert!(store.exists("t0").unwrap());
}

#[test]
fn without_persistence_a_restart_loses_every_task() {
    let mut server = server();
    write_tasks(&server);
    server.restart().unwrap();
    let mut store = open(&server);
    assert_eq!(store.get("t0").unwrap(), None);
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn store_opened_before_a_crash_keeps_working_after_recovery() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .start()
        .unwrap();
    let mut store = open(&server);
    store.set("t1", &doc(1), Some(TTL)).unwrap();
    server.kill().unwrap();
    server.restart().unwrap();
    // Same store, same instance: its dead connection is replaced on the next call.
    assert_eq!(store.get("t1").unwrap(), Some(doc(1)));
    store.set("t2", &doc(2), Some(TTL)).unwrap();
    assert!(store.exists("t2").unwrap());
}
