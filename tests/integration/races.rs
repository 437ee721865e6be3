//! Races put in place rather than hoped for: the fault proxy's `WriteFirst` runs another
//! client's write at an exact point of one operation, so each test shows the same
//! interleaving on every run.

use crate::support::*;
use taskstore_host::{Options, TaskStore, TtlPolicy, UpdateOptions};
use taskstore_testing::fault::{Fault, FaultProxy};

const DOC: &str = r#"{"status":"pending","progress":0}"#;
/// What the other client writes between `update`'s `GET` and its `EXEC`: same status, a
/// field of its own, TTL kept (as the Python service's read-modify-write would not, but a
/// careful writer does).
const INJECTED: &str = r#"{"status":"pending","progress":0,"note":"written by another client"}"#;

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn proxied(server: &RedisServer) -> (FaultProxy, TaskStore) {
    let proxy = FaultProxy::start(server.addr());
    let store = open_with(Options::new(proxy.url())).expect("open through the proxy");
    (proxy, store)
}

fn injected_write(id: &str) -> Fault {
    Fault::WriteFirst(vec![
        b"SET".to_vec(),
        key(id).into_bytes(),
        INJECTED.as_bytes().to_vec(),
        b"KEEPTTL".to_vec(),
    ])
}

#[test]
fn a_write_between_get_and_exec_makes_update_retry_and_keeps_both_writes() {
    let server = server();
    let (proxy, mut store) = proxied(&server);
    store.set("t1", DOC, None).unwrap();
    // The write lands after this update's WATCH + GET and before its MULTI/SET/EXEC.
    proxy.arm("MULTI", injected_write("t1"), 1);

    let updated = store
        .update(
            "t1",
            r#"{"progress":50}"#,
            &UpdateOptions {
                expect_status: Some("pending".into()),
                ttl: TtlPolicy::Keep,
            },
        )
        .expect("update retries internally and wins")
        .expect("the task exists");

    // The first EXEC was aborted by Redis (the key changed under WATCH); the store started
    // over from the other client's version on its own, without surfacing `contended`.
    assert_eq!(proxy.seen("WATCH"), 2, "one retry, no more");
    assert_eq!(proxy.seen("EXEC"), 2);
    let stored: serde_json::Value = serde_json::from_slice(
        &plain_get(&mut plain(&server), &key("t1")).expect("the task is still there"),
    )
    .unwrap();
    assert_eq!(
        stored,
        serde_json::json!({
            "status": "pending",
            "progress": 50,
            "note": "written by another client",
        }),
        "neither the injected write nor the patch may be lost"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&updated).unwrap(),
        stored
    );
}

#[test]
fn a_status_change_between_get_and_exec_turns_into_a_conflict_on_the_retry() {
    let server = server();
    let (proxy, mut store) = proxied(&server);
    store.set("t2", DOC, None).unwrap();
    let completed = r#"{"status":"completed","progress":100}"#;
    proxy.arm(
        "MULTI",
        Fault::WriteFirst(vec![
            b"SET".to_vec(),
            key("t2").into_bytes(),
            completed.as_bytes().to_vec(),
            b"KEEPTTL".to_vec(),
        ]),
        1,
    );

    let err = store
        .update(
            "t2",
            r#"{"progress":50}"#,
            &UpdateOptions {
                expect_status: Some("pending".into()),
                ttl: TtlPolicy::Keep,
            },
        )
        .expect_err("the precondition no longer holds after the other write");

    // The retry re-read the task and found the other client's status: a conflict carrying
    // exactly what is stored, and the other client's write untouched.
    assert_eq!(err.current_document(), Some(completed), "{err:?}");
    assert_eq!(proxy.seen("WATCH"), 2);
    assert_eq!(
        plain_get(&mut plain(&server), &key("t2")).as_deref(),
        Some(completed.as_bytes())
    );
}
