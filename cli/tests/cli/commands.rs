//! The `taskstore` binary, run as a user would, against a private `redis-server` per test.
//!
//! Exit codes: 0 success, 1 not found, 2 usage error or invalid input, 3 any other failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::run::{cache_dir, taskstore, Run};
use taskstore_testing::redis_server::{RedisServer, RefusingPort};

const DOC: &str = r#"{"id": "t1", "status": "pending", "query": "a b\r\nc", "progress": 0}"#;

/// `taskstore --redis <server> <args>`.
fn on(server: &RedisServer, args: &[&str]) -> Run {
    on_with_stdin(server, args, "")
}

fn on_with_stdin(server: &RedisServer, args: &[&str], stdin: &str) -> Run {
    let url = server.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(args);
    taskstore(&all, &[], stdin)
}

/// One raw RESP command to `server` (no client library involved); returns the raw reply.
fn raw(server: &RedisServer, args: &[&[u8]]) -> Vec<u8> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).expect("send");
    // Replies used here are short and arrive in one segment; stop at the end of the reply.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&reply) {
        let n = stream.read(&mut buf).expect("read reply");
        assert!(n > 0, "connection closed mid-reply: {reply:?}");
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

/// Whether `reply` holds a whole simple reply or bulk string.
fn complete(reply: &[u8]) -> bool {
    let Some(line) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply[0] != b'$' {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..line])
        .unwrap()
        .parse()
        .unwrap();
    len < 0 || reply.len() >= line + 2 + len as usize + 2
}

fn bulk(value: &str) -> Vec<u8> {
    format!("${}\r\n{value}\r\n", value.len()).into_bytes()
}

/// A loopback port that refuses connections for the rest of this test process: its guard is
/// leaked, so no other test can take the port meanwhile (a port bound and released could be).
fn closed_port() -> u16 {
    let refusing = RefusingPort::bind().expect("bind 127.0.0.1:0 without listening");
    let port = refusing.port();
    std::mem::forget(refusing);
    port
}

fn assert_one_error_line(run: &Run) {
    assert!(run.stderr.starts_with("taskstore: "), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    assert!(!run.stderr.contains("backtrace"), "{run:?}");
}

#[test]
fn set_get_ttl_exists_delete_round_trip_with_exit_codes() {
    let server = RedisServer::start().unwrap();

    let set = on(&server, &["set", "t1", DOC]);
    assert_eq!(set.code, 0, "{set:?}");
    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(DOC));

    let get = on(&server, &["get", "t1"]);
    assert_eq!(
        (get.code, get.stdout.as_str()),
        (0, format!("{DOC}\n").as_str()),
        "{get:?}"
    );

    let ttl = on(&server, &["ttl", "t1"]);
    assert_eq!(ttl.code, 0, "{ttl:?}");
    let seconds: u64 = ttl.stdout.trim_end().parse().expect("ttl prints seconds");
    assert!((604_790..=604_800).contains(&seconds), "{ttl:?}");

    let exists = on(&server, &["exists", "t1"]);
    assert_eq!(
        (exists.code, exists.stdout.as_str()),
        (0, "true\n"),
        "{exists:?}"
    );

    let delete = on(&server, &["delete", "t1"]);
    assert_eq!(delete.code, 0, "{delete:?}");
    assert_eq!(raw(&server, &[b"EXISTS", b"research_task:t1"]), b":0\r\n");
}

/// The binary these tests run compiles through a cache of this test process's own, never
/// the user's `~/.cache/taskstore` (which other test runs and builds share).
#[test]
fn test_runs_fill_their_own_component_cache() {
    let server = RedisServer::start().unwrap();
    let run = on(&server, &["exists", "t1"]);
    assert_eq!(run.code, 1, "{run:?}");
    let cached: Vec<_> = std::fs::read_dir(cache_dir())
        .expect("the test cache dir exists")
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        cached
            .iter()
            .any(|name| name.to_string_lossy().ends_with(".cwasm")),
        "{cached:?}"
    );
}

#[test]
fn absent_task_exits_1_for_get_delete_ttl_and_exists() {
    let server = RedisServer::start().unwrap();
    for command in ["get", "delete", "ttl"] {
        let run = on(&server, &[command, "missing"]);
        assert_eq!(run.code, 1, "{command}: {run:?}");
        assert_eq!(run.stdout, "", "{command}: {run:?}");
        assert_one_error_line(&run);
    }
    let exists = on(&server, &["exists", "missing"]);
    assert_eq!(
        (exists.code, exists.stdout.as_str()),
        (1, "false\n"),
        "{exists:?}"
    );
}

#[test]
fn set_with_ttl_option_expires_after_that_many_seconds() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "t1", DOC, "--ttl", "100"]).code, 0);
    let ttl = on(&server, &["ttl", "t1"]);
    let seconds: u64 = ttl.stdout.trim_end().parse().expect("ttl prints seconds");
    assert!((95..=100).contains(&seconds), "{ttl:?}");
}

#[test]
fn ttl_prints_persistent_for_a_task_without_expiry() {
    let server = RedisServer::start().unwrap();
    assert_eq!(
        raw(&server, &[b"SET", b"research_task:t1", DOC.as_bytes()]),
        b"+OK\r\n"
    );
    let ttl = on(&server, &["ttl", "t1"]);
    assert_eq!(
        (ttl.code, ttl.stdout.as_str()),
        (0, "persistent\n"),
        "{ttl:?}"
    );
}

#[test]
fn set_reads_the_document_from_stdin_when_given_dash() {
    let server = RedisServer::start().unwrap();
    let set = on_with_stdin(&server, &["set", "t1", "-"], &format!("{DOC}\n"));
    assert_eq!(set.code, 0, "{set:?}");
    // The one trailing newline is dropped; the rest is stored byte for byte.
    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(DOC));
}

#[test]
fn get_output_piped_into_set_round_trips() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "a", DOC]).code, 0);
    let get = on(&server, &["get", "a"]);
    assert_eq!(
        on_with_stdin(&server, &["set", "b", "-"], &get.stdout).code,
        0
    );
    assert_eq!(raw(&server, &[b"GET", b"research_task:b"]), bulk(DOC));
}

#[test]
fn prefix_option_sets_the_key_prefix() {
    let server = RedisServer::start().unwrap();
    assert_eq!(
        on(&server, &["--prefix", "jobs:", "set", "t1", DOC]).code,
        0
    );
    assert_eq!(raw(&server, &[b"GET", b"jobs:t1"]), bulk(DOC));
}

#[test]
fn invalid_id_exits_2_and_writes_nothing() {
    let server = RedisServer::start().unwrap();
    for id in ["", "a\nb", &"x".repeat(1025)] {
        let run = on(&server, &["set", id, DOC]);
        assert_eq!(run.code, 2, "{id:.20?}: {run:?}");
        assert_one_error_line(&run);
        assert_eq!(on(&server, &["get", id]).code, 2, "{id:.20?}");
    }
    assert_eq!(raw(&server, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn invalid_document_exits_2_and_writes_nothing() {
    let server = RedisServer::start().unwrap();
    for document in ["[]", "{", "not json"] {
        let run = on(&server, &["set", "t1", document]);
        assert_eq!(run.code, 2, "{document}: {run:?}");
        assert_one_error_line(&run);
    }
    assert_eq!(raw(&server, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["get"],
        &["set"],
        &["get", "a", "b"],
        &["set", "t1", "{}", "--ttl", "soon"],
        &["--no-such-flag", "get", "t1"],
        &["--timeout-ms", "-5", "get", "t1"],
    ];
    for args in cases {
        let run = taskstore(args, &[], "");
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn unreachable_redis_exits_3_with_one_line_naming_the_address_and_no_password() {
    let port = closed_port();
    let url = format!("redis://user:hunter2-S3CRET@127.0.0.1:{port}");
    let backtraces = [("RUST_BACKTRACE", "1")];
    for run in [
        taskstore(&["--redis", &url, "get", "t1"], &backtraces, ""),
        taskstore(&["exists", "t1"], &[("REDIS_URL", &url), backtraces[0]], ""),
        taskstore(
            &["set", "t1", DOC],
            &[("REDIS_URL", &url), backtraces[0]],
            "",
        ),
    ] {
        assert_eq!(run.code, 3, "{run:?}");
        assert_one_error_line(&run);
        assert!(run.stderr.contains(&format!("127.0.0.1:{port}")), "{run:?}");
        assert!(!run.stderr.contains("hunter2-S3CRET"), "{run:?}");
        assert!(!run.stdout.contains("hunter2-S3CRET"), "{run:?}");
    }
}

#[test]
fn wrong_password_exits_3_without_showing_it() {
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("right")
        .start()
        .unwrap();
    let url = format!("redis://:wr0ng-pa55@127.0.0.1:{}", server.port());
    let run = taskstore(&["--redis", &url, "get", "t1"], &[], "");
    assert_eq!(run.code, 3, "{run:?}");
    assert_one_error_line(&run);
    assert!(!run.stderr.contains("wr0ng-pa55"), "{run:?}");
}

/// A password of `len` characters that alternates non-ASCII letters (which no message of
/// the CLI holds) with the characters a URL gives meaning to, so that any two consecutive
/// characters of it in the output can only have come from the password.
fn marked_password(len: usize) -> String {
    "Ж/λ@ß:€#Я?é%".chars().cycle().take(len).collect()
}

/// Whether `output` shows any two consecutive characters of `password` (the one character
/// of a one-character password).
fn shows_part_of(output: &str, password: &str) -> bool {
    let chars: Vec<char> = password.chars().collect();
    chars
        .windows(chars.len().min(2))
        .any(|part| output.contains(&part.iter().collect::<String>()))
}

/// The issue's report, then passwords of every length from 1 to 24 holding `/`, `@`, `:`,
/// `#`, `?` and `%`, raw in plain and cluster URLs, through every error the CLI can reach
/// with them: a malformed URL, an unreachable server, a wrong password, a cluster seed that
/// cannot be reached.
#[test]
fn no_part_of_a_password_with_url_characters_shows_in_any_error() {
    let report = taskstore(
        &[
            "--redis",
            "redis://:Xk9Q/Zp2SecretTail@127.0.0.1:6379x",
            "get",
            "t1",
        ],
        &[],
        "",
    );
    assert_eq!(report.code, 2, "{report:?}");
    assert!(!report.stderr.contains("Zp2"), "{report:?}");

    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("right")
        .start()
        .unwrap();
    let closed = closed_port();
    for len in 1..=24 {
        let password = marked_password(len);
        // A '%' not followed by two hex digits is a malformed URL (exit 2): where the URL
        // must parse, the password's '%' is written `%25`, everything else raw.
        let escaped = password.replace('%', "%25");
        let urls = [
            (2, format!("redis://:{password}@127.0.0.1:{closed}x/1")),
            (2, format!("redis://u:{password}@127.0.0.1:{closed}/x")),
            (3, format!("redis://:{escaped}@127.0.0.1:{closed}/1")),
            (3, format!("redis://:{escaped}@127.0.0.1:{}", server.port())),
            (3, format!("redis+cluster://:{escaped}@127.0.0.1:{closed}")),
            (
                2,
                format!("redis+cluster://:{password}@127.0.0.1:{closed},h:0"),
            ),
        ];
        // Every length meets every path across the sweep, two paths per run of the CLI each.
        for (code, url) in [&urls[len % 6], &urls[(len + 3) % 6]] {
            let run = taskstore(&["--redis", url, "get", "t1"], &[], "");
            assert_eq!(run.code, *code, "{url}: {run:?}");
            assert_one_error_line(&run);
            assert!(!shows_part_of(&run.stderr, &password), "{url}: {run:?}");
            assert!(!shows_part_of(&run.stdout, &password), "{url}: {run:?}");
        }
    }
}

/// `--redis-password-file` and `REDIS_PASSWORD`: the URL on the command line holds none.
#[test]
fn password_file_or_environment_keeps_the_password_out_of_the_url() {
    let password = "Xk9Q/Zp2@Secret:Tail#?%";
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg(password)
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let file = file.to_str().unwrap();
    let url = server.url();

    let set = taskstore(
        &[
            "--redis",
            &url,
            "--redis-password-file",
            file,
            "set",
            "t1",
            DOC,
        ],
        &[],
        "",
    );
    assert_eq!(set.code, 0, "{set:?}");
    let get = taskstore(
        &["--redis", &url, "get", "t1"],
        &[("REDIS_PASSWORD", password)],
        "",
    );
    assert_eq!(get.code, 0, "{get:?}");
    assert_eq!(get.stdout.trim_end(), DOC);
    let user_url = format!("redis://default@127.0.0.1:{}", server.port());
    let exists = taskstore(
        &["--redis", &user_url, "exists", "t1"],
        &[("REDIS_PASSWORD", password)],
        "",
    );
    assert_eq!(exists.code, 0, "{exists:?}");

    let wrong = "Wr0ng/Pass@Word";
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, wrong).unwrap();
    let twice_url = format!("redis://:{password}@127.0.0.1:{}", server.port());
    let wrong_file = wrong_file.to_str().unwrap();
    for (code, url, args, env) in [
        // Wrong: the server refuses it.
        (3, &url, vec!["--redis-password-file", wrong_file], vec![]),
        (3, &url, vec![], vec![("REDIS_PASSWORD", wrong)]),
        // Two passwords: refused before anything is sent.
        (2, &twice_url, vec!["--redis-password-file", file], vec![]),
        (
            2,
            &url,
            vec!["--redis-password-file", "/no/such/file"],
            vec![],
        ),
        (2, &url, vec![], vec![("REDIS_PASSWORD", "")]),
    ] {
        let mut all = vec!["--redis", url.as_str()];
        all.extend(args);
        all.extend(["get", "t1"]);
        let run = taskstore(&all, &env, "");
        assert_eq!(run.code, code, "{all:?}: {run:?}");
        assert_one_error_line(&run);
        for secret in [password, wrong] {
            assert!(!run.stderr.contains(secret), "{all:?}: {run:?}");
            assert!(!run.stderr.contains("Zp2@"), "{all:?}: {run:?}");
        }
    }
}

#[test]
fn help_does_not_show_the_redis_url_from_the_environment() {
    let run = taskstore(
        &["--help"],
        &[("REDIS_URL", "redis://:hunter2-S3CRET@h:1")],
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("hunter2-S3CRET"), "{run:?}");
}

#[test]
fn demo_without_redis_url_runs_the_lifecycle_on_a_throwaway_server() {
    let run = taskstore(&["demo"], &[], "");
    assert_eq!(run.code, 0, "{run:?}");
    let steps = [
        "1. created task",
        "2. running",
        "3. completed",
        "4. read back",
        "5. expires in",
        "6. deleted: true",
        "7. exists afterwards: false",
    ];
    let mut rest = run.stdout.as_str();
    for step in steps {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("no {step:?} in order: {run:?}"));
        rest = &rest[at + step.len()..];
    }
}

#[test]
fn demo_on_a_given_redis_leaves_nothing_behind() {
    let server = RedisServer::start().unwrap();
    let run = taskstore(&["demo"], &[("REDIS_URL", &server.url())], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("7. exists afterwards: false"),
        "{run:?}"
    );
    assert_eq!(raw(&server, &[b"DBSIZE"]), b":0\r\n");
}

// --- set --if-absent, update, expire, list ----------------------------------------------

const RUNNING: &str = r#"{"id": "t1", "status": "running", "progress": 10}"#;

/// The integer reply `:<n>\r\n` as a number.
fn integer(reply: &[u8]) -> i64 {
    let text = std::str::from_utf8(reply).expect("ASCII reply");
    text.strip_prefix(':')
        .and_then(|rest| rest.strip_suffix("\r\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {text:?}"))
}

/// The value of `next-cursor: C` in `stderr`, if there is one.
fn next_cursor(run: &Run) -> Option<String> {
    run.stderr
        .lines()
        .find_map(|line| line.strip_prefix("next-cursor: "))
        .map(str::to_owned)
}

/// The lines of `run`'s stdout, sorted.
fn sorted_lines(run: &Run) -> Vec<String> {
    let mut lines: Vec<String> = run.stdout.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn set_if_absent_creates_once_then_exits_4_leaving_the_task() {
    let server = RedisServer::start().unwrap();
    let first = on(&server, &["set", "t1", DOC, "--if-absent", "--ttl", "100"]);
    assert_eq!((first.code, first.stderr.as_str()), (0, ""), "{first:?}");

    let second = on(&server, &["set", "t1", RUNNING, "--if-absent"]);
    assert_eq!(second.code, 4, "{second:?}");
    assert_eq!(second.stdout, "", "{second:?}");
    assert_one_error_line(&second);
    assert!(second.stderr.contains("already exists"), "{second:?}");

    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(DOC));
    let ttl = integer(&raw(&server, &[b"TTL", b"research_task:t1"]));
    assert!((95..=100).contains(&ttl), "TTL {ttl}");
}

#[test]
fn update_prints_the_patched_document_and_keeps_the_ttl() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "t1", RUNNING, "--ttl", "100"]).code, 0);

    let run = on(
        &server,
        &[
            "update",
            "t1",
            r#"{"status": "completed", "progress": 100}"#,
            "--expect-status",
            "running",
        ],
    );
    let expected = r#"{"id": "t1", "status": "completed", "progress": 100}"#;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, format!("{expected}\n").as_str(), ""),
        "{run:?}"
    );
    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(expected));
    let ttl = integer(&raw(&server, &[b"TTL", b"research_task:t1"]));
    assert!((95..=100).contains(&ttl), "TTL {ttl}");
}

#[test]
fn update_with_ttl_gives_the_task_a_new_ttl() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "t1", RUNNING, "--ttl", "100"]).code, 0);
    let run = on(
        &server,
        &["update", "t1", r#"{"progress": 50}"#, "--ttl", "5000"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let ttl = integer(&raw(&server, &[b"TTL", b"research_task:t1"]));
    assert!((4990..=5000).contains(&ttl), "TTL {ttl}");
}

#[test]
fn update_reads_the_patch_from_stdin_when_given_dash() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "t1", RUNNING]).code, 0);
    let run = on_with_stdin(&server, &["update", "t1", "-"], "{\"note\": \"a b\"}\n");
    let expected = r#"{"id": "t1", "status": "running", "progress": 10, "note": "a b"}"#;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, format!("{expected}\n").as_str()),
        "{run:?}"
    );
}

#[test]
fn update_with_another_status_exits_4_printing_the_current_document() {
    let server = RedisServer::start().unwrap();
    let completed = r#"{"id": "t1", "status": "completed"}"#;
    assert_eq!(on(&server, &["set", "t1", completed]).code, 0);

    let run = on(
        &server,
        &[
            "update",
            "t1",
            r#"{"status": "failed"}"#,
            "--expect-status",
            "running",
        ],
    );
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.stdout, format!("{completed}\n"), "{run:?}");
    assert_one_error_line(&run);
    assert!(run.stderr.contains("\"completed\""), "{run:?}");
    assert!(run.stderr.contains("\"running\""), "{run:?}");
    assert_eq!(
        raw(&server, &[b"GET", b"research_task:t1"]),
        bulk(completed)
    );
}

#[test]
fn update_of_a_missing_task_exits_1_and_creates_nothing() {
    let server = RedisServer::start().unwrap();
    let run = on(&server, &["update", "ghost", r#"{"status": "running"}"#]);
    assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");
    assert_one_error_line(&run);
    assert_eq!(raw(&server, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn update_with_an_invalid_patch_exits_2_and_changes_nothing() {
    let server = RedisServer::start().unwrap();
    assert_eq!(on(&server, &["set", "t1", RUNNING]).code, 0);
    for patch in ["[1]", "{", "null"] {
        let run = on(&server, &["update", "t1", patch]);
        assert_eq!(run.code, 2, "{patch}: {run:?}");
        assert_one_error_line(&run);
    }
    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(RUNNING));
}

#[test]
fn expire_sets_the_ttl_and_exits_1_for_a_missing_task() {
    let server = RedisServer::start().unwrap();
    assert_eq!(
        raw(&server, &[b"SET", b"research_task:t1", RUNNING.as_bytes()]),
        b"+OK\r\n"
    );
    let run = on(&server, &["expire", "t1", "300"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{run:?}");
    let ttl = integer(&raw(&server, &[b"TTL", b"research_task:t1"]));
    assert!((295..=300).contains(&ttl), "TTL {ttl}");
    assert_eq!(raw(&server, &[b"GET", b"research_task:t1"]), bulk(RUNNING));

    let missing = on(&server, &["expire", "ghost", "300"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_one_error_line(&missing);

    let zero = on(&server, &["expire", "t1", "0"]);
    assert_eq!(zero.code, 2, "{zero:?}");
    assert_one_error_line(&zero);
}

#[test]
fn list_prints_one_document_per_line_filtered_by_status() {
    let server = RedisServer::start().unwrap();
    let documents = [
        ("a", r#"{"id": "a", "status": "running"}"#),
        ("b", r#"{"id": "b", "status": "completed"}"#),
        ("c", r#"{"id": "c", "status": "running", "note": "x y"}"#),
    ];
    for (id, document) in documents {
        assert_eq!(on(&server, &["set", id, document]).code, 0);
    }

    let all = on(&server, &["list"]);
    assert_eq!((all.code, all.stderr.as_str()), (0, ""), "{all:?}");
    let mut expected: Vec<String> = documents.iter().map(|(_, d)| (*d).to_owned()).collect();
    expected.sort();
    assert_eq!(sorted_lines(&all), expected);

    let running = on(&server, &["list", "--status", "running"]);
    assert_eq!(running.code, 0, "{running:?}");
    assert_eq!(
        sorted_lines(&running),
        [documents[0].1.to_owned(), documents[2].1.to_owned()]
    );

    let none = on(&server, &["list", "--status", "archived"]);
    assert_eq!((none.code, none.stdout.as_str()), (0, ""), "{none:?}");
}

#[test]
fn list_pages_with_next_cursor_on_stderr_and_all_follows_them() {
    let server = RedisServer::start().unwrap();
    let mut expected = Vec::new();
    for n in 0..5 {
        let document = format!(r#"{{"n": {n}}}"#);
        assert_eq!(on(&server, &["set", &format!("t{n}"), &document]).code, 0);
        expected.push(document);
    }
    expected.sort();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut args = vec!["list", "--limit", "2"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let run = on(&server, &args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.lines().count() <= 2, "{run:?}");
        seen.extend(run.stdout.lines().map(str::to_owned));
        cursor = next_cursor(&run);
        if cursor.is_none() {
            assert_eq!(run.stderr, "", "{run:?}");
            break;
        }
    }
    assert_eq!(cursor, None, "the listing did not end within 10 pages");
    seen.sort();
    assert_eq!(seen, expected);

    let all = on(&server, &["list", "--limit", "2", "--all"]);
    assert_eq!((all.code, all.stderr.as_str()), (0, ""), "{all:?}");
    assert_eq!(sorted_lines(&all), expected);
}

#[test]
fn list_prints_a_multi_line_document_on_one_line() {
    let server = RedisServer::start().unwrap();
    let pretty = "{\r\n  \"id\": \"p\",\n  \"status\": \"done\"\n}";
    assert_eq!(
        raw(&server, &[b"SET", b"research_task:p", pretty.as_bytes()]),
        b"+OK\r\n"
    );
    let run = on(&server, &["list"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    let line = run.stdout.trim_end_matches('\n');
    let printed: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    let stored: serde_json::Value = serde_json::from_str(pretty).unwrap();
    assert_eq!(printed, stored);
}

#[test]
fn list_with_a_malformed_cursor_or_limit_exits_2() {
    let server = RedisServer::start().unwrap();
    for args in [
        &["list", "--cursor", "nonsense"][..],
        &["list", "--limit", "0"],
        &["list", "--limit", "10001"],
    ] {
        let run = on(&server, args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert_one_error_line(&run);
    }
}

#[test]
fn new_commands_reject_bad_usage_with_exit_2() {
    let cases: &[&[&str]] = &[
        &["update", "t1"],
        &["update", "t1", "{}", "--ttl", "soon"],
        &["expire", "t1"],
        &["expire", "t1", "soon"],
        &["expire", "t1", "-1"],
        &["list", "--limit", "many"],
        &["list", "extra"],
        &["set", "t1", "{}", "--if-absent", "yes"],
    ];
    for args in cases {
        let run = taskstore(args, &[], "");
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn demo_refuses_a_second_completion_with_a_conflict() {
    let run = taskstore(&["demo"], &[], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("is refused: conflict"), "{run:?}");
}

/// A cluster URL with one seed: the CLI writes tasks that land on every master (the other
/// masters discovered and allowed), reads, updates and lists them across the cluster.
#[test]
fn cluster_url_works_from_the_cli() {
    let cluster = taskstore_testing::redis_cluster::RedisCluster::start(3)
        .expect("a 3-master redis cluster starts");
    let url = cluster.seed_url(0);
    let ids: Vec<String> = (0..12).map(|i| format!("cli-{i}")).collect();
    let slot = |id: &str| taskstore::cluster::key_slot(format!("research_task:{id}").as_bytes());
    let owners = cluster.slot_owners().unwrap();
    let used: std::collections::BTreeSet<_> =
        ids.iter().map(|id| owners[usize::from(slot(id))]).collect();
    assert_eq!(used.len(), 3, "the ids cover every master");
    for id in &ids {
        let document = format!(r#"{{"id": "{id}", "status": "pending"}}"#);
        let run = taskstore(&["--redis", &url, "set", id, &document], &[], "");
        assert_eq!(run.code, 0, "{run:?}");
    }
    let run = taskstore(
        &[
            "--redis",
            &url,
            "update",
            &ids[5],
            r#"{"status": "running"}"#,
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
    let run = taskstore(&["get", &ids[5]], &[("REDIS_URL", url.as_str())], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains(r#""status":"running""#)
            || run.stdout.contains(r#""status": "running""#),
        "{run:?}"
    );
    let run = taskstore(&["--redis", &url, "list", "--all", "--limit", "5"], &[], "");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), ids.len(), "{run:?}");
    let run = taskstore(
        &["--redis", &url, "list", "--status", "running", "--all"],
        &[],
        "",
    );
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    let run = taskstore(&["--redis", &url, "delete", &ids[0]], &[], "");
    assert_eq!(run.code, 0, "{run:?}");
    let run = taskstore(&["--redis", &url, "get", &ids[0]], &[], "");
    assert_eq!(run.code, 1, "{run:?}");
}

#[test]
fn listing_index_finds_its_own_writes_and_reindex_resumes_from_a_cursor() {
    let server = RedisServer::start().unwrap();
    let indexed = |args: &[&str]| {
        let mut all = vec!["--listing", "index"];
        all.extend_from_slice(args);
        on(&server, &all)
    };
    let ours = r#"{"id": "ours", "status": "pending"}"#;
    assert_eq!(indexed(&["set", "ours", ours]).code, 0);
    // Written as redis-cli or the Python service would: not in the index.
    let mut foreign = Vec::new();
    for n in 0..60 {
        let document = format!(r#"{{"n": {n}, "status": "pending"}}"#);
        let key = format!("research_task:py-{n}");
        assert_eq!(
            raw(&server, &[b"SET", key.as_bytes(), document.as_bytes()]),
            b"+OK\r\n"
        );
        foreign.push(document);
    }
    let by_index = indexed(&["list", "--status", "pending", "--all"]);
    assert_eq!(
        (by_index.code, by_index.stdout.as_str()),
        (0, format!("{ours}\n").as_str())
    );
    let by_scan = on(&server, &["list", "--status", "pending", "--all"]);
    assert_eq!(by_scan.stdout.lines().count(), 61, "{by_scan:?}");

    // reindex continues a scan listing's cursor: the tasks of the first page stay out.
    let first_page = on(&server, &["list", "--limit", "20"]);
    let cursor = next_cursor(&first_page).expect("more than one page");
    let run = on(&server, &["reindex", "--batch", "7", "--cursor", &cursor]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .starts_with("reindex: done: 41 tasks read, 41 indexed"),
        "{run:?}"
    );
    let mut expected: Vec<String> = by_scan
        .stdout
        .lines()
        .filter(|line| !first_page.stdout.lines().any(|listed| listed == *line))
        .map(str::to_owned)
        .collect();
    // Our own write is in the index whichever page it came in.
    if first_page.stdout.contains(ours) {
        expected.push(ours.to_owned());
    }
    expected.sort();
    let after = indexed(&["list", "--status", "pending", "--all"]);
    assert_eq!(sorted_lines(&after), expected);

    let run = on(&server, &["reindex"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .starts_with("reindex: done: 61 tasks read, 61 indexed"),
        "{run:?}"
    );
    let mut all: Vec<String> = foreign.clone();
    all.push(ours.to_owned());
    all.sort();
    assert_eq!(
        sorted_lines(&indexed(&["list", "--status", "pending", "--all"])),
        all
    );

    let bad = on(&server, &["reindex", "--cursor", "not a cursor"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}
