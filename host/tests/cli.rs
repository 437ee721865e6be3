//! The `taskstore` binary, run as a user would, against a private `redis-server` per test.
//!
//! Exit codes: 0 success, 1 not found, 2 usage error or invalid input, 3 any other failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use taskstore_host::redis_server::RedisServer;

/// Any one run of the binary ends within this, or the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const DOC: &str = r#"{"id": "t1", "status": "pending", "query": "a b\r\nc", "progress": 0}"#;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `taskstore` with `args`, no `REDIS_URL` unless `env` sets it, and `stdin` as input.
fn taskstore(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let out = tempfile::tempdir().expect("temp dir for the binary's output");
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskstore"));
    command
        .args(args)
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        // Files, not pipes: a full pipe cannot stall the child while we wait for it.
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let mut child = command.spawn().expect("run the taskstore binary");
    {
        let mut input = child.stdin.take().expect("piped stdin");
        // The binary may exit without reading stdin; a broken pipe is then expected.
        let _ = input.write_all(stdin.as_bytes());
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for taskstore") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskstore {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status
            .code()
            .expect("taskstore exited normally, not by a signal"),
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    }
}

fn read(path: &Path) -> String {
    String::from_utf8(std::fs::read(path).expect("read captured output")).expect("UTF-8 output")
}

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

fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
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
