//! The task lifecycle through the component, against a private `redis-server` per test:
//! atomic updates under concurrency (component instances and plain Redis clients together),
//! status preconditions, TTL policies, document fidelity, create-if-absent, expire, listing
//! and batches. What the component wrote is checked with an independent plain Redis client;
//! round trips are counted by a proxy between the component and Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use taskstore_host::{
    ErrorKind, ListOptions, Options, Task, TaskError, TaskStore, TimeToLive, TtlPolicy,
    UpdateOptions,
};

/// Component instances updating one task at once.
const WORKERS: usize = 4;
/// Patches each worker (and the plain client) applies.
const PATCHES: usize = 25;
/// Attempts a plain client's `WATCH` loop, or a worker retrying a conflict, makes at most.
const MAX_ATTEMPTS: usize = 10_000;
/// Pages a test follows at most before it calls the listing endless.
const MAX_PAGES: usize = 1_000;

const RUNNING: &str = r#"{"id": "t1", "status": "running", "progress": 10}"#;
const COMPLETED: &str =
    "{\"id\":\"t1\",  \"status\":\"completed\",\n \"result\": \"caf\\u00e9\", \"progress\":100}";

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn expecting(status: &str) -> UpdateOptions {
    UpdateOptions {
        expect_status: Some(status.to_owned()),
        ..UpdateOptions::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[track_caller]
fn assert_invalid_input<T: std::fmt::Debug>(result: Result<T, TaskError>) {
    match result {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {}
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// Every task of a listing, following the cursors from the start to the end; checks that
/// no page is larger than the limit asked for.
fn list_all(store: &mut TaskStore, options: &ListOptions) -> Vec<Task> {
    let limit = options.limit.unwrap_or(100) as usize;
    let mut options = ListOptions {
        cursor: None,
        ..options.clone()
    };
    let mut tasks = Vec::new();
    for _ in 0..MAX_PAGES {
        let page = store.list(&options).expect("list");
        assert!(page.tasks.len() <= limit, "page of {}", page.tasks.len());
        tasks.extend(page.tasks);
        match page.cursor {
            None => return tasks,
            cursor => options.cursor = cursor,
        }
    }
    panic!("the listing did not end within {MAX_PAGES} pages");
}

/// The ids of `tasks`, checking that none appears twice.
fn unique_ids(tasks: &[Task]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for task in tasks {
        assert!(ids.insert(task.id.clone()), "{:?} listed twice", task.id);
    }
    ids
}

/// The `EXEC` of one plain `WATCH`/`GET`/`MULTI`/`SET … KEEPTTL`/`EXEC` attempt: `None`
/// when another client wrote the key in between (the transaction was discarded).
fn plain_rewrite(
    con: &mut redis::Connection,
    key: &str,
    rewrite: impl Fn(&str) -> String,
) -> Option<()> {
    let () = redis::cmd("WATCH").arg(key).query(con).expect("WATCH");
    let current: String = redis::cmd("GET").arg(key).query(con).expect("GET");
    let next = rewrite(&current);
    let () = redis::cmd("MULTI").query(con).expect("MULTI");
    let () = redis::cmd("SET")
        .arg(key)
        .arg(next)
        .arg("KEEPTTL")
        .query(con)
        .expect("SET queued");
    match redis::cmd("EXEC").query(con).expect("EXEC") {
        redis::Value::Nil => None,
        redis::Value::Array(_) => Some(()),
        other => panic!("EXEC answered {other:?}"),
    }
}

/// Applies `rewrite` with a plain client the way any Redis client would without this
/// component: an optimistic transaction, retried until it commits.
fn plain_update(con: &mut redis::Connection, key: &str, rewrite: impl Fn(&str) -> String) {
    for _ in 0..MAX_ATTEMPTS {
        if plain_rewrite(con, key, &rewrite).is_some() {
            return;
        }
    }
    panic!("the plain client's transaction never committed in {MAX_ATTEMPTS} attempts");
}

/// `{"a": 1}` plus `"name": true`, written textually so that nothing else changes.
fn with_member(document: &str, name: &str) -> String {
    let end = document.rfind('}').expect("a JSON object");
    format!("{}, \"{name}\": true}}", document[..end].trim_end())
}

// --- concurrent updates -------------------------------------------------------------

#[test]
fn concurrent_patches_from_instances_and_a_plain_client_are_all_kept() {
    let server = server();
    open(&server)
        .set(
            "shared",
            r#"{"id": "shared", "status": "running"}"#,
            Some(1000),
        )
        .unwrap();
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (url, start) = (server.url(), start.clone());
            thread::spawn(move || {
                let mut store = open_with(Options::new(url)).expect("worker opens a store");
                start.wait();
                for patch in 0..PATCHES {
                    let patch = format!(r#"{{"w{worker}_{patch}": true}}"#);
                    // No retry here: the component retries a contended update itself (up
                    // to 100 times), and five writers never exhaust that; a `contended`
                    // surfacing here means its own retry loop stopped working.
                    match store.update("shared", &patch, &UpdateOptions::default()) {
                        Ok(Some(_)) => {}
                        other => panic!("worker {worker}, {patch}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let plain_client = {
        let (url, start) = (server.url(), start.clone());
        thread::spawn(move || {
            let mut con = plain_url(&url);
            start.wait();
            for patch in 0..PATCHES {
                plain_update(&mut con, &key("shared"), |doc| {
                    with_member(doc, &format!("p_{patch}"))
                });
            }
        })
    };
    for worker in workers {
        worker.join().expect("worker thread");
    }
    plain_client.join().expect("plain client thread");

    let document = open(&server).get("shared").unwrap().expect("the task");
    let value: Value = serde_json::from_str(&document).expect("valid JSON");
    let members = value.as_object().expect("an object");
    let mut missing = Vec::new();
    for worker in 0..WORKERS {
        for patch in 0..PATCHES {
            let name = format!("w{worker}_{patch}");
            if members.get(&name) != Some(&Value::Bool(true)) {
                missing.push(name);
            }
        }
    }
    for patch in 0..PATCHES {
        if members.get(&format!("p_{patch}")) != Some(&Value::Bool(true)) {
            missing.push(format!("p_{patch}"));
        }
    }
    assert!(missing.is_empty(), "lost updates {missing:?} in {document}");
    assert_eq!(members.len(), 2 + WORKERS * PATCHES + PATCHES, "{document}");
    assert_eq!(members["status"], "running");
    let ttl = plain_ttl(&mut plain(&server), &key("shared"));
    assert!((900..=1000).contains(&ttl), "TTL {ttl}");
}

#[test]
fn expected_status_turns_read_then_update_into_exact_increments() {
    // The status is a version number: each increment reads it, then updates only if it is
    // still the one it read. A plain client increments too, with its own WATCH loop.
    let server = server();
    open(&server)
        .set("counter", r#"{"status": "0", "count": 0}"#, None)
        .unwrap();
    let start = Arc::new(Barrier::new(WORKERS + 1));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (url, start) = (server.url(), start.clone());
            thread::spawn(move || {
                let mut store = open_with(Options::new(url)).expect("worker opens a store");
                start.wait();
                let mut conflicts = 0;
                for _ in 0..PATCHES {
                    loop {
                        let document = store.get("counter").unwrap().expect("the counter");
                        let seen: Value = serde_json::from_str(&document).unwrap();
                        let version = seen["status"].as_str().unwrap().to_owned();
                        let next = version.parse::<u64>().unwrap() + 1;
                        let patch = format!(r#"{{"status": "{next}", "count": {next}}}"#);
                        match store.update("counter", &patch, &expecting(&version)) {
                            Ok(Some(_)) => break,
                            Err(error) if error.kind() == ErrorKind::Conflict => {
                                assert_ne!(
                                    error.current_document(),
                                    Some(document.as_str()),
                                    "conflict on an unchanged task"
                                );
                                conflicts += 1;
                                assert!(conflicts < MAX_ATTEMPTS, "worker {worker} starved");
                            }
                            other => panic!("worker {worker}: {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    let plain_client = {
        let (url, start) = (server.url(), start.clone());
        thread::spawn(move || {
            let mut con = plain_url(&url);
            start.wait();
            for _ in 0..PATCHES {
                plain_update(&mut con, &key("counter"), |doc| {
                    let mut value: Value = serde_json::from_str(doc).unwrap();
                    let next = value["status"].as_str().unwrap().parse::<u64>().unwrap() + 1;
                    value["status"] = Value::String(next.to_string());
                    value["count"] = Value::from(next);
                    value.to_string()
                });
            }
        })
    };
    for worker in workers {
        worker.join().expect("worker thread");
    }
    plain_client.join().expect("plain client thread");

    let document = open(&server).get("counter").unwrap().unwrap();
    let value: Value = serde_json::from_str(&document).unwrap();
    let total = (WORKERS + 1) * PATCHES;
    assert_eq!(value["status"], total.to_string(), "{document}");
    assert_eq!(value["count"], total, "{document}");
}

// --- preconditions ------------------------------------------------------------------

#[test]
fn update_expecting_running_on_a_completed_task_is_a_conflict_carrying_the_document() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", COMPLETED, Some(1000)).unwrap();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    match store.update("t1", r#"{"status": "failed"}"#, &expecting("running")) {
        Err(error) if error.kind() == ErrorKind::Conflict => {
            assert_eq!(error.current_document(), Some(COMPLETED))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(COMPLETED.as_bytes().to_vec())
    );
    let calls = command_delta(&before, &command_calls(&mut con));
    assert!(
        !calls.contains_key("set") && !calls.contains_key("exec"),
        "{calls:?}"
    );
    let ttl = plain_ttl(&mut con, &key("t1"));
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
}

#[test]
fn update_with_the_expected_status_applies_the_patch() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, None).unwrap();
    let updated = store
        .update(
            "t1",
            r#"{"status": "completed", "progress": 100}"#,
            &expecting("running"),
        )
        .unwrap();
    let expected = r#"{"id": "t1", "status": "completed", "progress": 100}"#;
    assert_eq!(updated.as_deref(), Some(expected));
    assert_eq!(
        plain_get(&mut plain(&server), &key("t1")),
        Some(expected.as_bytes().to_vec())
    );
}

#[test]
fn expected_status_fails_when_the_status_is_missing_or_not_a_string() {
    let server = server();
    let mut store = open(&server);
    for (id, document) in [
        ("none", r#"{"id": "none"}"#),
        ("number", r#"{"status": 3}"#),
        ("nested", r#"{"meta": {"status": "running"}}"#),
    ] {
        store.set(id, document, None).unwrap();
        match store.update(id, r#"{"x": 1}"#, &expecting("running")) {
            Err(error) if error.kind() == ErrorKind::Conflict => {
                assert_eq!(error.current_document(), Some(document))
            }
            other => panic!("{id}: expected a conflict, got {other:?}"),
        }
        assert_eq!(store.get(id).unwrap().as_deref(), Some(document));
    }
}

// --- TTL policy -----------------------------------------------------------------------

#[test]
fn update_keeps_the_remaining_ttl_by_default() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, Some(1000)).unwrap();
    let mut con = plain(&server);
    let before = plain_pttl(&mut con, &key("t1"));

    store
        .update("t1", r#"{"progress": 50}"#, &UpdateOptions::default())
        .unwrap()
        .expect("the task");

    let after = plain_pttl(&mut con, &key("t1"));
    assert!(
        after <= before && after > before - 5_000,
        "PTTL {before} ms before the update, {after} ms after"
    );
}

#[test]
fn update_with_a_ttl_policy_gives_the_task_that_ttl() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, Some(1000)).unwrap();
    let options = UpdateOptions {
        expect_status: None,
        ttl: TtlPolicy::Set(50_000),
    };
    store.update("t1", r#"{"progress": 50}"#, &options).unwrap();
    let ttl = plain_ttl(&mut plain(&server), &key("t1"));
    assert!((49_990..=50_000).contains(&ttl), "TTL {ttl}");
}

#[test]
fn update_of_a_task_without_expiry_leaves_it_persistent() {
    let server = server();
    let mut con = plain(&server);
    plain_set(&mut con, &key("forever"), RUNNING);
    let mut store = open(&server);
    store
        .update("forever", r#"{"progress": 50}"#, &UpdateOptions::default())
        .unwrap()
        .expect("the task");
    assert_eq!(plain_ttl(&mut con, &key("forever")), -1);
    assert_eq!(store.ttl("forever").unwrap(), Some(TimeToLive::Persistent));
}

#[test]
fn update_with_a_ttl_out_of_range_is_invalid_input_and_changes_nothing() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, Some(1000)).unwrap();
    for seconds in [0, 3_153_600_001] {
        let options = UpdateOptions {
            expect_status: None,
            ttl: TtlPolicy::Set(seconds),
        };
        assert_invalid_input(store.update("t1", r#"{"progress": 50}"#, &options));
    }
    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(RUNNING.as_bytes().to_vec())
    );
    let ttl = plain_ttl(&mut con, &key("t1"));
    assert!((1..=1000).contains(&ttl), "{ttl}");
}

// --- fidelity -------------------------------------------------------------------------

#[test]
fn update_rewrites_only_what_the_patch_touches() {
    let server = server();
    let mut store = open(&server);
    let document = concat!(
        r#"{"id":"t1","big":12345678901234567890123,"dec":0.1,"exp":1e400,"#,
        r#""neg_zero":-0,"name":"caf\u00e9","esc":"q \" b \\ s \/ t \t n \n","#,
        "\"raw\":\"\u{1F680} \u{fc}n\u{ef}\",",
        r#""nested":{ "keep" : [1 ,2.50, -0.0e-0] },"status":"running","progress":1}"#,
    );
    store.set("t1", document, None).unwrap();

    let patch =
        r#"{"status": "completed", "progress": 100, "added": 1.000, "note": "日本 \u00e9"}"#;
    let updated = store
        .update("t1", patch, &UpdateOptions::default())
        .unwrap();

    let expected = concat!(
        r#"{"id": "t1", "big": 12345678901234567890123, "dec": 0.1, "exp": 1e400, "#,
        r#""neg_zero": -0, "name": "caf\u00e9", "esc": "q \" b \\ s \/ t \t n \n", "#,
        "\"raw\": \"\u{1F680} \u{fc}n\u{ef}\", ",
        r#""nested": { "keep" : [1 ,2.50, -0.0e-0] }, "status": "completed", "progress": 100, "#,
        r#""added": 1.000, "note": "日本 \u00e9"}"#,
    );
    assert_eq!(updated.as_deref(), Some(expected));
    assert_eq!(
        plain_get(&mut plain(&server), &key("t1")),
        Some(expected.as_bytes().to_vec())
    );
}

#[test]
fn update_merges_nested_objects_keeping_their_untouched_members() {
    let server = server();
    let mut store = open(&server);
    let document = r#"{"meta":{"a":1e400,"b":"caf\u00e9","drop":[1]},"tail":0.10}"#;
    store.set("t1", document, None).unwrap();
    let updated = store
        .update(
            "t1",
            r#"{"meta": {"drop": null, "added": 12345678901234567890}}"#,
            &UpdateOptions::default(),
        )
        .unwrap();
    assert_eq!(
        updated.as_deref(),
        Some(
            r#"{"meta": {"a": 1e400, "b": "caf\u00e9", "added": 12345678901234567890}, "tail": 0.10}"#
        )
    );
}

#[test]
fn update_keeps_escaped_member_names_exactly() {
    // Python's json.dumps escapes non-ASCII in names too (ensure_ascii is on by default).
    let server = server();
    let mut store = open(&server);
    let document = r#"{"caf\u00e9": "cr\u00e8me", "status": "pending"}"#;
    store.set("t1", document, None).unwrap();
    let updated = store
        .update("t1", r#"{"status": "done"}"#, &UpdateOptions::default())
        .unwrap();
    assert_eq!(
        updated.as_deref(),
        Some(r#"{"caf\u00e9": "cr\u00e8me", "status": "done"}"#)
    );
}

// --- update: missing tasks and bad input ----------------------------------------------

#[test]
fn update_of_a_missing_task_returns_none_and_creates_nothing() {
    let server = server();
    let mut store = open(&server);
    assert_eq!(
        store
            .update(
                "ghost",
                r#"{"status": "running"}"#,
                &UpdateOptions::default()
            )
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .update("ghost", r#"{"status": "running"}"#, &expecting("pending"))
            .unwrap(),
        None
    );
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn invalid_patch_is_invalid_input_sends_nothing_and_leaves_the_document() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, None).unwrap();
    let mut con = plain(&server);
    let before = command_calls(&mut con);
    for patch in ["[1]", "\"x\"", "null", "1", "{", "", "{} {}", "not json"] {
        match store.update("t1", patch, &UpdateOptions::default()) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {}
            other => panic!("patch {patch:?}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_invalid_input(store.update("", "{}", &UpdateOptions::default()));
    assert_invalid_input(store.update("a\nb", "{}", &UpdateOptions::default()));
    assert_eq!(
        command_delta(&before, &command_calls(&mut con)),
        BTreeMap::new()
    );
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(RUNNING.as_bytes().to_vec())
    );
}

#[test]
fn patch_that_would_exceed_the_document_limit_is_invalid_input() {
    let server = server();
    let mut store = open_with(Options {
        max_document_bytes: Some(100),
        ..Options::new(server.url())
    })
    .unwrap();
    store.set("t1", RUNNING, None).unwrap();
    let patch = format!(r#"{{"pad": "{}"}}"#, "x".repeat(60));
    assert_invalid_input(store.update("t1", &patch, &UpdateOptions::default()));
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(RUNNING));
}

#[test]
fn update_of_a_value_that_is_not_a_json_object_is_corrupt_data() {
    let server = server();
    let mut con = plain(&server);
    plain_set(&mut con, &key("array"), "[1, 2]");
    plain_set(&mut con, &key("text"), "not json");
    plain_set(&mut con, &key("binary"), &b"\xff\xfe{}"[..]);
    let mut store = open(&server);
    for id in ["array", "text", "binary"] {
        match store.update(id, r#"{"a": 1}"#, &UpdateOptions::default()) {
            Err(error) if error.kind() == ErrorKind::CorruptData => {}
            other => panic!("{id}: expected CorruptData, got {other:?}"),
        }
    }
    assert_eq!(plain_get(&mut con, &key("array")), Some(b"[1, 2]".to_vec()));
    assert_eq!(
        plain_get(&mut con, &key("binary")),
        Some(b"\xff\xfe{}".to_vec())
    );
    // The store is still usable: the aborted transaction left nothing watched behind.
    store.set("t1", RUNNING, None).unwrap();
    assert!(store
        .update("t1", r#"{"a": 1}"#, &UpdateOptions::default())
        .unwrap()
        .is_some());
}

#[test]
fn update_of_a_key_holding_a_list_is_a_server_error() {
    let server = server();
    let mut con = plain(&server);
    let () = redis::cmd("RPUSH")
        .arg(key("list"))
        .arg("x")
        .query(&mut con)
        .unwrap();
    let mut store = open(&server);
    match store.update("list", r#"{"a": 1}"#, &UpdateOptions::default()) {
        Err(error) if error.kind() == ErrorKind::Server => {
            let message = error.message();
            assert!(message.contains("WRONGTYPE"), "{message}")
        }
        other => panic!("expected a WRONGTYPE server error, got {other:?}"),
    }
    store.set("t1", RUNNING, None).unwrap();
    assert!(store
        .update("t1", r#"{"a": 1}"#, &UpdateOptions::default())
        .unwrap()
        .is_some());
}

// --- create ---------------------------------------------------------------------------

#[test]
fn create_stores_a_task_only_if_there_is_none() {
    let server = server();
    let mut store = open(&server);
    assert!(store.create("t1", RUNNING, Some(1000)).unwrap());
    assert!(!store.create("t1", COMPLETED, None).unwrap());

    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(RUNNING.as_bytes().to_vec())
    );
    let ttl = plain_ttl(&mut con, &key("t1"));
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
}

#[test]
fn create_without_ttl_uses_the_default_ttl() {
    let server = server();
    let mut store = open(&server);
    assert!(store.create("t1", RUNNING, None).unwrap());
    let ttl = plain_ttl(&mut plain(&server), &key("t1")) as u64;
    assert!((DEFAULT_TTL - 10..=DEFAULT_TTL).contains(&ttl), "TTL {ttl}");
}

#[test]
fn create_does_not_replace_a_task_written_by_a_plain_client() {
    let server = server();
    let mut con = plain(&server);
    plain_set(&mut con, &key("t1"), COMPLETED);
    assert!(!open(&server).create("t1", RUNNING, None).unwrap());
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(COMPLETED.as_bytes().to_vec())
    );
    assert_eq!(plain_ttl(&mut con, &key("t1")), -1);
}

#[test]
fn create_with_invalid_input_writes_nothing() {
    let server = server();
    let mut store = open(&server);
    assert_invalid_input(store.create("t1", "[]", None));
    assert_invalid_input(store.create("t1", RUNNING, Some(0)));
    assert_invalid_input(store.create("", RUNNING, None));
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

// --- expire ---------------------------------------------------------------------------

#[test]
fn expire_sets_the_ttl_without_rewriting_the_value() {
    let server = server();
    let mut con = plain(&server);
    let value = "{ \"status\" : \"running\" ,\"n\":1e400 }\r\n";
    plain_set(&mut con, &key("t1"), value);
    let mut store = open(&server);
    let before = command_calls(&mut con);

    assert!(store.expire("t1", 100).unwrap());

    let calls = command_delta(&before, &command_calls(&mut con));
    assert_eq!(calls, BTreeMap::from([("expire".to_owned(), 1)]));
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(value.as_bytes().to_vec())
    );
    let ttl = plain_ttl(&mut con, &key("t1"));
    assert!((95..=100).contains(&ttl), "TTL {ttl}");
}

#[test]
fn expire_can_shorten_the_ttl_so_the_task_goes() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, None).unwrap();
    assert!(store.expire("t1", 1).unwrap());
    assert!(
        eventually(Duration::from_secs(3), || store
            .get("t1")
            .unwrap()
            .is_none()),
        "the task was still there 3 s after expire 1"
    );
}

#[test]
fn expire_of_a_missing_task_returns_false_and_creates_nothing() {
    let server = server();
    assert!(!open(&server).expire("ghost", 100).unwrap());
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn expire_with_a_ttl_out_of_range_is_invalid_input() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, Some(1000)).unwrap();
    assert_invalid_input(store.expire("t1", 0));
    assert_invalid_input(store.expire("t1", 3_153_600_001));
    assert_invalid_input(store.expire("", 10));
    let ttl = plain_ttl(&mut plain(&server), &key("t1"));
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
}

// --- list -----------------------------------------------------------------------------

#[test]
fn list_filters_by_top_level_status() {
    let server = server();
    let mut store = open(&server);
    let documents = [
        ("p1", r#"{"status": "pending"}"#),
        ("p2", r#"{"status": "pending", "n": 2}"#),
        ("r1", r#"{"status": "running"}"#),
        ("r2", r#"{"progress": 5, "status":"running"}"#),
        ("c1", r#"{"status": "completed"}"#),
        ("none", r#"{"id": "none"}"#),
        ("number", r#"{"status": 1}"#),
        ("nested", r#"{"meta": {"status": "running"}}"#),
        ("escaped", r#"{"status": "runn\u0069ng"}"#),
    ];
    for (id, document) in documents {
        store.set(id, document, None).unwrap();
    }
    let running = list_all(
        &mut store,
        &ListOptions {
            status: Some("running".into()),
            ..ListOptions::default()
        },
    );
    let found: BTreeMap<String, String> = running
        .into_iter()
        .map(|task| (task.id, task.document))
        .collect();
    let expected: BTreeMap<String, String> = documents
        .iter()
        .filter(|(id, _)| ["r1", "r2", "escaped"].contains(id))
        .map(|(id, document)| ((*id).to_owned(), (*document).to_owned()))
        .collect();
    assert_eq!(found, expected);

    let everything = list_all(&mut store, &ListOptions::default());
    assert_eq!(unique_ids(&everything).len(), documents.len());
    let nothing = list_all(
        &mut store,
        &ListOptions {
            status: Some("archived".into()),
            ..ListOptions::default()
        },
    );
    assert!(nothing.is_empty(), "{nothing:?}");
}

#[test]
fn pages_cover_every_task_exactly_once() {
    let server = server();
    let mut store = open(&server);
    let tasks: Vec<Task> = (0..250)
        .map(|n| Task {
            id: format!("task-{n:03}"),
            document: format!(r#"{{"n": {n}, "status": "{}"}}"#, ["a", "b"][n % 2]),
        })
        .collect();
    assert!(store
        .set_many(&tasks, None)
        .unwrap()
        .iter()
        .all(Result::is_ok));
    let all: BTreeSet<String> = tasks.iter().map(|task| task.id.clone()).collect();

    let small_pages = ListOptions {
        limit: Some(7),
        ..ListOptions::default()
    };
    let listed = list_all(&mut store, &small_pages);
    assert_eq!(unique_ids(&listed), all);
    for task in &listed {
        let n: usize = task.id["task-".len()..].parse().unwrap();
        assert_eq!(task.document, tasks[n].document);
    }

    let filtered = list_all(
        &mut store,
        &ListOptions {
            status: Some("b".into()),
            limit: Some(7),
            cursor: None,
        },
    );
    let odd: BTreeSet<String> = (0..250)
        .filter(|n| n % 2 == 1)
        .map(|n| format!("task-{n:03}"))
        .collect();
    assert_eq!(unique_ids(&filtered), odd);

    let one_at_a_time = list_all(
        &mut store,
        &ListOptions {
            limit: Some(1),
            ..ListOptions::default()
        },
    );
    assert_eq!(unique_ids(&one_at_a_time), all);
    assert_eq!(
        unique_ids(&list_all(&mut store, &ListOptions::default())),
        all
    );
}

#[test]
fn list_of_an_empty_database_is_one_empty_last_page() {
    let server = server();
    let page = open(&server).list(&ListOptions::default()).unwrap();
    assert!(page.tasks.is_empty(), "{page:?}");
    assert_eq!(page.cursor, None);
}

#[test]
fn list_never_returns_expired_or_deleted_tasks() {
    // With active expiry off, expired keys stay in the keyspace until something touches
    // them: exactly the ghosts a listing must not return.
    let server = RedisServer::builder()
        .args(["--enable-debug-command", "local"])
        .start()
        .expect("redis-server starts");
    let mut con = plain(&server);
    let () = redis::cmd("DEBUG")
        .arg("SET-ACTIVE-EXPIRE")
        .arg(0)
        .query(&mut con)
        .expect("DEBUG SET-ACTIVE-EXPIRE 0");
    let mut store = open(&server);
    for n in 0..5 {
        store.set(&format!("short-{n}"), RUNNING, Some(1)).unwrap();
        store.set(&format!("long-{n}"), RUNNING, None).unwrap();
    }
    store.set("deleted", RUNNING, None).unwrap();
    assert!(store.delete("deleted").unwrap());
    // Lazily expired keys would vanish from DBSIZE at the first access; wait untouched.
    thread::sleep(Duration::from_millis(2_100));
    assert_eq!(
        dbsize(&mut con),
        10,
        "the expired keys are still in the keyspace"
    );

    let listed = list_all(&mut store, &ListOptions::default());
    let expected: BTreeSet<String> = (0..5).map(|n| format!("long-{n}")).collect();
    assert_eq!(unique_ids(&listed), expected);
    let running = list_all(
        &mut store,
        &ListOptions {
            status: Some("running".into()),
            limit: Some(2),
            cursor: None,
        },
    );
    assert_eq!(unique_ids(&running), expected);
}

#[test]
fn ids_with_glob_characters_are_listed_and_read_literally() {
    let server = server();
    let mut store = open(&server);
    let ids = [
        "*",
        "a*",
        "a?c",
        "[ab]",
        "[!a]",
        "back\\slash",
        "with space",
        "mix *?[]\\ end",
        "ab",
        "abc",
        "b",
    ];
    for id in ids {
        store
            .set(id, &format!(r#"{{"id": {}}}"#, serde_json::json!(id)), None)
            .unwrap();
    }
    let listed = list_all(&mut store, &ListOptions::default());
    let expected: BTreeSet<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    assert_eq!(unique_ids(&listed), expected);
    for task in &listed {
        let value: Value = serde_json::from_str(&task.document).unwrap();
        assert_eq!(value["id"], task.id.as_str(), "{task:?}");
    }
    let documents = store.get_many(&strings(&ids)).unwrap();
    for (id, document) in ids.iter().zip(documents) {
        let value: Value = serde_json::from_str(&document.expect("the task")).unwrap();
        assert_eq!(value["id"], *id);
    }
    assert_eq!(
        store.delete_many(&strings(&["a*", "[ab]"])).unwrap(),
        [true, true]
    );
    for id in ids {
        let expected = !["a*", "[ab]"].contains(&id);
        assert_eq!(store.exists(id).unwrap(), expected, "{id}");
    }
}

#[test]
fn prefix_with_glob_characters_lists_only_its_own_keys() {
    let server = server();
    let prefix = "q[1]*?\\:";
    let mut store = open_with(Options {
        key_prefix: Some(prefix.into()),
        ..Options::new(server.url())
    })
    .unwrap();
    store.set("mine", RUNNING, None).unwrap();
    // Each of these matches `q[1]*?\:*` read as a glob, but none starts with the prefix.
    let mut con = plain(&server);
    for key in ["q1x:other", "q1zz:other", "q1?:x", "q[1]x?:x"] {
        plain_set(&mut con, key, RUNNING);
    }
    let listed = list_all(&mut store, &ListOptions::default());
    assert_eq!(
        listed,
        [Task {
            id: "mine".into(),
            document: RUNNING.into()
        }]
    );
    assert_eq!(
        plain_get(&mut con, &format!("{prefix}mine")),
        Some(RUNNING.as_bytes().to_vec())
    );
}

#[test]
fn tasks_written_by_other_clients_are_listed_exactly_as_written() {
    let server = server();
    let mut con = plain(&server);
    // What the Python service's `SETEX research_task:<id> 604800 json.dumps(task)` writes.
    let python = r#"{"id": "py", "status": "completed", "query": "caf\u00e9", "progress": 100, "sources": [], "result": null}"#;
    let () = redis::cmd("SETEX")
        .arg(key("py"))
        .arg(DEFAULT_TTL)
        .arg(python)
        .query(&mut con)
        .unwrap();
    let pretty = "{\n  \"id\": \"cli\",\n  \"status\": \"completed\"\n}";
    plain_set(&mut con, &key("cli"), pretty);
    let mut store = open(&server);
    store.set("own", RUNNING, None).unwrap();

    let listed: BTreeMap<String, String> = list_all(&mut store, &ListOptions::default())
        .into_iter()
        .map(|task| (task.id, task.document))
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            ("py".to_owned(), python.to_owned()),
            ("cli".to_owned(), pretty.to_owned()),
            ("own".to_owned(), RUNNING.to_owned()),
        ])
    );
    let completed = list_all(
        &mut store,
        &ListOptions {
            status: Some("completed".into()),
            ..ListOptions::default()
        },
    );
    assert_eq!(
        unique_ids(&completed),
        BTreeSet::from(["py".to_owned(), "cli".to_owned()])
    );
}

#[test]
fn list_skips_other_prefixes_other_types_and_unreadable_entries() {
    let server = server();
    let mut con = plain(&server);
    plain_set(&mut con, "other:1", RUNNING);
    plain_set(&mut con, "research_task", RUNNING);
    plain_set(&mut con, "RESEARCH_TASK:upper", RUNNING);
    plain_set(&mut con, &key("bad\nid"), RUNNING);
    plain_set(&mut con, &key(""), RUNNING);
    plain_set(&mut con, &key("binary"), &b"\xff\xfe"[..]);
    let () = redis::cmd("RPUSH")
        .arg(key("list"))
        .arg("x")
        .query(&mut con)
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(key("hash"))
        .arg("status")
        .arg("running")
        .query(&mut con)
        .unwrap();
    let () = redis::cmd("SADD")
        .arg(key("set"))
        .arg("x")
        .query(&mut con)
        .unwrap();
    let mut store = open(&server);
    store.set("good", RUNNING, None).unwrap();

    let listed = list_all(&mut store, &ListOptions::default());
    assert_eq!(unique_ids(&listed), BTreeSet::from(["good".to_owned()]));
    let running = list_all(
        &mut store,
        &ListOptions {
            status: Some("running".into()),
            limit: Some(1),
            cursor: None,
        },
    );
    assert_eq!(unique_ids(&running), BTreeSet::from(["good".to_owned()]));
}

#[test]
fn malformed_cursor_is_invalid_input() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", RUNNING, None).unwrap();
    for cursor in ["", "abc", "12", ":", "1:x", "x:1", "-1:0", "1:-1", "0:0:0"] {
        match store.list(&ListOptions {
            cursor: Some(cursor.into()),
            ..ListOptions::default()
        }) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {}
            other => panic!("cursor {cursor:?}: expected InvalidInput, got {other:?}"),
        }
    }
}

#[test]
fn page_size_out_of_range_is_invalid_input() {
    let server = server();
    let mut store = open(&server);
    for limit in [0, 10_001, u32::MAX] {
        assert_invalid_input(store.list(&ListOptions {
            limit: Some(limit),
            ..ListOptions::default()
        }));
    }
    let page = store
        .list(&ListOptions {
            limit: Some(10_000),
            ..ListOptions::default()
        })
        .unwrap();
    assert!(page.tasks.is_empty());
}

// --- batches --------------------------------------------------------------------------

/// A store that talks to `server` through a round-trip counting proxy.
fn open_through(proxy: &CountingProxy) -> TaskStore {
    open_with(Options::new(proxy.url())).expect("the component opens a store via the proxy")
}

#[test]
fn the_proxy_counts_one_round_trip_per_sequential_command() {
    // The control for the batch tests: without pipelining, N commands are N bursts.
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    let before = proxy.bursts();
    for n in 0..5 {
        assert_eq!(store.get(&format!("t{n}")).unwrap(), None);
    }
    assert_eq!(proxy.bursts() - before, 5);
}

#[test]
fn set_many_writes_every_task_in_one_round_trip() {
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    let tasks: Vec<Task> = (0..100)
        .map(|n| Task {
            id: format!("t{n}"),
            document: format!(r#"{{"n": {n}, "status": "pending"}}"#),
        })
        .collect();
    let mut con = plain(&server);
    let (bursts, calls) = (proxy.bursts(), command_calls(&mut con));

    let results = store.set_many(&tasks, Some(500)).unwrap();

    assert_eq!(proxy.bursts() - bursts, 1, "round trips");
    assert_eq!(
        command_delta(&calls, &command_calls(&mut con)),
        BTreeMap::from([("setex".to_owned(), 100)])
    );
    assert_eq!(results, vec![Ok(()); 100]);
    for task in &tasks {
        assert_eq!(
            plain_get(&mut con, &key(&task.id)),
            Some(task.document.as_bytes().to_vec())
        );
        let ttl = plain_ttl(&mut con, &key(&task.id));
        assert!((490..=500).contains(&ttl), "{}: TTL {ttl}", task.id);
    }
}

#[test]
fn set_many_without_ttl_uses_the_default_and_replaces_existing_tasks() {
    let server = server();
    let mut store = open(&server);
    store.set("a", COMPLETED, Some(10)).unwrap();
    let tasks = [
        Task {
            id: "a".into(),
            document: RUNNING.into(),
        },
        Task {
            id: "b".into(),
            document: COMPLETED.into(),
        },
    ];
    assert_eq!(store.set_many(&tasks, None).unwrap(), vec![Ok(()), Ok(())]);
    let mut con = plain(&server);
    assert_eq!(
        store.get_many(&strings(&["a", "b"])).unwrap(),
        [Some(RUNNING.to_owned()), Some(COMPLETED.to_owned())]
    );
    for id in ["a", "b"] {
        let ttl = plain_ttl(&mut con, &key(id)) as u64;
        assert!(
            (DEFAULT_TTL - 10..=DEFAULT_TTL).contains(&ttl),
            "{id}: TTL {ttl}"
        );
    }
}

#[test]
fn get_many_reads_in_one_round_trip_with_none_where_absent() {
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    let mut con = plain(&server);
    let () = redis::cmd("SETEX")
        .arg(key("foreign"))
        .arg(100)
        .arg(COMPLETED)
        .query(&mut con)
        .unwrap();
    for n in (0..100).step_by(3) {
        store
            .set(&format!("t{n}"), &format!(r#"{{"n": {n}}}"#), None)
            .unwrap();
    }
    let mut ids: Vec<String> = (0..100).map(|n| format!("t{n}")).collect();
    ids.push("foreign".into());
    ids.push("t0".into());
    let (bursts, calls) = (proxy.bursts(), command_calls(&mut con));

    let documents = store.get_many(&ids).unwrap();

    assert_eq!(proxy.bursts() - bursts, 1, "round trips");
    assert_eq!(
        command_delta(&calls, &command_calls(&mut con)),
        BTreeMap::from([("mget".to_owned(), 1)])
    );
    assert_eq!(documents.len(), ids.len());
    for (n, document) in documents.iter().take(100).enumerate() {
        let expected = (n % 3 == 0).then(|| format!(r#"{{"n": {n}}}"#));
        assert_eq!(document, &expected, "t{n}");
    }
    assert_eq!(documents[100].as_deref(), Some(COMPLETED));
    assert_eq!(documents[101].as_deref(), Some(r#"{"n": 0}"#));
}

#[test]
fn delete_many_removes_in_one_round_trip_and_reports_each_id() {
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    for id in ["a", "c", "e"] {
        store.set(id, RUNNING, None).unwrap();
    }
    let mut con = plain(&server);
    plain_set(&mut con, "unrelated", RUNNING);
    let ids = strings(&["a", "b", "c", "d", "e", "a"]);
    let (bursts, calls) = (proxy.bursts(), command_calls(&mut con));

    let removed = store.delete_many(&ids).unwrap();

    assert_eq!(proxy.bursts() - bursts, 1, "round trips");
    assert_eq!(
        command_delta(&calls, &command_calls(&mut con)),
        BTreeMap::from([("del".to_owned(), 6)])
    );
    assert_eq!(removed, [true, false, true, false, true, false]);
    assert_eq!(dbsize(&mut con), 1);
}

#[test]
fn empty_batches_return_nothing_and_send_nothing() {
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    let bursts = proxy.bursts();
    assert_eq!(store.get_many(&[]).unwrap(), Vec::<Option<String>>::new());
    assert_eq!(store.set_many(&[], None).unwrap(), Vec::new());
    assert_eq!(store.delete_many(&[]).unwrap(), Vec::<bool>::new());
    assert_eq!(proxy.bursts() - bursts, 0);
}

#[test]
fn batch_with_one_invalid_item_is_invalid_input_and_sends_nothing() {
    let server = server();
    let proxy = CountingProxy::start(server.addr());
    let mut store = open_through(&proxy);
    store.set("keep", RUNNING, None).unwrap();
    let good = |id: &str| Task {
        id: id.into(),
        document: RUNNING.into(),
    };
    let bursts = proxy.bursts();

    assert_invalid_input(store.set_many(&[good("x"), good("bad\nid"), good("y")], None));
    assert_invalid_input(store.set_many(
        &[
            good("x"),
            Task {
                id: "y".into(),
                document: "[1]".into(),
            },
        ],
        None,
    ));
    assert_invalid_input(store.set_many(&[good("x")], Some(0)));
    assert_invalid_input(store.get_many(&strings(&["keep", ""])));
    assert_invalid_input(store.delete_many(&strings(&["keep", "a\u{7f}"])));

    assert_eq!(proxy.bursts() - bursts, 0, "round trips");
    let mut con = plain(&server);
    assert_eq!(dbsize(&mut con), 1);
    assert_eq!(
        plain_get(&mut con, &key("keep")),
        Some(RUNNING.as_bytes().to_vec())
    );
}

#[test]
fn batches_over_ten_thousand_items_are_invalid_input() {
    let server = server();
    let mut store = open(&server);
    let ids: Vec<String> = (0..10_001).map(|n| format!("t{n}")).collect();
    assert_invalid_input(store.get_many(&ids));
    assert_invalid_input(store.delete_many(&ids));
    let tasks: Vec<Task> = ids
        .iter()
        .map(|id| Task {
            id: id.clone(),
            document: "{}".into(),
        })
        .collect();
    assert_invalid_input(store.set_many(&tasks, None));
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn set_many_reports_each_write_redis_refuses() {
    let server = server();
    let mut store = open(&server);
    let mut con = plain(&server);
    for (name, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut con)
            .unwrap();
    }
    let tasks: Vec<Task> = (0..3)
        .map(|n| Task {
            id: format!("t{n}"),
            document: RUNNING.into(),
        })
        .collect();
    let results = store.set_many(&tasks, None).unwrap();
    assert_eq!(results.len(), 3);
    for result in &results {
        match result {
            Err(error) if error.kind() == ErrorKind::Server => {
                let message = error.message();
                assert!(message.contains("OOM"), "{message}")
            }
            other => panic!("expected an OOM server error, got {other:?}"),
        }
    }
    assert_eq!(dbsize(&mut con), 0);

    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut con)
        .unwrap();
    assert_eq!(store.set_many(&tasks, None).unwrap(), vec![Ok(()); 3]);
}

#[test]
fn get_many_of_a_value_that_is_not_utf8_is_corrupt_data() {
    let server = server();
    plain_set(&mut plain(&server), &key("binary"), &b"\xff"[..]);
    let mut store = open(&server);
    store.set("t1", RUNNING, None).unwrap();
    match store.get_many(&strings(&["t1", "binary"])) {
        Err(error) if error.kind() == ErrorKind::CorruptData => {}
        other => panic!("expected CorruptData, got {other:?}"),
    }
}
