//! `taskstore serve`, run as a user would: the composed research-task function over real
//! HTTP on 127.0.0.1, against a private `redis-server` (a TLS one, a 3-master cluster, a
//! 3-master cluster over TLS) per test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};
use taskstore_testing::redis_cluster::{start_node_announcing, RedisCluster};
use taskstore_testing::redis_server::{RedisServer, RefusingPort};

/// Starting the server (compiling the component in a debug build) ends within this.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Any one HTTP exchange ends within this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const TASK_TTL_SECONDS: i64 = 7 * 24 * 60 * 60;

/// A running `taskstore serve`, killed and reaped on drop. Its component cache is this test
/// process's own ([`crate::run::cache_dir`]), so the component is compiled once per run.
pub(crate) struct Serve {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Serve {
    /// `taskstore serve --listen 127.0.0.1:0 --redis URL <extra>`, once it listens.
    pub(crate) fn start(redis_url: &str, extra: &[&str]) -> Serve {
        Serve::start_with_env(redis_url, extra, &[])
    }

    /// As [`Serve::start`], with `env` added to the server's environment.
    pub(crate) fn start_with_env(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskstore"))
            .args(["serve", "--listen", "127.0.0.1:0", "--redis", redis_url])
            .args(extra)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_PASSWORD")
            .env_remove("TASKSTORE_API_KEY")
            // The tests read serve's stderr; an inherited filter would hide its lines.
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .env("TASKSTORE_CACHE_DIR", crate::run::cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run taskstore serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        let mut serve = Serve {
            child: Some(child),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            stdout: line_rx,
            stderr: err_rx,
        };
        let first = serve.next_stdout_line();
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        serve.addr = addr.parse().expect("a socket address");
        serve
    }

    /// The next line of the banner; fails the test (and stops the server) if none comes.
    pub(crate) fn next_stdout_line(&mut self) -> String {
        match self.stdout.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let (status, stderr) = self.kill();
                panic!("taskstore serve did not start ({status:?}): {stderr}");
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` and waits (bounded) for the exit; returns its status and stderr.
    pub(crate) fn signal_and_wait(&mut self, signal: i32) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("still running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: sending a signal to our own child process, which we have not reaped.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("taskstore serve did not exit within 30 s of signal {signal}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        (status, stderr)
    }

    /// Kills the server; its exit status and everything it wrote to stderr.
    pub(crate) fn kill(&mut self) -> (Option<ExitStatus>, String) {
        let Some(mut child) = self.child.take() else {
            return (None, String::new());
        };
        let _ = child.kill();
        let status = child.wait().ok();
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP reply: status, headers we look at, body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    location: Option<String>,
    content_type: Option<String>,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error.code` of a JSON error reply.
    pub(crate) fn error_code(&self) -> String {
        let json = self.json();
        let code = json["error"]["code"].as_str();
        assert!(
            json["error"]["message"].is_string(),
            "no error message: {json}"
        );
        code.unwrap_or_else(|| panic!("no error code: {json}"))
            .to_owned()
    }
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into()
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("an HTTP response");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (location, content_type) = (header("location"), header("content-type"));
    let retry_after = header("retry-after");
    Reply {
        status: response.status().as_u16(),
        location,
        content_type,
        retry_after,
        body: response.body_mut().read_to_string().expect("read the body"),
    }
}

pub(crate) fn get(agent: &ureq::Agent, url: &str) -> Reply {
    reply(agent.get(url).call())
}

fn delete(agent: &ureq::Agent, url: &str) -> Reply {
    reply(agent.delete(url).call())
}

pub(crate) fn post(agent: &ureq::Agent, url: &str, body: &str) -> Reply {
    reply(
        agent
            .post(url)
            .header("content-type", "application/json")
            .send(body),
    )
}

fn patch(agent: &ureq::Agent, url: &str, body: &str, expect_status: Option<&str>) -> Reply {
    let mut request = agent.patch(url).header("content-type", "application/json");
    if let Some(status) = expect_status {
        request = request.header("x-expect-status", status);
    }
    reply(request.send(body))
}

/// POSTs `body` to `path` over a raw connection, writing from another thread while this one
/// reads: a server may answer early (413) and close without reading the rest, which a client
/// that writes everything before reading sees only as a broken pipe. Returns the status and
/// the response body.
fn post_while_reading(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _head, body) = exchange_while_reading(addr, request);
    (status, body)
}

/// Sends `request` (a whole HTTP/1.1 request, which should say `Connection: close`) over a
/// raw connection, writing from another thread while this one reads (see
/// [`post_while_reading`]). Returns the status, the head and the (de-chunked) body.
fn exchange_while_reading(addr: SocketAddr, request: String) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to serve");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        // Fails with a broken pipe or reset once the server has answered and closed.
        let _ = writer.write_all(request.as_bytes());
    });
    let mut response = Vec::new();
    // Ends at the server's close; a reset after the response still leaves it read.
    let _ = stream.read_to_end(&mut response);
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{head:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> String {
    let mut payload = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return payload;
        }
        payload.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// Creates a task over HTTP and returns its id.
fn create(agent: &ureq::Agent, serve: &Serve, body: &str) -> String {
    let created = post(agent, &serve.url("/research/tasks"), body);
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["task_id"]
        .as_str()
        .expect("task_id")
        .to_owned()
}

fn redis_client(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("redis URL")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to redis")
}

#[test]
fn every_endpoint_round_trips_a_task() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let agent = agent();

    let created = post(
        &agent,
        &serve.url("/research/tasks"),
        r#"{"query": "wasm cold starts", "depth": 2}"#,
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert!(
        created
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "{created:?}"
    );
    let body = created.json();
    let id = body["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(body["status"], "pending", "{body}");
    assert_eq!(
        created.location.as_deref(),
        Some(format!("/research/tasks/{id}").as_str())
    );

    let task_url = serve.url(&format!("/research/tasks/{id}"));
    let fetched = get(&agent, &task_url);
    assert_eq!(fetched.status, 200, "{fetched:?}");
    let document = fetched.json();
    assert_eq!(document["id"], id.as_str());
    assert_eq!(document["status"], "pending");
    assert_eq!(document["query"], "wasm cold starts");
    assert_eq!(document["depth"], 2);
    let created_at = document["created_at"].as_str().expect("created_at");
    assert!(created_at.ends_with("+00:00"), "{created_at}");

    let patched = patch(
        &agent,
        &task_url,
        r#"{"status": "running", "progress": 10}"#,
        Some("pending"),
    );
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.json()["status"], "running");
    assert_eq!(patched.json()["query"], "wasm cold starts");

    // The precondition no longer holds: 409 with the current document, nothing written.
    let refused = patch(&agent, &task_url, r#"{"status": "done"}"#, Some("pending"));
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(refused.error_code(), "status_conflict");
    assert_eq!(refused.json()["task"]["status"], "running", "{refused:?}");
    assert_eq!(get(&agent, &task_url).json()["status"], "running");

    let other = create(&agent, &serve, r#"{"query": "still pending"}"#);
    let listed = get(
        &agent,
        &serve.url("/research/tasks?status=running&limit=50"),
    );
    assert_eq!(listed.status, 200, "{listed:?}");
    let listed = listed.json();
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .expect("tasks array")
        .iter()
        .map(|task| task["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![id.as_str()], "{listed}");
    assert!(listed["next_cursor"].is_null(), "{listed}");
    let all = get(&agent, &serve.url("/research/tasks"));
    assert_eq!(
        all.json()["tasks"].as_array().map(Vec::len),
        Some(2),
        "{all:?}"
    );

    let deleted = delete(&agent, &task_url);
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert!(deleted.body.is_empty(), "{deleted:?}");
    assert_eq!(get(&agent, &task_url).status, 404);
    assert_eq!(get(&agent, &task_url).error_code(), "task_not_found");
    assert_eq!(delete(&agent, &task_url).status, 404);
    assert_eq!(patch(&agent, &task_url, "{}", None).status, 404);
    assert_eq!(
        get(&agent, &serve.url(&format!("/research/tasks/{other}"))).status,
        200
    );
}

#[test]
fn list_pages_with_limit_and_cursor() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let agent = agent();
    let mut made: Vec<String> = (0..7)
        .map(|n| create(&agent, &serve, &format!(r#"{{"query": "q{n}"}}"#)))
        .collect();
    made.sort();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let mut url = serve.url("/research/tasks?limit=3");
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&percent_encode(cursor));
        }
        let page = get(&agent, &url);
        assert_eq!(page.status, 200, "{page:?}");
        let page = page.json();
        let tasks = page["tasks"].as_array().expect("tasks");
        assert!(tasks.len() <= 3, "{page}");
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                cursor = None;
                break;
            }
        }
    }
    assert_eq!(cursor, None, "the listing did not end within 50 pages");
    // Nothing changed during the listing: each task is listed exactly once.
    seen.sort();
    assert_eq!(seen, made);
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A body larger than a small instance can hold: a 413 like any body too large for the
/// deployment, and serving goes on. (`serve` no longer starts with a `max-document-bytes`
/// the memory cannot hold, so the limit here is one that fits 8 MiB.)
#[test]
fn a_body_the_instance_memory_cannot_hold_is_a_413_and_serving_goes_on() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(
        &redis.url(),
        &[
            "--memory-limit-mib",
            "8",
            "--config",
            "max-document-bytes=262144",
        ],
    );
    let huge = json!({ "query": "x".repeat(12 << 20) }).to_string();
    let (status, body) = post_while_reading(serve.addr, "/research/tasks", &huge);
    assert_eq!(status, 413, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "body_too_large", "{body}");
    assert!(body.contains("memory"), "{body}");
    let agent = agent();
    let id = create(&agent, &serve, r#"{"query": "after the big one"}"#);
    let fetched = get(&agent, &serve.url(&format!("/research/tasks/{id}")));
    assert_eq!(fetched.status, 200, "{fetched:?}");
}

#[test]
fn bad_requests_get_typed_json_errors() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &["--config", "max-document-bytes=4096"]);
    let agent = agent();
    let tasks = serve.url("/research/tasks");

    let not_json = post(&agent, &tasks, "{not json");
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert_eq!(not_json.error_code(), "invalid_json");
    let no_query = post(&agent, &tasks, r#"{"depth": 1}"#);
    assert_eq!(no_query.status, 400, "{no_query:?}");
    assert_eq!(no_query.error_code(), "invalid_task");
    let not_object = post(&agent, &tasks, r#"["query"]"#);
    assert_eq!(not_object.status, 400, "{not_object:?}");
    let not_json_type = reply(
        agent
            .post(&tasks)
            .header("content-type", "text/plain")
            .send("x"),
    );
    assert_eq!(not_json_type.status, 415, "{not_json_type:?}");

    let too_large = post(
        &agent,
        &tasks,
        &json!({ "query": "x".repeat(10_000) }).to_string(),
    );
    assert_eq!(too_large.status, 413, "{too_large:?}");
    assert_eq!(too_large.error_code(), "body_too_large");

    let bad_id = get(&agent, &serve.url("/research/tasks/bad%01id"));
    assert_eq!(bad_id.status, 400, "{bad_id:?}");
    assert_eq!(bad_id.error_code(), "invalid_id");
    let bad_limit = get(&agent, &serve.url("/research/tasks?limit=zero"));
    assert_eq!(bad_limit.status, 400, "{bad_limit:?}");
    assert_eq!(bad_limit.error_code(), "invalid_query");

    let id = create(&agent, &serve, r#"{"query": "q"}"#);
    let task = serve.url(&format!("/research/tasks/{id}"));
    let bad_patch = patch(&agent, &task, "[1]", None);
    assert_eq!(bad_patch.status, 400, "{bad_patch:?}");
    let id_change = patch(&agent, &task, r#"{"id": "other"}"#, None);
    assert_eq!(id_change.status, 400, "{id_change:?}");
    assert_eq!(id_change.error_code(), "immutable_field");

    let unknown = get(&agent, &serve.url("/nothing/here"));
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.error_code(), "not_found");
    let wrong_method = reply(agent.put(&task).send("{}"));
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    assert_eq!(wrong_method.error_code(), "method_not_allowed");

    // Nothing above wrote anything but the one task.
    let mut redis = redis_client(&redis);
    let keys: Vec<String> = redis.keys("*").unwrap();
    assert_eq!(keys, vec![format!("research_task:{id}")]);
}

#[test]
fn tasks_are_shared_with_the_cli_and_plain_redis_clients() {
    let redis_server = RedisServer::start().unwrap();
    let serve = Serve::start(&redis_server.url(), &[]);
    let agent = agent();
    let mut redis = redis_client(&redis_server);

    // HTTP → Redis and the CLI: the key, the JSON and the 7-day TTL of the original service.
    let id = create(&agent, &serve, r#"{"query": "shared"}"#);
    let key = format!("research_task:{id}");
    let stored: String = redis.get(&key).unwrap();
    let http_document = get(&agent, &serve.url(&format!("/research/tasks/{id}"))).body;
    assert_eq!(stored, http_document);
    let ttl: i64 = redis.ttl(&key).unwrap();
    assert!(
        (TASK_TTL_SECONDS - 60..=TASK_TTL_SECONDS).contains(&ttl),
        "ttl {ttl}"
    );
    let cli = Command::new(env!("CARGO_BIN_EXE_taskstore"))
        .args(["--redis", &redis_server.url(), "get", &id])
        .env_remove("REDIS_URL")
        .env("TASKSTORE_CACHE_DIR", crate::run::cache_dir())
        .output()
        .expect("run the CLI");
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim_end(), stored);

    // A plain client writing as the Python service did (SETEX, json.dumps) → HTTP.
    let python_style = r#"{"id": "py-1", "status": "completed", "query": "from python", "result": {"summary": "ok"}}"#;
    let _: () = redis
        .set_ex("research_task:py-1", python_style, TASK_TTL_SECONDS as u64)
        .unwrap();
    let fetched = get(&agent, &serve.url("/research/tasks/py-1"));
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.body, python_style);

    // The CLI → HTTP, and an HTTP patch the plain client then sees.
    let cli = Command::new(env!("CARGO_BIN_EXE_taskstore"))
        .args(["--redis", &redis_server.url(), "set", "cli-1"])
        .arg(r#"{"id": "cli-1", "status": "pending", "query": "from the cli"}"#)
        .env_remove("REDIS_URL")
        .env("TASKSTORE_CACHE_DIR", crate::run::cache_dir())
        .output()
        .expect("run the CLI");
    assert!(cli.status.success(), "{cli:?}");
    let patched = patch(
        &agent,
        &serve.url("/research/tasks/cli-1"),
        r#"{"status": "running"}"#,
        Some("pending"),
    );
    assert_eq!(patched.status, 200, "{patched:?}");
    let stored: String = redis.get("research_task:cli-1").unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["status"], "running");
    assert_eq!(stored["query"], "from the cli");
}

#[test]
fn redis_outage_gives_503_then_service_recovers() {
    // Append-only persistence, so the task outlives the restart.
    let mut redis = RedisServer::builder()
        .args(["--appendonly", "yes"])
        .start()
        .unwrap();
    let serve = Serve::start(&redis.url(), &["--timeout-ms", "1000"]);
    let agent = agent();
    let id = create(&agent, &serve, r#"{"query": "survives"}"#);
    let task = serve.url(&format!("/research/tasks/{id}"));

    redis.stop().unwrap();
    for request in [
        get(&agent, &task),
        post(&agent, &serve.url("/research/tasks"), r#"{"query": "q"}"#),
        delete(&agent, &task),
    ] {
        assert_eq!(request.status, 503, "{request:?}");
        let code = request.error_code();
        assert!(
            ["storage_unavailable", "storage_timeout"].contains(&code.as_str()),
            "{code}"
        );
    }

    // The same server comes back with its data; the warm instances reconnect by themselves.
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        let reply = get(&agent, &task);
        if reply.status == 200 || Instant::now() >= deadline {
            break reply;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(recovered.status, 200, "{recovered:?}");
    assert_eq!(recovered.json()["query"], "survives");
}

#[test]
fn concurrent_load_loses_nothing_and_bounds_redis_connections() {
    const CLIENTS: usize = 16;
    const REQUESTS_PER_CLIENT: usize = 200;
    const MAX_CONCURRENT: usize = 8;

    // For measuring the other serving mode by hand (README, Performance):
    // SERVE_LOAD_REQUESTS_PER_INSTANCE=1 gives every request a fresh instance.
    let per_instance =
        std::env::var("SERVE_LOAD_REQUESTS_PER_INSTANCE").unwrap_or_else(|_| "10000".to_owned());
    let redis_server = RedisServer::start().unwrap();
    let serve = Serve::start(
        &redis_server.url(),
        &[
            "--max-concurrent-requests",
            &MAX_CONCURRENT.to_string(),
            "--max-requests-per-instance",
            &per_instance,
        ],
    );
    let base = serve.url("/research/tasks");

    // Redis's own count of its clients, sampled throughout the load by one extra client.
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let stop = Arc::clone(&stop);
        let mut redis = redis_client(&redis_server);
        thread::spawn(move || {
            let mut peak = 0_u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let info: String = redis::cmd("INFO").arg("clients").query(&mut redis).unwrap();
                let connected = info
                    .lines()
                    .find_map(|line| line.strip_prefix("connected_clients:"))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .expect("connected_clients in INFO");
                peak = peak.max(connected);
                thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let base = base.clone();
            thread::spawn(move || {
                let agent = agent();
                let mut latencies = Vec::with_capacity(REQUESTS_PER_CLIENT);
                let mut statuses = Vec::with_capacity(REQUESTS_PER_CLIENT);
                let mut created = Vec::new();
                let mut timed = |request: &dyn Fn() -> Reply| {
                    let start = Instant::now();
                    let reply = request();
                    latencies.push(start.elapsed());
                    statuses.push(reply.status);
                    reply
                };
                // Cycles of create, get, patch, get: 4 requests each.
                for cycle in 0..REQUESTS_PER_CLIENT / 4 {
                    let body = format!(r#"{{"query": "client {client} cycle {cycle}"}}"#);
                    let reply = timed(&|| post(&agent, &base, &body));
                    assert_eq!(reply.status, 201, "{reply:?}");
                    let id = reply.json()["task_id"].as_str().unwrap().to_owned();
                    let url = format!("{base}/{id}");
                    let reply = timed(&|| get(&agent, &url));
                    assert_eq!(reply.status, 200, "{reply:?}");
                    let reply =
                        timed(&|| patch(&agent, &url, r#"{"status": "running"}"#, Some("pending")));
                    assert_eq!(reply.status, 200, "{reply:?}");
                    let reply = timed(&|| get(&agent, &url));
                    assert_eq!(reply.status, 200, "{reply:?}");
                    let document = reply.json();
                    assert_eq!(document["status"], "running");
                    assert_eq!(document["query"], format!("client {client} cycle {cycle}"));
                    created.push((id, format!("client {client} cycle {cycle}")));
                }
                (latencies, statuses, created)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut statuses = Vec::new();
    let mut created = Vec::new();
    for client in clients {
        let (l, s, c) = client.join().expect("a client thread failed");
        latencies.extend(l);
        statuses.extend(s);
        created.extend(c);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak_clients = monitor.join().expect("monitor");

    // Every response accounted for, every task there and intact.
    assert_eq!(statuses.len(), CLIENTS * REQUESTS_PER_CLIENT);
    assert!(statuses.iter().all(|s| matches!(s, 200 | 201)));
    let mut redis = redis_client(&redis_server);
    let keys: Vec<String> = redis.keys("research_task:*").unwrap();
    assert_eq!(keys.len(), created.len());
    assert_eq!(created.len(), CLIENTS * REQUESTS_PER_CLIENT / 4);
    for (id, query) in &created {
        let stored: String = redis.get(format!("research_task:{id}")).unwrap();
        let stored: Value = serde_json::from_str(&stored).expect("stored JSON");
        assert_eq!(stored["query"], query.as_str());
        assert_eq!(stored["status"], "running");
    }
    // The function's connections plus the monitor's own. (With fresh instances, a closed
    // connection may still be counted for a moment after its replacement opened.)
    let slack = if per_instance == "1" {
        MAX_CONCURRENT as u64
    } else {
        0
    };
    assert!(
        peak_clients <= MAX_CONCURRENT as u64 + 1 + slack,
        "{peak_clients} Redis clients at peak, bound {MAX_CONCURRENT} + 1"
    );

    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "serve load: {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests (create/get/patch/get), \
         {MAX_CONCURRENT} instances, {per_instance} requests per instance: {:.0} req/s, p50 {:?}, p99 {:?}, peak Redis clients {peak_clients}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
    );
}

// ---- Hostile or unlucky clients (issue 11, items 3 to 6) --------------------------------

/// Runs `taskstore serve <args>` expecting it to refuse to start; returns its stderr. Fails
/// the test if it starts listening instead (and stops it).
fn serve_refuses_to_start(args: &[&str]) -> String {
    let cache = tempfile::tempdir().expect("cache dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskstore"))
        .arg("serve")
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("TASKSTORE_API_KEY")
        .env_remove("RUST_LOG")
        .env("TASKSTORE_CACHE_DIR", cache.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taskstore serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            assert!(!status.success(), "serve exited 0: {stderr}");
            return stderr;
        }
        if let Ok(line) = line_rx.try_recv() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started although it should have refused: {line}");
        }
        assert!(
            Instant::now() < deadline,
            "serve neither started nor exited"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads from `stream` until the server closes it (or resets it); panics if it stays open
/// for `within`. Returns what was read.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server kept the connection open ({e}); read so far: {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Slowloris: connections that never finish their request head, and a keep-alive connection
/// left idle, are closed at the header timeout; everyone else is served meanwhile.
#[test]
fn connections_that_never_send_a_whole_head_are_closed() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &["--header-timeout-ms", "1000"]);
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(serve.addr).unwrap();
            stream
                .write_all(b"GET /research/tasks HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .unwrap();
            stream
        })
        .collect();
    let mut idle = TcpStream::connect(serve.addr).unwrap();
    idle.write_all(b"GET /research/tasks HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();

    let listed = get(&agent(), &serve.url("/research/tasks"));
    assert_eq!(listed.status, 200, "{listed:?}");
    for stream in &mut slow {
        read_until_closed(stream, Duration::from_secs(20));
    }
    let answered = read_until_closed(&mut idle, Duration::from_secs(20));
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

/// A connection that sends a POST head announcing 1000 body bytes, then only one; returned
/// once the server is reading the body. The head asks for `100 Continue`, which the server
/// sends when it starts reading the body: the sign that the request is in the server.
fn start_trickling_a_post(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            b"POST /research/tasks HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\
              Expect: 100-continue\r\n\r\n{",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Byte by byte, so that nothing after the interim response is consumed.
    let mut interim = Vec::new();
    let mut byte = [0_u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .expect("the server reads the body (100 Continue) within 20 s");
        assert_eq!(n, 1, "closed before 100 Continue: {interim:?}");
        interim.push(byte[0]);
    }
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream
}

/// Bodies sent a byte at a time hold a connection, never an instance slot: with a single
/// slot, a normal request is served while three POSTs trickle, and each trickler gets a 408
/// once its next byte is overdue.
#[test]
fn trickled_bodies_take_no_request_slot() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(
        &redis.url(),
        &[
            "--max-concurrent-requests",
            "1",
            "--body-read-timeout-ms",
            "2000",
        ],
    );
    let mut tricklers: Vec<TcpStream> =
        (0..3).map(|_| start_trickling_a_post(serve.addr)).collect();
    let patient_enough: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let id = create(
        &patient_enough,
        &serve,
        r#"{"query": "not stuck behind tricklers"}"#,
    );
    let fetched = get(
        &patient_enough,
        &serve.url(&format!("/research/tasks/{id}")),
    );
    assert_eq!(fetched.status, 200, "{fetched:?}");
    for stream in &mut tricklers {
        let answer = read_until_closed(stream, Duration::from_secs(20));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
    }
    let mut redis = redis_client(&redis);
    let keys: Vec<String> = redis.keys("*").unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

/// Over `--max-connections`, a new connection replaces the one that has waited longest for a
/// request head (slowloris heads and forgotten keep-alive connections), and is served.
#[test]
fn over_the_cap_the_longest_waiting_connection_makes_room() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &["--max-connections", "4"]);
    let mut waiting: Vec<TcpStream> = (0..4)
        .map(|_| {
            let stream = TcpStream::connect(serve.addr).unwrap();
            // Accepted in this order, so they have waited in this order.
            thread::sleep(Duration::from_millis(50));
            stream
        })
        .collect();
    let (status, _, body) = exchange_while_reading(
        serve.addr,
        "GET /research/tasks HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    );
    assert_eq!(status, 200, "{body}");
    read_until_closed(&mut waiting[0], Duration::from_secs(20));
    // The others keep their places.
    waiting[1]
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let still_open = waiting[1].read(&mut [0_u8; 16]);
    assert!(
        still_open.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "{still_open:?}"
    );
}

/// When every connection is in a request (here: trickling a body), one more is answered 503
/// and closed at once; accepting goes on, and the log says so once, not per connection.
#[test]
fn when_every_connection_is_in_a_request_new_ones_get_503() {
    let redis = RedisServer::start().unwrap();
    let mut serve = Serve::start(&redis.url(), &["--max-connections", "2"]);
    // Both in requests once the server reads their bodies.
    let _tricklers: Vec<TcpStream> = (0..2).map(|_| start_trickling_a_post(serve.addr)).collect();
    for _ in 0..3 {
        let mut refused = TcpStream::connect(serve.addr).unwrap();
        let answer = read_until_closed(&mut refused, Duration::from_secs(20));
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let body = answer.split_once("\r\n\r\n").expect("a head").1;
        let error: Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(error["error"]["code"], "busy", "{answer}");
    }
    let (_, stderr) = serve.kill();
    assert_eq!(
        stderr
            .matches("2 connections open, all in requests")
            .count(),
        1,
        "{stderr}"
    );
}

/// The function's default document limit fits its default memory; a larger one is a startup
/// error, not a `500` (after the write) for the first large document.
#[test]
fn a_document_limit_the_instance_memory_cannot_hold_stops_serve_at_startup() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let stderr = serve_refuses_to_start(&[
        "--listen",
        "127.0.0.1:0",
        "--redis",
        &url,
        "--config",
        "max-document-bytes=16777216",
    ]);
    assert!(
        stderr.contains("max-document-bytes") && stderr.contains("memory"),
        "{stderr}"
    );
}

/// A body over the function's document limit is a 413 before anything is written (it was a
/// `500` after the write at 8–12 MiB), and serving goes on, listing included.
#[test]
fn an_oversized_body_is_refused_before_anything_is_written() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let huge = json!({ "query": "x".repeat(10 << 20) }).to_string();
    let (status, body) = post_while_reading(serve.addr, "/research/tasks", &huge);
    assert_eq!(status, 413, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "body_too_large", "{body}");
    let mut redis = redis_client(&redis);
    let keys: Vec<String> = redis.keys("*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    // Just under the limit: stored, not echoed back, and listed.
    let agent = agent();
    let large = json!({ "query": "y".repeat((1 << 20) - 200) }).to_string();
    let created = post(&agent, &serve.url("/research/tasks"), &large);
    assert_eq!(created.status, 201, "{created:?}");
    assert!(created.json().get("task").is_none(), "{created:?}");
    let listed = get(&agent, &serve.url("/research/tasks"));
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json()["tasks"].as_array().map(Vec::len), Some(1));
}

/// At the smallest memory limit serve accepts for the default document limit, a largest
/// document goes through every endpoint: the margin `min_memory_bytes` keeps is enough.
#[test]
fn a_document_of_the_largest_size_fits_the_smallest_allowed_memory() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &["--memory-limit-mib", "12"]);
    let agent = agent();
    // Many members (stored with a space after each `:` and `,`, so 900 KiB sent is just
    // under 1 MiB stored); ~14k members, which the store's linear merge handles quickly.
    let mut task = String::from(r#"{"query": "largest""#);
    let mut n = 0;
    while task.len() < 900 * 1024 {
        task.push_str(&format!(r#","member{n}":"{}""#, "v".repeat(48)));
        n += 1;
    }
    task.push('}');
    let id = create(&agent, &serve, &task);
    let url = serve.url(&format!("/research/tasks/{id}"));
    assert_eq!(get(&agent, &url).status, 200);
    let patched = patch(&agent, &url, r#"{"status": "done", "member0": null}"#, None);
    assert_eq!(patched.status, 200, "{patched:?}");
    let listed = get(&agent, &serve.url("/research/tasks?status=done"));
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json()["tasks"].as_array().map(Vec::len), Some(1));
}

/// A request whose deadline passes while the function computes (an epoch interrupt, not a
/// host wait) is a `503 timeout` like any other deadline hit, not a `500` and a trap report.
#[test]
fn a_deadline_hit_inside_the_function_is_a_503_timeout() {
    let redis = RedisServer::start().unwrap();
    let mut serve = Serve::start(
        &redis.url(),
        &[
            "--request-timeout-ms",
            "1000",
            "--memory-limit-mib",
            "512",
            "--config",
            "max-document-bytes=50000000",
        ],
    );
    let agent = agent();
    // Warm an instance (and its Redis connection) first, so the deadline is spent computing
    // (a loaded machine may need more than one try within the short deadline).
    let warmed = (0..20).any(|_| get(&agent, &serve.url("/research/tasks")).status == 200);
    assert!(warmed, "no request succeeded within the 1 s deadline");
    // 26 MB in 1.5 million members: read by the host in well under the deadline, then
    // seconds of parsing and building in the function (2.8 s in all with a long deadline).
    let mut task = String::from(r#"{"query": "q""#);
    for n in 0..1_500_000 {
        task.push_str(&format!(r#","m{n}":{n}"#));
    }
    task.push('}');
    let (status, body) = post_while_reading(serve.addr, "/research/tasks", &task);
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(error["error"]["code"], "timeout", "{body}");
    let (_, stderr) = serve.kill();
    assert!(!stderr.contains("trapped"), "{stderr}");
    assert!(stderr.contains("deadline"), "{stderr}");
}

/// The function's own reason for a 5xx reaches the server's log, one line.
#[test]
fn the_function_s_reasons_for_errors_reach_the_server_log() {
    let refusing = RefusingPort::bind().unwrap();
    let closed_port = refusing.port();
    let mut serve = Serve::start(&format!("redis://127.0.0.1:{closed_port}"), &[]);
    let listed = get(&agent(), &serve.url("/research/tasks"));
    assert_eq!(listed.status, 503, "{listed:?}");
    assert_eq!(listed.error_code(), "storage_unavailable");
    let (_, stderr) = serve.kill();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("storage_unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("opening the task store"), "{stderr}");
}

fn raw_get(serve: &Serve, host: &str, authorization: Option<&str>) -> (u16, String, String) {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    exchange_while_reading(
        serve.addr,
        format!(
            "GET /research/tasks HTTP/1.1\r\nHost: {host}\r\n{authorization}\
             Connection: close\r\n\r\n"
        ),
    )
}

/// With an API key, every request needs it as a bearer token; the key never reaches a log.
#[test]
fn an_api_key_once_set_is_required_from_every_client() {
    const KEY: &str = "k3y-only-for-this-test";
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let from_file = Serve::start(
        &redis.url(),
        &["--api-key-file", key_file.to_str().unwrap()],
    );
    let from_env = Serve::start_with_env(&redis.url(), &[], &[("TASKSTORE_API_KEY", KEY)]);
    for mut serve in [from_file, from_env] {
        let host = serve.addr.to_string();
        let (status, head, body) = raw_get(&serve, &host, None);
        assert_eq!(status, 401, "{head}{body}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("www-authenticate: bearer realm=\"taskstore\""),
            "{head}"
        );
        assert!(body.contains("unauthorized"), "{body}");
        for wrong in ["Bearer k3y-only-for-this-tes", "Basic azN5", KEY] {
            let (status, head, _) = raw_get(&serve, &host, Some(wrong));
            assert_eq!(status, 401, "{wrong}: {head}");
            assert!(head.contains("invalid_token"), "{head}");
        }
        let (status, _, body) = raw_get(&serve, &host, Some(&format!("Bearer {KEY}")));
        assert_eq!(status, 200, "{body}");
        let (_, stderr) = serve.kill();
        assert!(!stderr.contains(KEY), "{stderr}");
    }
}

/// Listening where other machines can connect needs an API key (checked before binding).
#[test]
fn a_non_loopback_listen_address_needs_an_api_key() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    // A documentation address (RFC 5737): never bound, whatever happens.
    let stderr = serve_refuses_to_start(&["--listen", "192.0.2.1:0", "--redis", &url]);
    assert!(stderr.contains("API key"), "{stderr}");
}

/// DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own name in `Host`.
#[test]
fn requests_naming_a_host_not_allowed_are_refused() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &["--allow-host", "tasks.internal"]);
    let port = serve.addr.port();
    for host in [
        format!("attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
    ] {
        let (status, head, body) = raw_get(&serve, &host, None);
        assert_eq!(status, 421, "{host}: {head}{body}");
        assert!(body.contains("host_not_allowed"), "{body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("TASKS.internal:{port}"),
    ] {
        let (status, _, body) = raw_get(&serve, &host, None);
        assert_eq!(status, 200, "{host}: {body}");
    }
}

/// A body without a JSON content type (what any web page may send cross-site without a
/// preflight) creates nothing.
#[test]
fn bodies_without_a_json_content_type_create_nothing() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let body = r#"{"query": "from another site"}"#;
    for content_type in ["", "Content-Type: text/plain\r\n"] {
        let (status, head, reply) = exchange_while_reading(
            serve.addr,
            format!(
                "POST /research/tasks HTTP/1.1\r\nHost: localhost\r\n{content_type}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert_eq!(status, 415, "{head}{reply}");
        assert!(reply.contains("unsupported_media_type"), "{reply}");
    }
    let mut redis = redis_client(&redis);
    let keys: Vec<String> = redis.keys("*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A TCP server that accepts connections and never answers: a hung Redis. It keeps what
/// its clients send, so a test can tell when a request has reached it.
struct SilentRedis {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl SilentRedis {
    fn start() -> SilentRedis {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, sink) = (Arc::clone(&stop), Arc::clone(&received));
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = [0_u8; 4096];
            while !stop_flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((socket, _)) = listener.accept() {
                    socket.set_nonblocking(true).unwrap();
                    held.push(socket);
                }
                for socket in &mut held {
                    if let Ok(n) = socket.read(&mut buf) {
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        SilentRedis {
            addr,
            stop,
            received,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Waits until some client has sent `needle`, for at most `limit`; whether it has.
    fn wait_for(&self, needle: &[u8], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let received = self.received.lock().unwrap();
            if received
                .windows(needle.len())
                .any(|window| window == needle)
            {
                return true;
            }
            drop(received);
            thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for SilentRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn request_deadline_cuts_off_a_hung_redis_with_503() {
    let silent = SilentRedis::start();
    let serve = Serve::start(
        &silent.url(),
        &["--timeout-ms", "10000", "--request-timeout-ms", "700"],
    );
    let agent = agent();
    let started = Instant::now();
    let reply = get(&agent, &serve.url("/research/tasks/t1"));
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "timeout");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn a_request_cut_off_at_its_deadline_does_not_affect_others() {
    let redis_server = RedisServer::start().unwrap();
    let serve = Serve::start(
        &redis_server.url(),
        &["--timeout-ms", "10000", "--request-timeout-ms", "700"],
    );
    let agent = agent();
    let id = create(&agent, &serve, r#"{"query": "before"}"#);
    let task = serve.url(&format!("/research/tasks/{id}"));

    // Redis holds every write for 3 s (reads go on): a create hangs inside the function,
    // in the middle of a Redis round trip, until the host cuts it off and drops the instance.
    let mut redis = redis_client(&redis_server);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query(&mut redis)
        .unwrap();
    let started = Instant::now();
    let cut_off = post(
        &agent,
        &serve.url("/research/tasks"),
        r#"{"query": "held"}"#,
    );
    assert_eq!(cut_off.status, 503, "{cut_off:?}");
    assert_eq!(cut_off.error_code(), "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    // Other requests, on the surviving or a fresh instance, are unaffected.
    let during = get(&agent, &task);
    assert_eq!(during.status, 200, "{during:?}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut redis)
        .unwrap();
    let after = create(&agent, &serve, r#"{"query": "after"}"#);
    assert_eq!(
        get(&agent, &serve.url(&format!("/research/tasks/{after}"))).status,
        200
    );
}

#[test]
fn ctrl_c_finishes_the_request_in_flight_then_exits_cleanly() {
    let silent = SilentRedis::start();
    let mut serve = Serve::start(
        &silent.url(),
        &["--timeout-ms", "800", "--request-timeout-ms", "10000"],
    );
    let url = serve.url("/research/tasks/t1");
    // A request that takes ~1 s (the storage's Redis timeout against a hung server).
    let in_flight = thread::spawn(move || get(&agent(), &url));
    // In flight for sure once its store's connection handshake reached the silent Redis
    // (nothing else connects to it): it now waits 800 ms for the answer.
    assert!(
        silent.wait_for(b"*1\r\n$4\r\nPING\r\n", Duration::from_secs(20)),
        "the request never reached Redis"
    );
    let (status, stderr) = serve.signal_and_wait(libc::SIGINT);
    let reply = in_flight.join().expect("request thread");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(
        std::net::TcpStream::connect_timeout(&serve.addr, Duration::from_secs(1)).is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn secrets_never_reach_responses_or_logs() {
    let redis = RedisServer::builder()
        .args(["--requirepass", "hunter2-secret"])
        .start()
        .unwrap();
    let wrong = format!("redis://:wrong-pass-9@127.0.0.1:{}", redis.port());
    let mut serve = Serve::start(&wrong, &[]);
    let reply = get(&agent(), &serve.url("/research/tasks/t1"));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "storage_authentication");
    assert!(!reply.body.contains("wrong-pass-9"), "{reply:?}");
    let (_, stderr) = serve.signal_and_wait(libc::SIGTERM);
    assert!(!stderr.contains("wrong-pass-9"), "{stderr}");
}

#[test]
fn the_function_reaches_redis_over_tls() {
    let pki = taskstore_testing::pki::pki("serve test CA", &["127.0.0.1"]);
    let redis_server = RedisServer::builder()
        .tls(pki.server.clone())
        .args(["--requirepass", "tls-secret-7"])
        .start()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let url = format!(
        "rediss://:tls-secret-7@127.0.0.1:{}",
        redis_server.tls_port().expect("a TLS port")
    );
    let serve = Serve::start(&url, &["--tls-ca-file", ca_file.to_str().unwrap()]);
    let agent = agent();
    let id = create(&agent, &serve, r#"{"query": "over tls"}"#);
    let fetched = get(&agent, &serve.url(&format!("/research/tasks/{id}")));
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.json()["query"], "over tls");
    drop(serve);

    // A CA that did not sign the server's certificate: 503, never a plaintext fallback.
    let other = taskstore_testing::pki::pki("some other CA", &["127.0.0.1"]);
    std::fs::write(&ca_file, &other.ca_pem).unwrap();
    let serve = Serve::start(&url, &["--tls-ca-file", ca_file.to_str().unwrap()]);
    let refused = get(&agent, &serve.url(&format!("/research/tasks/{id}")));
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error_code(), "storage_unavailable");
    assert!(!refused.body.contains("tls-secret-7"), "{refused:?}");
}

#[test]
fn the_function_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    function_works_on_cluster(&cluster, &[]);
}

#[test]
fn the_function_works_on_a_redis_cluster_over_tls() {
    let pki = taskstore_testing::pki::pki("serve cluster CA", &["127.0.0.1"]);
    let cluster = RedisCluster::start_tls(3, pki.server.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    assert!(cluster.seed_url(0).starts_with("rediss+cluster://"));
    function_works_on_cluster(&cluster, &["--tls-ca-file", ca_file.to_str().unwrap()]);
}

/// Creates, patches, lists and deletes tasks through the function on `cluster` (served with
/// `extra` flags), and checks they landed on every master.
fn function_works_on_cluster(cluster: &RedisCluster, extra: &[&str]) {
    // One seed is enough: the store discovers the other masters, the host allows them.
    let serve = Serve::start(&cluster.seed_url(0), extra);
    let agent = agent();
    let ids: Vec<String> = (0..40)
        .map(|n| create(&agent, &serve, &format!(r#"{{"query": "q{n}"}}"#)))
        .collect();
    for id in &ids {
        let url = serve.url(&format!("/research/tasks/{id}"));
        let patched = patch(&agent, &url, r#"{"status": "running"}"#, Some("pending"));
        assert_eq!(patched.status, 200, "{patched:?}");
    }
    // Tasks landed on every master (each node's own count), and the listing walks them all.
    for node in 0..3 {
        let size = cluster.command(node, &[b"DBSIZE"]).unwrap();
        assert!(
            size.starts_with(b":") && size != b":0\r\n",
            "node {node}: {size:?}"
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = serve.url("/research/tasks?status=running&limit=7");
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.push_str(&percent_encode(cursor));
        }
        let page = get(&agent, &url).json();
        seen.extend(
            page["tasks"]
                .as_array()
                .expect("tasks")
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                cursor = None;
                break;
            }
        }
    }
    assert_eq!(cursor, None, "the listing did not end within 100 pages");
    // No slot moved during the listing: each task is listed exactly once.
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let gone = delete(&agent, &serve.url(&format!("/research/tasks/{}", ids[0])));
    assert_eq!(gone.status, 204, "{gone:?}");
}

/// Passwords holding the characters a URL gives meaning to (`/`, `@`, `:`, `#`, `?`), raw
/// in `--redis` or read by `--redis-password-file`, never reach a response or a log line,
/// and the one from the file opens the store. The non-ASCII letters between them appear in
/// no message, so any two consecutive characters of a password in the output are a leak.
#[test]
fn passwords_with_url_characters_never_reach_responses_or_logs() {
    let right = "Ж/λ@ß:€#Я?é";
    let wrong = "λ@ß:€#Я?é/Ж";
    let shows_part_of = |text: &str, password: &str| {
        let chars: Vec<char> = password.chars().collect();
        chars
            .windows(2)
            .any(|pair| text.contains(&pair.iter().collect::<String>()))
    };
    let redis = RedisServer::builder()
        .args(["--requirepass", right])
        .start()
        .unwrap();
    let mut serve = Serve::start(&format!("redis://:{wrong}@127.0.0.1:{}", redis.port()), &[]);
    let reply = get(&agent(), &serve.url("/research/tasks/t1"));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "storage_authentication");
    let (_, stderr) = serve.signal_and_wait(libc::SIGTERM);
    for password in [right, wrong] {
        assert!(!shows_part_of(&reply.body, password), "{reply:?}");
        assert!(!shows_part_of(&stderr, password), "{stderr}");
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{right}\n")).unwrap();
    let mut serve = Serve::start(
        &redis.url(),
        &["--redis-password-file", file.to_str().unwrap()],
    );
    let reply = get(&agent(), &serve.url("/research/tasks/t1"));
    assert_eq!(reply.status, 404, "{reply:?}");
    let (_, stderr) = serve.signal_and_wait(libc::SIGTERM);
    assert!(!shows_part_of(&stderr, right), "{stderr}");
}

/// `serve` keeps a cluster's reported nodes inside the operator's allow-list, as the library
/// does: a node announcing an address outside it is never dialled (the request fails as
/// storage unavailable) until `--cluster-allow` names it.
#[test]
fn serve_reaches_reported_cluster_nodes_only_inside_the_allow_list() {
    let node = start_node_announcing("127.0.0.2", None).unwrap();
    let url = format!("redis+cluster://127.0.0.1:{}", node.port());
    let mut serve = Serve::start(&url, &[]);
    let denied = get(&agent(), &serve.url("/research/tasks/t1"));
    assert_eq!(denied.status, 503, "{denied:?}");
    assert_eq!(denied.error_code(), "storage_unavailable", "{denied:?}");
    serve.signal_and_wait(libc::SIGTERM);

    let allow = format!("127.0.0.2:{}", node.port());
    let mut serve = Serve::start(&url, &["--cluster-allow", &allow]);
    let allowed = get(&agent(), &serve.url("/research/tasks/t1"));
    assert_eq!(allowed.status, 404, "{allowed:?}");
    serve.signal_and_wait(libc::SIGTERM);
}
