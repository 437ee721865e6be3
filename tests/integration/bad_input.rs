//! Bad input, operation by operation: every case is `invalid-input` with a message that says
//! what to fix, and is rejected before anything reaches Redis (checked with Redis's own
//! command statistics, not just by the data being unchanged).

use crate::support::*;
use taskstore_host::{
    ErrorKind, ListOptions, Options, Task, TaskError, TaskStore, TtlPolicy, UpdateOptions,
};

const DOC: &str = r#"{"id": "t1", "status": "pending"}"#;
/// The store under test accepts documents up to this size.
const MAX_DOC: u32 = 1024;
const MAX_TTL: u64 = 3_153_600_000;

type Call = Box<dyn Fn(&mut TaskStore) -> Result<(), TaskError>>;

/// One bad call, and a word its message must contain (case-insensitive) to say what to fix.
struct Case {
    what: String,
    call: Call,
    hint: &'static str,
}

fn case(
    what: impl Into<String>,
    hint: &'static str,
    call: impl Fn(&mut TaskStore) -> Result<(), TaskError> + 'static,
) -> Case {
    Case {
        what: what.into(),
        call: Box::new(call),
        hint,
    }
}

fn bad_ids() -> Vec<String> {
    vec![
        String::new(),
        "a".repeat(1025),
        "é".repeat(513),
        "a\nb".into(),
        "a\r\nb".into(),
        "nul\0".into(),
        "\t".into(),
        "del\u{7f}".into(),
    ]
}

fn id_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for id in bad_ids() {
        let shown = format!("{:.12?}", id);
        let ids = vec!["ok".to_owned(), id.clone()];
        let tasks = vec![
            Task {
                id: "ok".into(),
                document: DOC.into(),
            },
            Task {
                id: id.clone(),
                document: DOC.into(),
            },
        ];
        macro_rules! add {
            ($name:literal, |$store:ident, $id:ident| $body:expr) => {{
                let $id = id.clone();
                cases.push(case(format!("{} {shown}", $name), "id", move |$store| {
                    let $id = $id.as_str();
                    $body.map(|_| ())
                }));
            }};
        }
        add!("get", |s, id| s.get(id));
        add!("set", |s, id| s.set(id, DOC, None));
        add!("delete", |s, id| s.delete(id));
        add!("ttl", |s, id| s.ttl(id));
        add!("exists", |s, id| s.exists(id));
        add!("create", |s, id| s.create(id, DOC, None));
        add!("update", |s, id| s.update(
            id,
            r#"{"a": 1}"#,
            &UpdateOptions::default()
        ));
        add!("expire", |s, id| s.expire(id, 60));
        {
            let ids = ids.clone();
            cases.push(case(format!("get-many {shown}"), "id", move |s| {
                s.get_many(&ids).map(|_| ())
            }));
        }
        {
            let ids = ids.clone();
            cases.push(case(format!("delete-many {shown}"), "id", move |s| {
                s.delete_many(&ids).map(|_| ())
            }));
        }
        cases.push(case(format!("set-many {shown}"), "id", move |s| {
            s.set_many(&tasks, None).map(|_| ())
        }));
    }
    cases
}

fn document_cases() -> Vec<Case> {
    let too_large = format!(r#"{{"blob": "{}"}}"#, "x".repeat(MAX_DOC as usize));
    let not_objects = [
        "",
        "  ",
        "[]",
        "[{\"a\": 1}]",
        "\"text\"",
        "42",
        "null",
        "true",
        "{",
        "{\"a\": 1,}",
        "{'a': 1}",
        "{\"a\": 1} {\"b\": 2}",
        "{\"a\": \"raw\nline\"}",
        "{\"a\": NaN}",
    ];
    let mut cases = Vec::new();
    for document in not_objects.iter().map(|d| d.to_string()).chain([too_large]) {
        let shown = format!("{:.16?}", document);
        let hint = if document.len() > MAX_DOC as usize {
            "limit"
        } else {
            "document"
        };
        let d = document.clone();
        cases.push(case(format!("set {shown}"), hint, move |s| {
            s.set("t2", &d, None)
        }));
        let d = document.clone();
        cases.push(case(format!("create {shown}"), hint, move |s| {
            s.create("t2", &d, None).map(|_| ())
        }));
        let tasks = vec![
            Task {
                id: "t2".into(),
                document: DOC.into(),
            },
            Task {
                id: "t3".into(),
                document,
            },
        ];
        cases.push(case(format!("set-many {shown}"), hint, move |s| {
            s.set_many(&tasks, None).map(|_| ())
        }));
    }
    cases
}

fn ttl_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for ttl in [0, MAX_TTL + 1, u64::MAX] {
        cases.push(case(format!("set ttl {ttl}"), "TTL", move |s| {
            s.set("t2", DOC, Some(ttl))
        }));
        cases.push(case(format!("create ttl {ttl}"), "TTL", move |s| {
            s.create("t2", DOC, Some(ttl)).map(|_| ())
        }));
        cases.push(case(format!("expire {ttl}"), "TTL", move |s| {
            s.expire("t1", ttl).map(|_| ())
        }));
        cases.push(case(format!("update ttl {ttl}"), "TTL", move |s| {
            let options = UpdateOptions {
                ttl: TtlPolicy::Set(ttl),
                ..UpdateOptions::default()
            };
            s.update("t1", r#"{"a": 1}"#, &options).map(|_| ())
        }));
        let tasks = vec![Task {
            id: "t2".into(),
            document: DOC.into(),
        }];
        cases.push(case(format!("set-many ttl {ttl}"), "TTL", move |s| {
            s.set_many(&tasks, Some(ttl)).map(|_| ())
        }));
    }
    cases
}

fn patch_cases() -> Vec<Case> {
    let too_large = format!(r#"{{"blob": "{}"}}"#, "x".repeat(MAX_DOC as usize));
    let mut cases = Vec::new();
    for patch in [
        "",
        "[]",
        "[1, 2]",
        "null",
        "1",
        "\"x\"",
        "{",
        "{\"a\": }",
        "{\"a\" 1}",
    ] {
        cases.push(case(format!("update patch {patch:?}"), "patch", move |s| {
            s.update("t1", patch, &UpdateOptions::default()).map(|_| ())
        }));
    }
    cases.push(case("update patch over the limit", "limit", move |s| {
        s.update("t1", &too_large, &UpdateOptions::default())
            .map(|_| ())
    }));
    cases
}

fn list_and_batch_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for limit in [0, 10_001, u32::MAX] {
        cases.push(case(format!("list limit {limit}"), "page size", move |s| {
            let options = ListOptions {
                limit: Some(limit),
                ..ListOptions::default()
            };
            s.list(&options).map(|_| ())
        }));
    }
    for cursor in ["", "x", "12", "-1:0", "1:x", ":", "1:2:3"] {
        cases.push(case(
            format!("list cursor {cursor:?}"),
            "cursor",
            move |s| {
                let options = ListOptions {
                    cursor: Some(cursor.to_owned()),
                    ..ListOptions::default()
                };
                s.list(&options).map(|_| ())
            },
        ));
    }
    let ids: Vec<String> = (0..10_001).map(|i| format!("t{i}")).collect();
    let tasks: Vec<Task> = ids
        .iter()
        .map(|id| Task {
            id: id.clone(),
            document: DOC.into(),
        })
        .collect();
    {
        let ids = ids.clone();
        cases.push(case("get-many of 10001", "limit", move |s| {
            s.get_many(&ids).map(|_| ())
        }));
    }
    cases.push(case("delete-many of 10001", "limit", move |s| {
        s.delete_many(&ids).map(|_| ())
    }));
    cases.push(case("set-many of 10001", "limit", move |s| {
        s.set_many(&tasks, None).map(|_| ())
    }));
    cases
}

/// Runs every case against one store and checks the outcome, the message, and that Redis
/// received no command at all meanwhile.
fn check_rejected_before_sending(cases: Vec<Case>) {
    let server = server();
    let mut store = open_with(Options {
        max_document_bytes: Some(MAX_DOC),
        ..Options::new(server.url())
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    for Case { what, call, hint } in cases {
        match call(&mut store) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                let message = error.message();
                assert!(
                    message.to_lowercase().contains(&hint.to_lowercase()),
                    "{what}: the message does not mention {hint:?}: {message}"
                );
                assert!(!message.contains('\n'), "{what}: {message:?}");
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }

    let delta = command_delta(&before, &command_calls(&mut con));
    assert!(delta.is_empty(), "commands reached Redis: {delta:?}");
    assert_eq!(dbsize(&mut con), 1);
    assert_eq!(
        plain_get(&mut con, &format!("{DEFAULT_PREFIX}t1")),
        Some(DOC.as_bytes().to_vec())
    );
    // The store is still fine.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn malformed_ids_are_rejected_by_every_operation_before_anything_is_sent() {
    check_rejected_before_sending(id_cases());
}

#[test]
fn documents_that_are_not_one_json_object_or_too_large_are_rejected_before_anything_is_sent() {
    check_rejected_before_sending(document_cases());
}

#[test]
fn ttls_out_of_range_are_rejected_before_anything_is_sent() {
    check_rejected_before_sending(ttl_cases());
}

#[test]
fn invalid_merge_patches_are_rejected_before_anything_is_sent() {
    check_rejected_before_sending(patch_cases());
}

#[test]
fn bad_page_sizes_cursors_and_oversized_batches_are_rejected_before_anything_is_sent() {
    check_rejected_before_sending(list_and_batch_cases());
}

#[test]
fn patch_whose_result_exceeds_the_document_limit_writes_nothing() {
    let server = server();
    let mut store = open_with(Options {
        max_document_bytes: Some(MAX_DOC),
        ..Options::new(server.url())
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    let before = command_calls(&mut con);

    // Small enough on its own; only the merged document is too large, which takes a read.
    let patch = format!(r#"{{"blob": "{}"}}"#, "x".repeat(MAX_DOC as usize - 20));
    match store.update("t1", &patch, &UpdateOptions::default()) {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            let message = error.message();
            assert!(message.contains("limit"), "{message}")
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let delta = command_delta(&before, &command_calls(&mut con));
    for write in ["multi", "exec", "set", "setex"] {
        assert!(!delta.contains_key(write), "{write} was sent: {delta:?}");
    }
    assert_eq!(
        plain_get(&mut con, &format!("{DEFAULT_PREFIX}t1")),
        Some(DOC.as_bytes().to_vec())
    );
}

#[test]
fn invalid_urls_and_options_are_rejected_before_connecting() {
    let server = server();
    let mut con = plain(&server);
    let connections = |con: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let before = connections(&mut con);
    let url = server.url();
    let with = |change: fn(&mut Options)| {
        let mut options = Options::new(url.clone());
        change(&mut options);
        options
    };
    let port = server.port();
    let cases: Vec<(Options, &str)> = vec![
        (Options::new(""), "redis://"),
        (Options::new("not a url"), "redis://"),
        (Options::new(format!("http://127.0.0.1:{port}")), "scheme"),
        // rediss:// is supported now (tls.rs); a TLS option on a plaintext URL is not.
        (with(|o| o.tls_ca_certificates = Some("PEM".into())), "TLS"),
        (with(|o| o.danger_accept_invalid_certificates = true), "TLS"),
        (
            Options::new(format!("rediss://:@127.0.0.1:{port}")),
            "password",
        ),
        (Options::new("redis://"), "host"),
        (Options::new("redis://:6379"), "host"),
        (Options::new("redis://127.0.0.1:notaport"), "port"),
        (Options::new("redis://127.0.0.1:0"), "port"),
        (Options::new("redis://127.0.0.1:65536"), "port"),
        (
            Options::new(format!("redis://127.0.0.1:{port}/x")),
            "database",
        ),
        (
            Options::new(format!("redis://127.0.0.1:{port}/-1")),
            "database",
        ),
        (
            Options::new(format!("redis://127.0.0.1:{port}?db=1")),
            "query",
        ),
        (
            Options::new(format!("redis://127.0.0.1:{port}#x")),
            "fragment",
        ),
        (
            Options::new(format!("redis://user@127.0.0.1:{port}")),
            "password",
        ),
        (
            Options::new(format!("redis://:@127.0.0.1:{port}")),
            "password",
        ),
        (
            Options::new(format!("redis://:%zz@127.0.0.1:{port}")),
            "escape",
        ),
        (Options::new(format!("redis://[::1:{port}")), "["),
        (Options::new(format!("redis://ho st:{port}")), "host"),
        (with(|o| o.default_ttl_seconds = Some(0)), "TTL"),
        (with(|o| o.default_ttl_seconds = Some(MAX_TTL + 1)), "TTL"),
        (with(|o| o.timeout_ms = Some(0)), "timeout"),
        (with(|o| o.timeout_ms = Some(3_600_001)), "timeout"),
        (with(|o| o.max_document_bytes = Some(0)), "document size"),
        (with(|o| o.max_document_bytes = Some(1)), "document size"),
        (
            with(|o| o.max_document_bytes = Some(536_870_913)),
            "document size",
        ),
    ];
    for (options, hint) in cases {
        let shown = format!("{options:?}");
        match open_with(options) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                let message = error.message();
                assert!(
                    message.to_lowercase().contains(&hint.to_lowercase()),
                    "{shown}: the message does not mention {hint:?}: {message}"
                )
            }
            Err(other) => panic!("{shown}: expected InvalidInput, got {other:?}"),
            Ok(_) => panic!("{shown}: opened a store"),
        }
    }
    assert_eq!(connections(&mut con), before, "an invalid store connected");
    assert_eq!(dbsize(&mut con), 0);
}

/// An object nested `levels` levels in all, with a top-level `"status"`.
fn nested_document(levels: usize, status: &str) -> String {
    format!(
        "{{\"status\": \"{status}\", \"x\": {}1{}}}",
        "{\"a\": ".repeat(levels - 1),
        "}".repeat(levels - 1)
    )
}

#[test]
fn documents_and_patches_nested_too_deep_are_invalid_input_and_the_store_keeps_working() {
    let server = server();
    let mut store = open(&server);
    let mut con = plain(&server);
    store.set("t1", DOC, None).unwrap();
    for (what, result) in [
        (
            "set of a 100000-deep document",
            store.set("deep", &nested_document(100_000, "pending"), None),
        ),
        (
            "set of a 129-deep document",
            store.set("deep", &nested_document(129, "pending"), None),
        ),
        (
            "update with a 5000-deep patch",
            store
                .update(
                    "t1",
                    &nested_document(5_000, "running"),
                    &UpdateOptions::default(),
                )
                .map(|_| ()),
        ),
    ] {
        match result {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                let message = error.message();
                assert!(
                    message.contains("nested more than 128 levels"),
                    "{what}: {message}"
                )
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    // The same instance still answers, and nothing was written.
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    assert_eq!(store.get("deep").unwrap(), None);
    assert_eq!(dbsize(&mut con), 1);
    store
        .set("ok", &nested_document(128, "pending"), None)
        .unwrap();
    let patched = store
        .update(
            "ok",
            &nested_document(127, "running"),
            &UpdateOptions::default(),
        )
        .unwrap()
        .unwrap();
    assert!(
        patched.starts_with("{\"status\": \"running\""),
        "{patched:.60}"
    );
}

#[test]
fn a_deep_document_written_by_another_client_is_read_unchanged_and_listed_by_status() {
    let server = server();
    let mut store = open(&server);
    let mut con = plain(&server);
    let deep = nested_document(100_000, "stuck");
    plain_set(&mut con, &format!("{DEFAULT_PREFIX}deep"), deep.as_str());
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("deep").unwrap().as_deref(), Some(deep.as_str()));
    let page = store
        .list(&ListOptions {
            status: Some("stuck".into()),
            limit: Some(10),
            cursor: None,
        })
        .unwrap();
    let ids: Vec<&str> = page.tasks.iter().map(|task| task.id.as_str()).collect();
    assert_eq!(ids, ["deep"]);
    assert_eq!(page.tasks[0].document, deep);
    // A shallow patch of the deep task works; the untouched deep member keeps its text.
    let patched = store
        .update("deep", r#"{"status": "done"}"#, &UpdateOptions::default())
        .unwrap()
        .unwrap();
    assert!(patched.starts_with("{\"status\": \"done\", \"x\": {\"a\": {\"a\": "));
    assert_eq!(patched.len(), deep.len() - "stuck".len() + "done".len());
}

#[test]
fn a_task_of_80000_members_updates_and_lists_within_the_default_deadline() {
    let server = server();
    let mut store = open(&server);
    const MEMBERS: usize = 80_000;
    let members: Vec<String> = (0..MEMBERS).map(|i| format!("\"k{i}\": {i}")).collect();
    let document = format!("{{\"status\": \"pending\", {}}}", members.join(", "));
    assert!(document.len() > 1_000_000, "{} bytes", document.len());
    store.set("big", &document, None).unwrap();
    let patch = r#"{"status": "running", "k17": "seventeen", "k18": null, "added": true}"#;
    let patched = store
        .update("big", patch, &UpdateOptions::default())
        .expect("an 80000-member update finishes within the default deadline")
        .unwrap();
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&patched).unwrap();
    assert_eq!(parsed.len(), MEMBERS + 1);
    assert_eq!(parsed["status"], "running");
    assert_eq!(parsed["k17"], "seventeen");
    assert!(!parsed.contains_key("k18"));
    assert_eq!(parsed["k79999"], 79_999);
    assert_eq!(parsed["added"], true);
    assert_eq!(store.get("big").unwrap().as_deref(), Some(patched.as_str()));
    let page = store
        .list(&ListOptions {
            status: Some("running".into()),
            limit: Some(10),
            cursor: None,
        })
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert_eq!(page.tasks[0].document, patched);
}
