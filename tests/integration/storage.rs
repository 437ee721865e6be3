//! The task store through the component, against a private `redis-server` per test.
//!
//! The first group follows the original Python service's test plan (creation, retrieval,
//! update, deletion, expiry); the rest cover the WIT contract's other outcomes. What the
//! component wrote is checked with an independent plain Redis client.

use std::time::Duration;

use crate::support::*;
use taskstore_host::{ErrorKind, Options, TaskError, TimeToLive};

const DOC: &str =
    r#"{"id": "t1", "status": "pending", "query": "quantum computing", "progress": 0}"#;

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn options(server: &RedisServer) -> Options {
    Options::new(server.url())
}

#[track_caller]
fn assert_invalid_input<T>(result: Result<T, TaskError>) {
    match result {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {}
        Err(other) => panic!("expected InvalidInput, got {other:?}"),
        Ok(_) => panic!("expected InvalidInput, got Ok"),
    }
}

// --- The Python service's test plan ---------------------------------------------------

#[test]
fn set_persists_document_under_prefixed_key_with_seven_day_ttl() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();

    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(DOC.as_bytes().to_vec())
    );
    let ttl = plain_ttl(&mut con, &key("t1"));
    assert!(
        (DEFAULT_TTL - 10..=DEFAULT_TTL).contains(&(ttl as u64)),
        "TTL {ttl}"
    );
    assert_eq!(dbsize(&mut con), 1);
}

#[test]
fn get_returns_the_stored_document() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn get_of_missing_task_returns_none() {
    let server = server();
    let mut store = open(&server);
    assert_eq!(store.get("nope").unwrap(), None);
}

#[test]
fn set_overwrites_the_previous_document_and_renews_its_ttl() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, Some(100)).unwrap();
    let updated = r#"{"id": "t1", "status": "completed", "progress": 100}"#;
    store.set("t1", updated, None).unwrap();

    assert_eq!(store.get("t1").unwrap().as_deref(), Some(updated));
    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("t1")),
        Some(updated.as_bytes().to_vec())
    );
    assert!(plain_ttl(&mut con, &key("t1")) > 100);
}

#[test]
fn delete_returns_true_then_false() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();

    assert!(store.delete("t1").unwrap());
    assert_eq!(plain_get(&mut plain(&server), &key("t1")), None);
    assert_eq!(store.get("t1").unwrap(), None);
    assert!(!store.delete("t1").unwrap());
}

#[test]
fn task_with_one_second_ttl_expires() {
    let server = server();
    let mut store = open(&server);
    store.set("short", DOC, Some(1)).unwrap();
    assert_eq!(store.get("short").unwrap().as_deref(), Some(DOC));

    let gone = eventually(Duration::from_secs(3), || {
        store.get("short").unwrap().is_none()
    });
    assert!(gone, "a task with a 1 s TTL was still there after 3 s");
    assert!(!store.exists("short").unwrap());
    assert_eq!(store.ttl("short").unwrap(), None);
    assert!(!store.delete("short").unwrap());
}

// --- ttl and exists ---------------------------------------------------------------------

#[test]
fn ttl_reports_seconds_left_for_an_expiring_task() {
    let server = server();
    let mut store = open(&server);
    store.set("t1", DOC, Some(100)).unwrap();
    match store.ttl("t1").unwrap() {
        Some(TimeToLive::ExpiresIn(s)) => assert!((95..=100).contains(&s), "{s}"),
        other => panic!("expected ExpiresIn, got {other:?}"),
    }
}

#[test]
fn ttl_reports_persistent_for_a_key_written_by_plain_set() {
    let server = server();
    plain_set(&mut plain(&server), &key("forever"), DOC);
    let mut store = open(&server);
    assert!(matches!(
        store.ttl("forever").unwrap(),
        Some(TimeToLive::Persistent)
    ));
    assert_eq!(store.get("forever").unwrap().as_deref(), Some(DOC));
}

#[test]
fn ttl_of_missing_task_is_none() {
    let server = server();
    let mut store = open(&server);
    assert!(store.ttl("nope").unwrap().is_none());
}

#[test]
fn exists_is_true_only_while_the_task_is_stored() {
    let server = server();
    let mut store = open(&server);
    assert!(!store.exists("t1").unwrap());
    store.set("t1", DOC, None).unwrap();
    assert!(store.exists("t1").unwrap());
    store.delete("t1").unwrap();
    assert!(!store.exists("t1").unwrap());
}

#[test]
fn exists_sees_a_task_written_by_plain_set() {
    let server = server();
    plain_set(&mut plain(&server), &key("other"), "{}");
    assert!(open(&server).exists("other").unwrap());
}

/// `ping` is one `PING` and nothing else; it fails while Redis is down and succeeds again,
/// on a new connection, once Redis is back.
#[test]
fn ping_is_one_round_trip_that_fails_while_redis_is_down() {
    let mut server = server();
    let mut store = open(&server);
    store.set("t1", DOC, None).unwrap();
    let mut con = plain(&server);
    let before = command_calls(&mut con);
    store.ping().unwrap();
    let after = command_calls(&mut con);
    assert_eq!(
        command_delta(&before, &after),
        [("ping".to_owned(), 1)].into()
    );
    assert_eq!(dbsize(&mut con), 1);

    server.stop().unwrap();
    assert_eq!(kind(&store.ping()), Some(ErrorKind::Connection));
    server.restart().unwrap();
    store.ping().unwrap();
}

// --- options ----------------------------------------------------------------------------

#[test]
fn custom_key_prefix_is_used_verbatim() {
    let server = server();
    let mut store = open_with(Options {
        key_prefix: Some("jobs/v2:".into()),
        ..options(&server)
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();

    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, "jobs/v2:t1"),
        Some(DOC.as_bytes().to_vec())
    );
    assert_eq!(plain_get(&mut con, &key("t1")), None);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn empty_key_prefix_stores_under_the_bare_id() {
    let server = server();
    let mut store = open_with(Options {
        key_prefix: Some(String::new()),
        ..options(&server)
    })
    .unwrap();
    store.set("t1", DOC, None).unwrap();
    assert_eq!(
        plain_get(&mut plain(&server), "t1"),
        Some(DOC.as_bytes().to_vec())
    );
}

#[test]
fn default_ttl_option_applies_when_set_has_no_ttl() {
    let server = server();
    let mut store = open_with(Options {
        default_ttl_seconds: Some(60),
        ..options(&server)
    })
    .unwrap();
    store.set("default", DOC, None).unwrap();
    store.set("explicit", DOC, Some(500)).unwrap();

    let mut con = plain(&server);
    let ttl = plain_ttl(&mut con, &key("default"));
    assert!((55..=60).contains(&ttl), "TTL {ttl}");
    let ttl = plain_ttl(&mut con, &key("explicit"));
    assert!((495..=500).contains(&ttl), "TTL {ttl}");
}

#[test]
fn out_of_range_options_are_invalid_input() {
    let server = server();
    let cases = [
        Options {
            default_ttl_seconds: Some(0),
            ..options(&server)
        },
        Options {
            default_ttl_seconds: Some(3_153_600_001),
            ..options(&server)
        },
        Options {
            timeout_ms: Some(0),
            ..options(&server)
        },
        Options {
            timeout_ms: Some(3_600_001),
            ..options(&server)
        },
        Options {
            max_document_bytes: Some(1),
            ..options(&server)
        },
        Options {
            max_document_bytes: Some(536_870_913),
            ..options(&server)
        },
    ];
    for case in cases {
        assert_invalid_input(open_with(case));
    }
}

#[test]
fn database_number_in_url_selects_that_database() {
    let server = server();
    let mut store = open_with(Options::new(format!("{}/3", server.url()))).unwrap();
    store.set("t1", DOC, None).unwrap();

    assert_eq!(dbsize(&mut plain(&server)), 0);
    let mut db3 = plain_url(&format!("{}/3", server.url()));
    assert_eq!(
        plain_get(&mut db3, &key("t1")),
        Some(DOC.as_bytes().to_vec())
    );
}

// --- documents --------------------------------------------------------------------------

#[test]
fn document_written_like_python_json_dumps_reads_back_byte_for_byte() {
    // json.dumps({"id": "t1", "status": "pending", "query": "café", "progress": 0}):
    // ", " and ": " separators, non-ASCII as \u escapes.
    let python = r#"{"id": "t1", "status": "pending", "query": "caf\u00e9", "progress": 0}"#;
    let server = server();
    let mut con = plain(&server);
    let () = redis::cmd("SETEX")
        .arg(key("t1"))
        .arg(DEFAULT_TTL)
        .arg(python)
        .query(&mut con)
        .unwrap();

    let mut store = open(&server);
    let got = store
        .get("t1")
        .unwrap()
        .expect("the task written by Python");
    assert_eq!(got.as_bytes(), python.as_bytes());
    assert!(
        matches!(store.ttl("t1").unwrap(), Some(TimeToLive::ExpiresIn(s)) if s > DEFAULT_TTL - 10)
    );
}

#[test]
fn unicode_documents_and_ids_round_trip() {
    let server = server();
    let mut store = open(&server);
    let id = "tâche-日本-🦀";
    let doc = r#"{"title": "naïve café ☕", "lang": "日本語", "clef": "𝄞", "rtl": "עברית"}"#;
    store.set(id, doc, None).unwrap();

    assert_eq!(store.get(id).unwrap().as_deref(), Some(doc));
    assert_eq!(
        plain_get(&mut plain(&server), &key(id)),
        Some(doc.as_bytes().to_vec())
    );
}

#[test]
fn document_with_spaces_and_crlf_is_stored_and_read_back_unchanged() {
    // Raw CRLF and spaces between tokens, and RESP-looking text (escaped CRLF) inside a string:
    // the value must travel as one bulk string, never split on spaces or lines. Ids may
    // contain spaces too (only control characters are excluded).
    let doc = "{\r\n  \"q\" : \"SET a b\\r\\n*3\\r\\n$3\\r\\nDEL\\r\\n\",\r\n  \"s\": \"  two  spaces  \"\r\n}";
    let server = server();
    let mut store = open(&server);
    store.set("t 1", doc, None).unwrap();

    assert_eq!(store.get("t 1").unwrap().as_deref(), Some(doc));
    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("t 1")),
        Some(doc.as_bytes().to_vec())
    );
    assert_eq!(dbsize(&mut con), 1);
}

#[test]
fn document_with_surrounding_whitespace_is_stored_unchanged() {
    let doc = " \n {\"a\": 1.50, \"b\": [1, 2]}\t\n";
    let server = server();
    let mut store = open(&server);
    store.set("t1", doc, None).unwrap();
    assert_eq!(
        plain_get(&mut plain(&server), &key("t1")),
        Some(doc.as_bytes().to_vec())
    );
}

#[test]
fn documents_that_are_not_one_json_object_are_invalid_input_and_not_written() {
    let server = server();
    let mut store = open(&server);
    let bad = [
        "",
        " ",
        "[]",
        "\"x\"",
        "{",
        "null",
        "42",
        "{\"a\": 1} {\"b\": 2}",
        "{\"a\": 1,}",
        "{'a': 1}",
        // A raw line break inside a JSON string is not allowed by RFC 8259.
        "{\"a\": \"line\r\nbreak\"}",
    ];
    for doc in bad {
        match store.set("t1", doc, None) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {}
            other => panic!("document {doc:?}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn document_larger_than_max_document_bytes_is_invalid_input() {
    let server = server();
    let mut store = open_with(Options {
        max_document_bytes: Some(64),
        ..options(&server)
    })
    .unwrap();
    let fits = format!("{{\"a\": \"{}\"}}", "x".repeat(64 - 9));
    let too_big = format!("{{\"a\": \"{}\"}}", "x".repeat(65 - 9));
    assert_eq!((fits.len(), too_big.len()), (64, 65));

    assert_invalid_input(store.set("big", &too_big, None));
    store.set("fits", &fits, None).unwrap();
    let mut con = plain(&server);
    assert_eq!(plain_get(&mut con, &key("big")), None);
    assert_eq!(plain_get(&mut con, &key("fits")), Some(fits.into_bytes()));
}

#[test]
fn large_document_round_trips() {
    let server = server();
    let mut store = open(&server);
    let doc = format!("{{\"blob\": \"{}\"}}", "ab cd\\r\\n".repeat(200_000));
    store.set("large", &doc, None).unwrap();
    assert_eq!(store.get("large").unwrap().as_deref(), Some(doc.as_str()));
}

#[test]
fn ttl_out_of_range_is_invalid_input_and_nothing_is_written() {
    let server = server();
    let mut store = open(&server);
    assert_invalid_input(store.set("t1", DOC, Some(0)));
    assert_invalid_input(store.set("t1", DOC, Some(3_153_600_001)));
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

// --- ids --------------------------------------------------------------------------------

#[test]
fn malformed_ids_are_invalid_input_and_nothing_is_sent() {
    let server = server();
    let mut store = open(&server);
    let long = "a".repeat(1025);
    let long_multibyte = format!("{}a", "é".repeat(512));
    let bad = [
        "",
        &long,
        &long_multibyte,
        "a\0b",
        "a\nb",
        "a\r\nb",
        "\t",
        "tab\there",
        "del\u{7f}",
    ];
    for id in bad {
        let shown = format!("{id:.20?}");
        assert_eq!(
            kind(&store.set(id, DOC, None)),
            Some(ErrorKind::InvalidInput),
            "set {shown}"
        );
        assert_eq!(
            kind(&store.get(id)),
            Some(ErrorKind::InvalidInput),
            "get {shown}"
        );
        assert_eq!(
            kind(&store.delete(id)),
            Some(ErrorKind::InvalidInput),
            "delete {shown}"
        );
        assert_eq!(
            kind(&store.ttl(id)),
            Some(ErrorKind::InvalidInput),
            "ttl {shown}"
        );
        assert_eq!(
            kind(&store.exists(id)),
            Some(ErrorKind::InvalidInput),
            "exists {shown}"
        );
    }
    assert_eq!(dbsize(&mut plain(&server)), 0);
}

#[test]
fn id_of_exactly_1024_bytes_is_accepted() {
    let server = server();
    let mut store = open(&server);
    for id in ["a".repeat(1024), "é".repeat(512)] {
        store.set(&id, DOC, None).unwrap();
        assert_eq!(
            plain_get(&mut plain(&server), &key(&id)),
            Some(DOC.as_bytes().to_vec())
        );
    }
}

#[test]
fn ids_are_case_sensitive_and_used_verbatim() {
    let server = server();
    let mut store = open(&server);
    store.set("Task", r#"{"v": 1}"#, None).unwrap();
    store.set("task", r#"{"v": 2}"#, None).unwrap();
    store.set("a:b/c*?[x]", r#"{"v": 3}"#, None).unwrap();

    let mut con = plain(&server);
    assert_eq!(
        plain_get(&mut con, &key("Task")),
        Some(br#"{"v": 1}"#.to_vec())
    );
    assert_eq!(
        plain_get(&mut con, &key("task")),
        Some(br#"{"v": 2}"#.to_vec())
    );
    assert_eq!(
        plain_get(&mut con, &key("a:b/c*?[x]")),
        Some(br#"{"v": 3}"#.to_vec())
    );
}

// --- data written by others -------------------------------------------------------------

#[test]
fn key_holding_a_list_gives_a_wrongtype_server_error() {
    let server = server();
    let mut con = plain(&server);
    let _: i64 = redis::cmd("LPUSH")
        .arg(key("t1"))
        .arg("x")
        .query(&mut con)
        .unwrap();
    let mut store = open(&server);
    match store.get("t1") {
        Err(error) if error.kind() == ErrorKind::Server => {
            let message = error.message();
            assert!(message.contains("WRONGTYPE"), "{message}")
        }
        other => panic!("expected a Server error, got {other:?}"),
    }
    // The store stays usable after an error reply.
    assert!(store.exists("t1").unwrap());
}

#[test]
fn value_that_is_not_utf8_is_corrupt_data() {
    let server = server();
    plain_set(
        &mut plain(&server),
        &key("t1"),
        &b"{\"a\": \"\xff\xfe\"}"[..],
    );
    let mut store = open(&server);
    assert_eq!(kind(&store.get("t1")), Some(ErrorKind::CorruptData));
    assert!(store.exists("t1").unwrap());
}

#[test]
fn stored_value_larger_than_max_document_bytes_is_a_protocol_error() {
    let server = server();
    plain_set(
        &mut plain(&server),
        &key("t1"),
        format!("{{\"a\": \"{}\"}}", "x".repeat(100)),
    );
    let mut store = open_with(Options {
        max_document_bytes: Some(64),
        ..options(&server)
    })
    .unwrap();
    assert_eq!(kind(&store.get("t1")), Some(ErrorKind::Protocol));
    // The connection was discarded; the next call reconnects.
    assert!(store.exists("t1").unwrap());
}

// --- connection failures, bad input, authentication --------------------------------------
// See faults.rs, bad_input.rs and security.rs.

#[test]
fn two_stores_share_one_database() {
    let server = server();
    let mut a = open(&server);
    let mut b = open(&server);
    a.set("t1", DOC, None).unwrap();
    assert_eq!(b.get("t1").unwrap().as_deref(), Some(DOC));
    assert!(b.delete("t1").unwrap());
    assert!(!a.exists("t1").unwrap());
}

// --- properties -------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn valid_id() -> impl Strategy<Value = String> {
        // 1..=64 characters, none of them a control character.
        proptest::collection::vec(
            any::<char>().prop_filter("no controls", |c| !c.is_control()),
            1..=64,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn any_json_object_round_trips_byte_for_byte(
            id in valid_id(),
            text in any::<String>(),
            number in any::<i64>(),
            pretty in any::<bool>(),
        ) {
            thread_local! {
                static SERVER: (RedisServer, std::cell::RefCell<taskstore_host::TaskStore>) = {
                    let server = server();
                    let store = open(&server);
                    (server, std::cell::RefCell::new(store))
                };
            }
            let value = serde_json::json!({
                "id": id.clone(),
                "text": text.clone(),
                "n": number,
                "nested": {"list": [text, null]},
            });
            let doc = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            SERVER.with(|(server, store)| {
                let mut store = store.borrow_mut();
                store.set(&id, &doc, None).unwrap();
                prop_assert_eq!(store.get(&id).unwrap(), Some(doc.clone()));
                prop_assert_eq!(plain_get(&mut plain(server), &key(&id)), Some(doc.into_bytes()));
                Ok(())
            })?;
        }
    }
}
