//! Redis's passing states produced by real servers rather than faked replies: `READONLY`
//! from a real replica, `LOADING` from a server really loading its dataset.
//!
//! Each must reach the caller as a `server` error carrying Redis's code, retryable, with
//! nothing written; and the store must work again by itself once the state has passed.

use std::time::Duration;

use crate::support::*;
use taskstore_host::{ErrorKind, ListOptions, RedisErrorCode, Task, TaskError, UpdateOptions};

const DOC: &str = r#"{"status": "pending", "progress": 0}"#;
/// Keys `DEBUG POPULATE` adds so that loading takes a while.
const FILLER_KEYS: u64 = 4000;
/// `key-load-delay`: microseconds Redis sleeps per key loaded, so the load of
/// [`FILLER_KEYS`] lasts about 4 s however fast the machine is, with a small dataset.
const KEY_LOAD_DELAY_MICROS: u64 = 1000;

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

/// `error` is Redis's `code` as a `server` error, retryable, nothing applied.
#[track_caller]
fn assert_passing_state<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, TaskError>,
    code: RedisErrorCode,
) {
    let error = result.expect_err(what);
    assert_eq!(error.kind(), ErrorKind::Server, "{what}: {error:?}");
    assert_eq!(error.redis_code(), Some(code), "{what}: {error:?}");
    assert!(error.is_retryable(), "{what}: {error:?}");
    assert!(!error.may_have_applied(), "{what}: {error:?}");
}

/// A replica of `primary`, once its link to the primary is up and it holds `key`.
fn replica_of(primary: &RedisServer, key: &str) -> RedisServer {
    let replica = RedisServer::builder()
        .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
        .start()
        .expect("the replica starts");
    let mut con = plain(&replica);
    let synced = eventually(Duration::from_secs(20), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut con)
            .expect("INFO replication");
        info.contains("master_link_status:up") && plain_get(&mut con, key).is_some()
    });
    assert!(synced, "the replica did not sync:\n{}", replica.log_tail());
    replica
}

#[test]
fn writes_to_a_real_replica_are_readonly_retryable_server_errors() {
    let primary = server();
    open(&primary).set("t1", DOC, None).unwrap();
    let replica = replica_of(&primary, &key("t1"));
    let mut store = open(&replica);

    // Reads are served by the replica.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert!(store.exists("t1").unwrap());
    assert_eq!(store.list(&ListOptions::default()).unwrap().tasks.len(), 1);

    // Every write is refused with Redis's own READONLY.
    let code = RedisErrorCode::ReadOnly;
    assert_passing_state("set", store.set("t2", DOC, None), code);
    assert_passing_state("create", store.create("t2", DOC, None), code);
    assert_passing_state(
        "update",
        store.update("t1", r#"{"progress": 1}"#, &UpdateOptions::default()),
        code,
    );
    assert_passing_state("delete", store.delete("t1"), code);
    assert_passing_state("expire", store.expire("t1", 10), code);
    assert_passing_state("delete-many", store.delete_many(&["t1".to_owned()]), code);
    let tasks = [Task {
        id: "t3".to_owned(),
        document: DOC.to_owned(),
    }];
    let per_item = store.set_many(&tasks, None).expect("the batch itself ran");
    assert_passing_state("set-many item", per_item.into_iter().next().unwrap(), code);

    // Nothing changed, on the primary or the replica.
    let mut on_primary = plain(&primary);
    assert_eq!(dbsize(&mut on_primary), 1);
    assert_eq!(
        plain_get(&mut on_primary, &key("t1")),
        Some(DOC.as_bytes().to_vec())
    );
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));

    // The state passes when the replica is promoted: the same store writes without reopening.
    let () = redis::cmd("REPLICAOF")
        .arg(&["NO", "ONE"])
        .query(&mut plain(&replica))
        .unwrap();
    store
        .set("t2", DOC, None)
        .expect("a promoted replica takes writes");
    assert_eq!(store.get("t2").unwrap().as_deref(), Some(DOC));
}

/// `loading:1` in the server's `INFO persistence`.
fn loading(con: &mut redis::Connection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(con)
        .expect("INFO persistence (answered while loading)");
    info.lines().any(|line| line.trim() == "loading:1")
}

#[test]
fn requests_while_a_real_server_loads_its_dataset_are_loading_retryable_server_errors() {
    let server = RedisServer::builder()
        .args(["--enable-debug-command", "local"])
        .start()
        .unwrap();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    server
        .prepare_slow_reload(FILLER_KEYS, Duration::from_micros(KEY_LOAD_DELAY_MICROS))
        .unwrap();

    std::thread::scope(|scope| {
        // `DEBUG RELOAD` saves the dataset to an RDB file and loads it back, as a restart
        // would, answering other clients with LOADING meanwhile; it returns once loaded.
        let reload = scope.spawn(|| {
            let client = redis::Client::open(server.url()).unwrap();
            let mut con = client.get_connection().unwrap();
            con.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            redis::cmd("DEBUG").arg("RELOAD").query::<()>(&mut con)
        });
        let mut watcher = plain(&server);
        assert!(
            eventually(Duration::from_secs(10), || loading(&mut watcher)),
            "the server never started loading"
        );

        let code = RedisErrorCode::Loading;
        assert_passing_state("get", store.get("t1"), code);
        assert_passing_state("set", store.set("t2", DOC, None), code);
        assert_passing_state(
            "update",
            store.update("t1", r#"{"progress": 1}"#, &UpdateOptions::default()),
            code,
        );
        assert_passing_state("exists", store.exists("t1"), code);
        assert_passing_state("get-many", store.get_many(&["t1".to_owned()]), code);
        assert_passing_state("list", store.list(&ListOptions::default()), code);
        // Every answer above came while the load went on: it is still going.
        assert!(
            loading(&mut watcher),
            "the load ended before the requests did; raise FILLER_KEYS"
        );

        reload.join().unwrap().expect("DEBUG RELOAD completes");
    });

    // Loaded: the same store serves again, and nothing was written meanwhile.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert_eq!(store.get("t2").unwrap(), None);
    assert_eq!(dbsize(&mut con) as u64, FILLER_KEYS + 1);
}
