//! The `taskstore` binary under failure: the password never shows in its output whatever
//! goes wrong, and tasks one process wrote survive a Redis crash for the next process.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::thread;
use std::time::Duration;

use crate::run::Run;
use taskstore_testing::redis_server::{RedisServer, RefusingPort};

const SECRET: &str = "hunter2-S3CRET";
const DOC: &str = r#"{"id": "t1", "status": "pending"}"#;

/// Runs `taskstore` with `args` and `env`, nothing on stdin.
fn taskstore(args: &[&str], env: &[(&str, &str)]) -> Run {
    crate::run::taskstore(args, env, "")
}

/// A loopback server that answers every read with bytes that are not RESP, until the test
/// process ends.
fn garbage_server() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                if stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn password_never_shows_in_cli_output_whatever_fails() {
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("right-password")
        .start()
        .unwrap();
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let garbage_port = garbage_server();
    let refusing = RefusingPort::bind().unwrap();
    let closed_port = refusing.port();
    let port = server.port();
    // (URL, expected exit code): 2 for a URL the component rejects, 3 for the rest.
    let cases = [
        (format!("redis://:{SECRET}@127.0.0.1:notaport"), 2),
        (format!("http://user:{SECRET}@127.0.0.1:{port}"), 2),
        (format!("redis://:{SECRET}%zz@127.0.0.1:{port}"), 2),
        (format!("redis://:{SECRET}@127.0.0.1:{port}/x"), 2),
        (format!("redis://:{SECRET}@127.0.0.1:{closed_port}"), 3),
        (format!("redis://:{SECRET}@127.0.0.1:{silent_port}"), 3),
        (format!("redis://:{SECRET}@127.0.0.1:{garbage_port}"), 3),
        (format!("redis://:{SECRET}@127.0.0.1:{port}"), 3),
        (format!("redis://someone:{SECRET}@127.0.0.1:{port}"), 3),
    ];
    for (url, code) in &cases {
        let by_flag = taskstore(&["--timeout-ms", "300", "--redis", url, "get", "t1"], &[]);
        let by_env = taskstore(
            &["--timeout-ms", "300", "set", "t1", DOC],
            &[("REDIS_URL", url)],
        );
        for run in [by_flag, by_env] {
            assert_eq!(run.code, *code, "{url}: {run:?}");
            assert!(run.stderr.starts_with("taskstore: "), "{url}: {run:?}");
            assert_eq!(run.stderr.lines().count(), 1, "{url}: {run:?}");
            assert!(!run.stderr.contains(SECRET), "{url}: {run:?}");
            assert!(!run.stdout.contains(SECRET), "{url}: {run:?}");
        }
    }
    drop(silent);
}

#[test]
fn tasks_one_process_wrote_survive_a_redis_crash_for_the_next_process() {
    let mut server = RedisServer::builder()
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .start()
        .unwrap();
    let url = server.url();
    let run = taskstore(&["--redis", &url, "set", "t1", DOC, "--ttl", "1000"], &[]);
    assert_eq!(run.code, 0, "{run:?}");

    server.kill().unwrap();
    server.restart().unwrap();

    let run = taskstore(&["--redis", &url, "get", "t1"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim_end(), DOC, "{run:?}");
    let run = taskstore(&["--redis", &url, "ttl", "t1"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let left: u64 = run.stdout.trim().parse().expect("seconds left");
    assert!((970..=1000).contains(&left), "{left} s left");
}
