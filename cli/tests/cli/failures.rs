//! Real failure modes through the binary: `READONLY` from a real replica and `LOADING` from
//! a server really loading its dataset reach `taskstore serve`'s clients as `503` with
//! `Retry-After`; and a server that echoes the password in its error text never gets it
//! into the CLI's stderr, `serve`'s HTTP bodies or `serve`'s log.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskstore_testing::fault::{Fault, FaultProxy};
use taskstore_testing::redis_server::RedisServer;

use crate::run::taskstore;
use crate::serve::{agent, get, post, Reply, Serve};

/// Keys `DEBUG POPULATE` adds, and the `key-load-delay` per key (µs): a load of ~4 s.
const FILLER_KEYS: u64 = 4000;
const KEY_LOAD_DELAY_MICROS: u64 = 1000;
/// Passwords of 1, 2, 3 and 16 characters, of characters no message, address or document
/// here holds: any of them in an output is the password leaking.
const ECHOED_PASSWORDS: [&str; 4] = ["§", "§¤", "§¤¶", "§¤¶µ¦¬°±²³·¸¹º¼½"];

/// A `503` that tells the client to come back: Redis was in a passing state.
#[track_caller]
fn assert_busy_retry_after(reply: &Reply) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "storage_busy", "{reply:?}");
    let seconds: u64 = reply
        .retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("no Retry-After: {reply:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(seconds >= 1, "{reply:?}");
}

fn plain(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("redis URL")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to redis")
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).expect("INFO")
}

/// Waits (bounded) until `probe` holds.
fn eventually(limit: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

// --- passing states of real servers -----------------------------------------------------

#[test]
fn a_post_to_a_real_replica_is_a_503_with_retry_after() {
    let primary = RedisServer::start().unwrap();
    let replica = RedisServer::builder()
        .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
        .start()
        .unwrap();
    let mut con = plain(&replica);
    assert!(
        eventually(Duration::from_secs(20), || info(&mut con, "replication")
            .contains("master_link_status:up")),
        "the replica did not sync"
    );
    let serve = Serve::start(&replica.url(), &[]);
    let agent = agent();

    // Reads are served; the write is refused by the replica (READONLY): come back later.
    assert_eq!(get(&agent, &serve.url("/research/tasks")).status, 200);
    let created = post(&agent, &serve.url("/research/tasks"), r#"{"query": "q"}"#);
    assert_busy_retry_after(&created);
    let keys: i64 = redis::cmd("DBSIZE").query(&mut plain(&primary)).unwrap();
    assert_eq!(keys, 0, "nothing was written");
}

#[test]
fn a_get_while_a_real_server_loads_its_dataset_is_a_503_with_retry_after() {
    let server = RedisServer::builder()
        .args(["--enable-debug-command", "local"])
        .start()
        .unwrap();
    let serve = Serve::start(&server.url(), &[]);
    let agent = agent();
    let created = post(&agent, &serve.url("/research/tasks"), r#"{"query": "q"}"#);
    assert_eq!(created.status, 201, "{created:?}");
    let id: Value = serde_json::from_str(&created.body).unwrap();
    let task = serve.url(&format!(
        "/research/tasks/{}",
        id["task_id"].as_str().unwrap()
    ));
    assert_eq!(get(&agent, &task).status, 200);

    server
        .prepare_slow_reload(FILLER_KEYS, Duration::from_micros(KEY_LOAD_DELAY_MICROS))
        .unwrap();
    thread::scope(|scope| {
        // Saves the dataset and loads it back as a restart would, LOADING meanwhile.
        let reload = scope.spawn(|| {
            let mut con = plain(&server);
            con.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            redis::cmd("DEBUG").arg("RELOAD").query::<()>(&mut con)
        });
        let mut watcher = plain(&server);
        let loading = |con: &mut redis::Connection| {
            info(con, "persistence")
                .lines()
                .any(|line| line.trim() == "loading:1")
        };
        assert!(
            eventually(Duration::from_secs(10), || loading(&mut watcher)),
            "the server never started loading"
        );
        assert_busy_retry_after(&get(&agent, &task));
        assert!(
            loading(&mut watcher),
            "the load ended before the request did; raise FILLER_KEYS"
        );
        reload.join().unwrap().expect("DEBUG RELOAD completes");
    });
    // Loaded: the same server answers again.
    assert_eq!(get(&agent, &task).status, 200);
}

// --- a server that echoes the password -------------------------------------------------

fn percent_encoded(password: &str) -> String {
    password.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn echoing(password: &str) -> Vec<u8> {
    format!("-ERR echoed {password} back\r\n").into_bytes()
}

#[track_caller]
fn assert_no_password(what: &str, password: &str, text: &str) {
    for c in password.chars() {
        assert!(!text.contains(c), "{what}: {c:?} of the password in {text}");
    }
}

fn requirepass(password: &str) -> RedisServer {
    RedisServer::builder()
        .arg("--requirepass")
        .arg(password)
        .start()
        .unwrap()
}

#[test]
fn the_cli_never_prints_a_password_the_server_echoes() {
    let cache = tempfile::tempdir().unwrap();
    let cache_env = cache.path().to_str().unwrap();
    for password in ECHOED_PASSWORDS {
        let server = requirepass(password);
        let proxy = FaultProxy::start(server.addr());
        let url = format!("redis://:{}@{}", percent_encoded(password), proxy.addr());
        let in_url = vec!["--redis", url.as_str()];
        let bare_url = format!("redis://{}", proxy.addr());
        let from_env = vec!["--redis", bare_url.as_str()];
        for (how, args, env) in [
            ("URL", &in_url, vec![("TASKSTORE_CACHE_DIR", cache_env)]),
            (
                "REDIS_PASSWORD",
                &from_env,
                vec![
                    ("TASKSTORE_CACHE_DIR", cache_env),
                    ("REDIS_PASSWORD", password),
                ],
            ),
        ] {
            // A server error on the command, and a refused AUTH at connect.
            for (command, reply, argv) in [
                ("GET", echoing(password), vec!["get", "t1"]),
                ("SETEX", echoing(password), vec!["set", "t1", "{}"]),
                (
                    "AUTH",
                    format!("-WRONGPASS echoed {password} back\r\n").into_bytes(),
                    vec!["get", "t1"],
                ),
            ] {
                proxy.arm(command, Fault::Reply(reply), 1);
                let mut all = args.clone();
                all.extend(argv);
                let run = taskstore(&all, &env, "");
                let what = format!("{how}, {command}, {password:?}");
                assert_eq!(run.code, 3, "{what}: {run:?}");
                assert_no_password(&what, password, &format!("{run:?}"));
                assert!(run.stderr.contains("echoed *** back"), "{what}: {run:?}");
            }
        }
    }
}

#[test]
fn serve_never_answers_or_logs_a_password_the_server_echoes() {
    for password in ECHOED_PASSWORDS {
        let server = requirepass(password);
        let proxy = FaultProxy::start(server.addr());
        let url = format!("redis://:{}@{}", percent_encoded(password), proxy.addr());
        let mut serve = Serve::start(&url, &[]);
        let agent = agent();
        let created = post(&agent, &serve.url("/research/tasks"), r#"{"query": "q"}"#);
        assert_eq!(created.status, 201, "{password:?}: {created:?}");
        let id: Value = serde_json::from_str(&created.body).unwrap();
        let task = serve.url(&format!(
            "/research/tasks/{}",
            id["task_id"].as_str().unwrap()
        ));

        proxy.arm("GET", Fault::Reply(echoing(password)), 1);
        let refused = get(&agent, &task);
        assert_eq!(refused.status, 502, "{password:?}: {refused:?}");
        assert_eq!(refused.error_code(), "storage_server");
        assert_no_password("HTTP body", password, &refused.body);

        let (_, stderr) = serve.kill();
        assert_no_password("serve's log", password, &stderr);
        // The log does carry the server's text, scrubbed: the check above saw it.
        assert!(stderr.contains("echoed *** back"), "{password:?}: {stderr}");
    }
}
