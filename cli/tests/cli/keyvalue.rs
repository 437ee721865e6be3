//! `taskstore compose`, `taskstore run` and `taskstore serve --component`: applications
//! written only against `wasi:keyvalue` (the host's test applications: a `wasi:cli` command
//! per version and a `wasi:http` application), composed and run by the binary against a
//! private `redis-server`.

use std::path::{Path, PathBuf};

use redis::Commands;

use crate::run::{taskstore, Run};
use crate::serve::{agent, get, post, Serve};
use taskstore_host::keyvalue::test_consumers;
use taskstore_testing::redis_server::RedisServer;

fn server() -> RedisServer {
    RedisServer::start().expect("redis-server starts")
}

/// `bytes` written to `name` in `dir`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `taskstore --redis <server> run <app> <flags> -- <args>`.
fn run_app(
    server: &RedisServer,
    app: &Path,
    flags: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let url = server.url();
    let mut all = vec!["--redis", url.as_str(), "run", app.to_str().unwrap()];
    all.extend_from_slice(flags);
    all.push("--");
    all.extend_from_slice(args);
    taskstore(&all, env, "")
}

/// `taskstore compose APP -o OUT`, which must succeed.
fn compose(app: &Path, out: &Path) {
    let run = taskstore(
        &[
            "compose",
            app.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_composed_application_runs_every_function() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "draft2.wasm", test_consumers::DRAFT2);
    let composed = dir.path().join("composed.wasm");
    let run = taskstore(
        &[
            "compose",
            app.to_str().unwrap(),
            "-o",
            composed.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("composed.wasm"), "{run:?}");
    let run = run_app(
        &server,
        &composed,
        &["--bucket", "app"],
        &["suite", "app"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("ok cas") && run.stdout.contains("suite passed"),
        "{run:?}"
    );
}

#[test]
fn run_composes_on_the_fly_and_passes_arguments_and_the_exit_status() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "draft.wasm", test_consumers::DRAFT);
    let bucket = ["--bucket", "notes=n/"];
    let run = run_app(
        &server,
        &app,
        &bucket,
        &["set", "notes", "k", "hello world"],
        &[],
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, "set\n"), "{run:?}");
    let run = run_app(&server, &app, &bucket, &["get", "notes", "k"], &[]);
    assert_eq!(run.stdout, "value hello world\n", "{run:?}");
    let run = run_app(&server, &app, &bucket, &["incr", "notes", "c", "3"], &[]);
    assert_eq!(run.stdout, "value 3\n", "{run:?}");
    // A bucket not given is `no-such-store`; the application's failure is the exit status.
    let run = run_app(&server, &app, &bucket, &["open", "app"], &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "open-error Error::NoSuchStore\n", "{run:?}");
}

#[test]
fn compose_refuses_a_version_it_does_not_export_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = test_consumers::DRAFT2.to_vec();
    let (from, to) = (b"@0.2.0-draft2".as_slice(), b"@0.2.0-draft7".as_slice());
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
        }
        i += 1;
    }
    let app = write(dir.path(), "future.wasm", &bytes);
    let out = dir.path().join("out.wasm");
    let run = taskstore(
        &[
            "compose",
            app.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
        "",
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("wasi:keyvalue/store@0.2.0-draft7"),
        "{run:?}"
    );
    assert!(!out.exists());
}

#[test]
fn a_wrong_password_fails_the_run_without_showing_it() {
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("the-right-one")
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "draft2.wasm", test_consumers::DRAFT2);
    let run = run_app(
        &server,
        &app,
        &[],
        &["open", "default"],
        &[("REDIS_PASSWORD", "sw0rdfish-wrong")],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("authentication failed"), "{run:?}");
    assert!(!format!("{run:?}").contains("sw0rdfish"), "{run:?}");
    let run = run_app(
        &server,
        &app,
        &[],
        &["open", "default"],
        &[("REDIS_PASSWORD", "the-right-one")],
    );
    assert_eq!(run.stdout, "opened\n", "{run:?}");
}

#[test]
fn export_writes_the_key_value_component() {
    let dir = tempfile::tempdir().unwrap();
    let run = taskstore(&["export", dir.path().to_str().unwrap()], &[], "");
    assert_eq!(run.code, 0, "{run:?}");
    let kv = std::fs::read(dir.path().join("taskstore-kv.wasm")).unwrap();
    assert_eq!(kv, taskstore_host::keyvalue::KV_COMPONENT);
    assert!(run.stdout.contains("taskstore-kv.wasm"), "{run:?}");
}

#[test]
fn serve_runs_a_composed_http_application_with_its_buckets_from_config() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "http.wasm", test_consumers::HTTP_DRAFT2);
    let composed = dir.path().join("http-redis.wasm");
    compose(&app, &composed);
    let component = composed.to_str().unwrap();
    let serve = Serve::start(
        &server.url(),
        &["--component", component, "--config", "buckets=app=web/"],
    );
    let agent = agent();
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();

    let put = agent
        .put(serve.url("/kv/greeting"))
        .send("hello world")
        .expect("an HTTP response");
    assert_eq!(put.status().as_u16(), 204, "{put:?}");
    // The bucket's prefix is the one `buckets` gave, and nothing else was written.
    let stored: Option<String> = redis.get("web/greeting").unwrap();
    assert_eq!(stored.as_deref(), Some("hello world"));
    let keys: Vec<String> = redis.keys("*").unwrap();
    assert_eq!(keys, ["web/greeting"]);

    let fetched = get(&agent, &serve.url("/kv/greeting"));
    assert_eq!(
        (fetched.status, fetched.body.as_str()),
        (200, "hello world")
    );
    let () = redis
        .set("web/from-redis", "written by a plain client")
        .unwrap();
    let fetched = get(&agent, &serve.url("/kv/from-redis"));
    assert_eq!(
        (fetched.status, fetched.body.as_str()),
        (200, "written by a plain client")
    );
    let missing = get(&agent, &serve.url("/kv/missing"));
    assert_eq!(missing.status, 404, "{missing:?}");

    for expected in ["1", "2", "3"] {
        let incremented = post(&agent, &serve.url("/kv/hits/incr"), "");
        assert_eq!(
            (incremented.status, incremented.body.as_str()),
            (200, expected)
        );
    }
    let hits: Option<String> = redis.get("web/hits").unwrap();
    assert_eq!(hits.as_deref(), Some("3"));
    drop(serve);

    // Without `buckets` only `default` opens: the application's bucket is refused.
    let serve = Serve::start(&server.url(), &["--component", component]);
    let refused = get(&agent, &serve.url("/kv/greeting"));
    assert_eq!(refused.status, 500, "{refused:?}");
    assert!(refused.body.contains("NoSuchStore"), "{refused:?}");
}
