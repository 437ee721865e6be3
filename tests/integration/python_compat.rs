//! Compatibility with the original Python service: its own storage code (redis-py asyncio,
//! `json.dumps`, `SETEX` 7 days, `GET` + `json.loads`, `DEL`, in
//! `tests/python/original_service.py`) and the component share one real Redis, each reading
//! what the other wrote.

use std::path::Path;
use std::process::Command;

use crate::support::*;
use serde_json::Value;
use taskstore_host::{TimeToLive, UpdateOptions};

/// What one run of the original service's storage code came to.
#[derive(Debug, PartialEq)]
enum Python {
    /// Exit 0, with what it printed.
    Done(String),
    /// `load` or `delete` found no task: it printed `ABSENT` and exited 3.
    Absent,
}

/// The exit code and stdout marker `original_service.py` gives for "no such task"; any other
/// failure (a traceback exits 1) fails the test.
const ABSENT_EXIT_CODE: i32 = 3;
const ABSENT_MARKER: &str = "ABSENT\n";

/// Runs the original service's storage code; `scripts/setup.sh` installs redis-py.
fn python(server: &RedisServer, args: &[&str]) -> Python {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/original_service.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(server.url())
        .args(args)
        .output()
        .expect("python3 runs (scripts/setup.sh installs python3 and redis-py)");
    let stdout = String::from_utf8(output.stdout).expect("python printed UTF-8");
    match output.status.code() {
        Some(0) => Python::Done(stdout),
        Some(ABSENT_EXIT_CODE) if stdout == ABSENT_MARKER => Python::Absent,
        _ => panic!(
            "original service {args:?} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The JSON `load` printed for `id`; the test fails if the task is absent.
fn python_load(server: &RedisServer, id: &str) -> Value {
    match python(server, &["load", id]) {
        Python::Done(stdout) => serde_json::from_str(&stdout).expect("python printed JSON"),
        Python::Absent => panic!("the python service finds no task {id:?}"),
    }
}

fn research_task(id: &str) -> String {
    // The research task `taskstore bench` stores.
    let template = include_str!("../../cli/benches/task.json");
    let mut task: Value = serde_json::from_str(template).expect("task.json is JSON");
    task["id"] = Value::String(id.to_owned());
    task["query"] = Value::String("Cold starts: Wasm vs containers — café ☕ \"quoted\"".into());
    task.to_string()
}

#[test]
fn task_saved_by_the_python_service_reads_back_byte_for_byte() {
    let server = server();
    assert_eq!(
        python(&server, &["save", &research_task("py-1")]),
        Python::Done(String::new())
    );
    let mut plain = plain(&server);
    let stored = plain_get(&mut plain, "research_task:py-1").expect("python wrote the key");

    let mut store = open(&server);
    let document = store
        .get("py-1")
        .unwrap()
        .expect("component finds the python task");
    assert_eq!(document.as_bytes(), stored.as_slice());
    assert!(
        document.contains("\\u00e9"),
        "json.dumps escapes non-ASCII: {document}"
    );
    match store.ttl("py-1").unwrap() {
        Some(TimeToLive::ExpiresIn(seconds)) => assert!((604_790..=604_800).contains(&seconds)),
        other => panic!("expected the python service's 7-day TTL, got {other:?}"),
    }
}

#[test]
fn task_stored_by_the_component_loads_in_the_python_service() {
    let server = server();
    let document = research_task("wasm-1");
    open(&server).set("wasm-1", &document, None).unwrap();

    let loaded = python_load(&server, "wasm-1");
    let written: Value = serde_json::from_str(&document).unwrap();
    assert_eq!(loaded, written);
}

#[test]
fn component_update_of_a_python_task_keeps_it_loadable_and_its_ttl() {
    let server = server();
    assert_eq!(
        python(&server, &["save", &research_task("py-2")]),
        Python::Done(String::new())
    );
    let mut store = open(&server);
    let options = UpdateOptions {
        expect_status: Some("pending".into()),
        ..UpdateOptions::default()
    };
    store
        .update("py-2", r#"{"status": "running", "progress": 40}"#, &options)
        .unwrap()
        .expect("the task exists");

    let loaded = python_load(&server, "py-2");
    assert_eq!(loaded["status"], "running");
    assert_eq!(loaded["progress"], 40);
    assert_eq!(loaded["sources"][0]["relevance"], 0.93);
    assert!(plain_ttl(&mut plain(&server), "research_task:py-2") > 604_700);
}

#[test]
fn deletes_are_seen_by_the_other_side() {
    let server = server();
    let mut store = open(&server);
    store.set("a", &research_task("a"), None).unwrap();
    assert_eq!(
        python(&server, &["save", &research_task("b")]),
        Python::Done(String::new())
    );

    assert_eq!(
        python(&server, &["delete", "a"]),
        Python::Done(String::new())
    );
    assert_eq!(store.get("a").unwrap(), None);
    assert_eq!(python(&server, &["delete", "a"]), Python::Absent);
    assert!(store.delete("b").unwrap());
    assert_eq!(python(&server, &["load", "b"]), Python::Absent);
}
