//! Operating `taskstore serve` (issue 16, host side): the `--metrics-listen` scrape against
//! the requests actually sent, the access log's lines and their filter, and the routes
//! answered without the API key.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use taskstore_testing::redis_server::{RedisServer, RefusingPort};

use crate::serve::{agent, get, post};

/// Starting the server (compiling the component in a debug build) ends within this.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `taskstore serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0`, with its stderr
/// kept whole; killed on drop.
struct Operated {
    child: Option<Child>,
    addr: SocketAddr,
    metrics: SocketAddr,
    stderr: mpsc::Receiver<String>,
}

impl Operated {
    fn start(redis_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Operated {
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskstore"))
            .args(["serve", "--listen", "127.0.0.1:0", "--redis", redis_url])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_PASSWORD")
            .env_remove("TASKSTORE_API_KEY")
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
        let mut next_line = || match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_rx.recv_timeout(Duration::from_secs(10));
                panic!("taskstore serve did not start: {stderr:?}");
            }
        };
        let first = next_line();
        let addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .expect("a socket address");
        let second = next_line();
        let metrics = second
            .strip_prefix("metrics on http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected second line {second:?}"))
            .parse()
            .expect("a socket address");
        Operated {
            child: Some(child),
            addr,
            metrics,
            stderr: err_rx,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// The current scrape: every sample, by its series (name and labels as written).
    fn scrape(&self) -> BTreeMap<String, f64> {
        let reply = get(&agent(), &self.metrics_url());
        assert_eq!(reply.status, 200, "{reply:?}");
        parse_exposition(&reply.body)
    }

    /// Stops the server with SIGTERM (a clean exit); everything it wrote to stderr.
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("still running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: sending a signal to our own child process, which we have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "{status:?}");
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("taskstore serve did not exit within 30 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

impl Drop for Operated {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The samples of a Prometheus text exposition, checking each line is a comment or
/// `series value`.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// The samples of metric family `name` (e.g. `taskstore_http_requests_total`), by series.
fn family<'a>(samples: &'a BTreeMap<String, f64>, name: &str) -> BTreeMap<&'a str, f64> {
    samples
        .iter()
        .filter(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
        })
        .map(|(series, value)| (series.as_str(), *value))
        .collect()
}

fn requests_series(route: &str, method: &str, status: &str) -> String {
    format!(
        r#"taskstore_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
    )
}

/// A status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

fn send(request: ureq::RequestBuilder<ureq::typestate::WithBody>, body: &str) -> Answer {
    let mut response = request.send(body).expect("an HTTP response");
    Answer {
        status: response.status().as_u16(),
        body: response.body_mut().read_to_string().expect("read the body"),
    }
}

/// `method path` over a raw connection naming `host`, with `headers` (each ending in CRLF)
/// and no body, whatever the headers declare: a host that refuses a declared body answers
/// before reading any, and nothing unread can make its close reset the connection. The
/// status and the body.
fn raw(addr: SocketAddr, method: &str, path: &str, host: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A GET naming `host`, with `authorization` if given.
fn raw_get(addr: SocketAddr, path: &str, host: &str, authorization: Option<&str>) -> (u16, String) {
    let headers = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    raw(addr, "GET", path, host, &headers)
}

/// The issue's "done when": a scrape after a concurrent load of known routes and statuses
/// counts exactly the requests sent, by route template, method and status class; a scrape
/// during it never counts more than was sent; the instance counters add up.
#[test]
fn a_scrape_counts_exactly_the_requests_sent() {
    const CLIENTS: usize = 4;
    const CYCLES: usize = 20;
    const PER_INSTANCE: u32 = 3;
    let redis = RedisServer::start().unwrap();
    let serve = Operated::start(
        &redis.url(),
        &[
            "--max-concurrent-requests",
            "4",
            "--max-requests-per-instance",
            &PER_INSTANCE.to_string(),
            "--config",
            "max-document-bytes=4096",
            "--memory-limit-mib",
            "64",
        ],
        &[],
    );
    let n = (CLIENTS * CYCLES) as f64;
    let c = CLIENTS as f64;
    let expected: BTreeMap<String, f64> = [
        (requests_series("/research/tasks", "POST", "2xx"), n),
        (requests_series("/research/tasks/{id}", "GET", "2xx"), n),
        (requests_series("/research/tasks/{id}", "GET", "4xx"), n),
        (requests_series("/research/tasks/{id}", "PATCH", "4xx"), n),
        (requests_series("/research/tasks/{id}", "DELETE", "2xx"), n),
        (requests_series("/research/tasks", "GET", "2xx"), n),
        (requests_series("/research/tasks", "PUT", "4xx"), n),
        (requests_series("other", "GET", "4xx"), n),
        // One 415 (the function's) and one 413 (the host's) per client.
        (requests_series("/research/tasks", "POST", "4xx"), 2.0 * c),
    ]
    .into_iter()
    .collect();
    let sent_total: f64 = expected.values().sum();

    // A scraper throughout the load: counts only grow, and never past what is sent.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = Arc::clone(&stop);
        let url = serve.metrics_url();
        let expected = expected.clone();
        thread::spawn(move || {
            let agent = agent();
            let mut previous: BTreeMap<String, f64> = BTreeMap::new();
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = get(&agent, &url);
                assert_eq!(reply.status, 200, "{reply:?}");
                let samples = parse_exposition(&reply.body);
                for (series, value) in family(&samples, "taskstore_http_requests_total") {
                    let bound = expected.get(series).copied().unwrap_or(0.0);
                    assert!(value <= bound, "{series} = {value} > {bound} sent");
                    let before = previous.get(series).copied().unwrap_or(0.0);
                    assert!(value >= before, "{series} went from {before} to {value}");
                    previous.insert(series.to_owned(), value);
                }
                scrapes += 1;
                thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let base = serve.url("/research/tasks");
            let other = serve.url("/not-an-api-route");
            let addr = serve.addr;
            thread::spawn(move || {
                let agent = agent();
                for cycle in 0..CYCLES {
                    let body = format!(r#"{{"query": "client {client} cycle {cycle}"}}"#);
                    let created = post(&agent, &base, &body);
                    assert_eq!(created.status, 201, "{created:?}");
                    let id = serde_json::from_str::<Value>(&created.body).unwrap()["task_id"]
                        .as_str()
                        .expect("a task id")
                        .to_owned();
                    let url = format!("{base}/{id}");
                    assert_eq!(get(&agent, &url).status, 200);
                    assert_eq!(
                        get(&agent, &format!("{base}/missing-{client}-{cycle}")).status,
                        404
                    );
                    let conflict = send(
                        agent
                            .patch(&url)
                            .header("content-type", "application/json")
                            .header("x-expect-status", "done"),
                        r#"{"status": "running"}"#,
                    );
                    assert_eq!(conflict.status, 409, "{conflict:?}");
                    assert_eq!(get(&agent, &format!("{base}?limit=5")).status, 200);
                    let put = send(
                        agent.put(&base).header("content-type", "application/json"),
                        "{}",
                    );
                    assert_eq!(put.status, 405, "{put:?}");
                    assert_eq!(get(&agent, &other).status, 404);
                    let deleted = agent.delete(&url).call().expect("an HTTP response");
                    assert_eq!(deleted.status().as_u16(), 204);
                }
                let text = send(agent.post(&base).header("content-type", "text/plain"), "{}");
                assert_eq!(text.status, 415, "{text:?}");
                let (status, body) = raw(
                    addr,
                    "POST",
                    "/research/tasks",
                    &addr.to_string(),
                    "Content-Type: application/json\r\nContent-Length: 5000\r\n",
                );
                assert_eq!(status, 413, "{body}");
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread failed");
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("the scraper failed");
    assert!(scrapes > 0);

    // Each request is counted as its response ends; hyper may write a body-less response
    // (the 204s) before the host has seen its end, so the last ones may take a moment.
    let counted = |samples: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        family(samples, "taskstore_http_requests_total")
            .into_iter()
            .filter(|(_, value)| *value > 0.0)
            .map(|(series, value)| (series.to_owned(), value))
            .collect()
    };
    let settle_by = Instant::now() + Duration::from_secs(5);
    let mut samples = serve.scrape();
    while counted(&samples) != expected && Instant::now() < settle_by {
        thread::sleep(Duration::from_millis(50));
        samples = serve.scrape();
    }
    assert_eq!(counted(&samples), expected);
    // The latency histograms saw every request once, by route and method.
    let counts: f64 = family(&samples, "taskstore_http_request_duration_seconds_count")
        .values()
        .sum();
    assert_eq!(counts, sent_total);
    assert_eq!(
        samples[r#"taskstore_http_request_duration_seconds_count{route="/research/tasks",method="POST"}"#],
        n + 2.0 * c
    );
    // The host answered the 413s itself; nothing else was refused; Redis never failed.
    let refusals = family(&samples, "taskstore_refusals_total");
    for (series, value) in &refusals {
        let want = if series.contains(r#"reason="body_too_large""#) {
            c
        } else {
            0.0
        };
        assert_eq!(*value, want, "{series}");
    }
    assert_eq!(refusals.len(), 7, "{refusals:?}");
    assert!(family(&samples, "taskstore_redis_errors_total")
        .values()
        .all(|v| *v == 0.0));
    // Every request but the 413s ran in an instance; each instance served PER_INSTANCE
    // requests and was then retired, except those still idle (which served fewer).
    let in_instances = sent_total - c;
    let created = samples["taskstore_instances_created_total"];
    let idle = samples["taskstore_instances_idle"];
    let retired = samples[r#"taskstore_instances_discarded_total{reason="reuse_limit"}"#];
    assert_eq!(samples["taskstore_instances_busy"], 0.0);
    assert_eq!(created, retired + idle, "{samples:?}");
    for reason in ["trap", "deadline", "unusable"] {
        assert_eq!(
            samples[&format!(r#"taskstore_instances_discarded_total{{reason="{reason}"}}"#)],
            0.0
        );
    }
    let served_by_idle = in_instances - f64::from(PER_INSTANCE) * retired;
    assert!(
        idle <= served_by_idle && served_by_idle <= f64::from(PER_INSTANCE - 1) * idle,
        "{in_instances} requests in instances, {retired} retired, {idle} idle"
    );
    assert!(idle <= 4.0, "{idle} idle instances, at most 4 slots");

    // The metrics listener checks Host as the API does; the API does not serve /metrics.
    let (status, _) = raw_get(serve.metrics, "/metrics", "attacker.example", None);
    assert_eq!(status, 421);
    assert_eq!(get(&agent(), &serve.url("/metrics")).status, 404);
}

/// What the function answers for a failing Redis is counted by its error code.
#[test]
fn redis_errors_are_counted_by_the_function_s_error_code() {
    let refusing = RefusingPort::bind().unwrap();
    let serve = Operated::start(&format!("redis://127.0.0.1:{}", refusing.port()), &[], &[]);
    let agent = agent();
    for _ in 0..3 {
        let reply = get(&agent, &serve.url("/research/tasks"));
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.error_code(), "storage_unavailable");
    }
    let samples = serve.scrape();
    let errors = family(&samples, "taskstore_redis_errors_total");
    for (series, value) in errors {
        let want = if series.contains("storage_unavailable") {
            3.0
        } else {
            0.0
        };
        assert_eq!(value, want, "{series}");
    }
    assert_eq!(
        samples[&requests_series("/research/tasks", "GET", "5xx")],
        3.0
    );
}

/// One JSON line per request with exactly the promised fields, in request order; never an
/// id, a header value, a body, the API key or the Redis password.
#[test]
fn access_log_lines_are_json_with_exactly_the_promised_fields() {
    const KEY: &str = "access-log-k3y";
    const PASSWORD: &str = "access-log-pa55";
    const HEADER_VALUE: &str = "header-value-never-logged";
    let redis = RedisServer::builder()
        .args(["--requirepass", PASSWORD])
        .start()
        .unwrap();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
    let mut serve = Operated::start(
        &url,
        &["--access-log", "json"],
        &[("TASKSTORE_API_KEY", KEY)],
    );
    let agent = agent();
    let bearer = format!("Bearer {KEY}");
    let base = serve.url("/research/tasks");
    let body = r#"{"query": "body-never-logged"}"#;
    let created = send(
        agent
            .post(&base)
            .header("authorization", &bearer)
            .header("content-type", "application/json")
            .header("x-custom", HEADER_VALUE),
        body,
    );
    assert_eq!(created.status, 201, "{created:?}");
    let id = serde_json::from_str::<Value>(&created.body).unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = agent
        .get(format!("{base}/{id}"))
        .header("authorization", &bearer)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let unauthorized = get(&agent, &format!("{base}/{id}"));
    assert_eq!(unauthorized.status, 401);
    let stderr = serve.stop();

    for secret in [
        KEY,
        PASSWORD,
        HEADER_VALUE,
        "body-never-logged",
        id.as_str(),
    ] {
        assert!(!stderr.contains(secret), "{secret} in {stderr}");
    }
    let access: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|event| event["target"] == "taskstore::access")
        .collect();
    let promised = [
        "timestamp",
        "level",
        "target",
        "method",
        "route",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "instance_reuse",
    ];
    let expected = [
        (
            "POST",
            "/research/tasks",
            201,
            body.len(),
            created.body.len(),
            true,
        ),
        ("GET", "/research/tasks/{id}", 200, 0, read.len(), true),
        // Answered by the host: no instance ran.
        (
            "GET",
            "/research/tasks/{id}",
            401,
            0,
            unauthorized.body.len(),
            false,
        ),
    ];
    assert_eq!(access.len(), expected.len(), "{stderr}");
    for (event, (method, route, status, bytes_in, bytes_out, in_instance)) in
        access.iter().zip(expected)
    {
        let fields: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want: Vec<&str> = promised.to_vec();
        if !in_instance {
            want.retain(|field| *field != "instance_reuse");
        }
        let (mut fields, mut want) = (fields, want);
        fields.sort_unstable();
        want.sort_unstable();
        assert_eq!(fields, want, "{event}");
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["method"], method, "{event}");
        assert_eq!(event["route"], route, "{event}");
        assert_eq!(event["status"], status, "{event}");
        assert_eq!(event["bytes_in"], bytes_in, "{event}");
        assert_eq!(event["bytes_out"], bytes_out, "{event}");
        assert!(
            event["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{event}"
        );
        assert!(
            event["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{event}"
        );
    }
    // The one instance served both requests, in turn.
    assert_eq!(access[0]["instance_reuse"], 0);
    assert_eq!(access[1]["instance_reuse"], 1);
}

/// The default format is logfmt; `RUST_LOG` filters the lines, `off` silences every one;
/// `--access-log off` drops the per-request lines and keeps the others.
#[test]
fn rust_log_and_access_log_off_filter_the_lines() {
    let redis = RedisServer::start().unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut serve = Operated::start(&redis.url(), extra, env);
        assert_eq!(get(&agent(), &serve.url("/research/tasks")).status, 200);
        serve.stop()
    };
    let stderr = run(&[], &[]);
    // Besides: "stopped", and, when the client's closed keep-alive connection is still being
    // closed at SIGTERM, "shutting down, waiting for 1 connection(s)".
    let access: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("target=taskstore::access"))
        .collect();
    assert_eq!(access.len(), 1, "{stderr}");
    let access = access[0];
    assert!(access.starts_with("time="), "{access}");
    let pairs: Vec<(&str, &str)> = access
        .split(' ')
        .map(|pair| pair.split_once('=').unwrap_or_else(|| panic!("{access}")))
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(key, _)| *key).collect();
    assert_eq!(
        keys,
        [
            "time",
            "level",
            "target",
            "method",
            "route",
            "status",
            "duration_ms",
            "bytes_in",
            "bytes_out",
            "instance_reuse"
        ],
        "{access}"
    );
    assert!(
        access.contains(
            " level=info target=taskstore::access method=GET route=/research/tasks status=200 "
        ),
        "{access}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|line| line.contains("level=info target=taskstore::serve msg=stopped")),
        "{stderr}"
    );

    let silent = run(&[], &[("RUST_LOG", "off")]);
    assert_eq!(silent, "", "RUST_LOG=off");
    let without_access = run(&[], &[("RUST_LOG", "info,taskstore::access=off")]);
    assert!(
        !without_access.contains("taskstore::access"),
        "{without_access}"
    );
    assert!(without_access.contains("msg=stopped"), "{without_access}");
    let access_off = run(&["--access-log", "off"], &[]);
    assert!(!access_off.contains("taskstore::access"), "{access_off}");
    assert!(access_off.contains("msg=stopped"), "{access_off}");
}

/// With an API key, GET of the probes and the contract is answered without it, exactly as
/// with it (until the function has these routes, its answer is a 404: anything but the
/// host's 401 shows the exclusion); every other route, and any other method on these, still
/// needs the key; a keyless request may not bring a body.
#[test]
fn probes_and_the_contract_need_no_api_key_everything_else_does() {
    const KEY: &str = "pr0be-test-key";
    let redis = RedisServer::start().unwrap();
    let serve = Operated::start(&redis.url(), &[], &[("TASKSTORE_API_KEY", KEY)]);
    let host = serve.addr.to_string();
    let bearer = format!("Bearer {KEY}");
    for path in ["/healthz", "/readyz", "/research/openapi.json"] {
        let (keyless, keyless_body) = raw_get(serve.addr, path, &host, None);
        let (keyed, keyed_body) = raw_get(serve.addr, path, &host, Some(&bearer));
        assert_ne!(keyless, 401, "{path}: {keyless_body}");
        assert_eq!(keyless, keyed, "{path}");
        if path != "/readyz" {
            assert_eq!(keyless_body, keyed_body, "{path}");
        }
        // The exclusion is for reading only.
        let posted = send(
            agent()
                .post(serve.url(path))
                .header("content-type", "application/json"),
            "{}",
        );
        assert_eq!(posted.status, 401, "POST {path}: {posted:?}");
        // Not even a probe makes the host read a body without the key.
        let (status, body) = raw(serve.addr, "GET", path, &host, "Content-Length: 10\r\n");
        assert_eq!(status, 413, "GET {path} with a body: {body}");
        // The Host allow-list still applies.
        let (status, _) = raw_get(serve.addr, path, "attacker.example", None);
        assert_eq!(status, 421, "{path}");
    }
    for path in [
        "/research/tasks",
        "/research/tasks/t1",
        "/research/openapi.json/x",
        "/healthz/",
        "/metrics",
        "/",
    ] {
        let (status, body) = raw_get(serve.addr, path, &host, None);
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, _) = raw_get(serve.addr, "/research/tasks", &host, Some(&bearer));
    assert_eq!(status, 200);
}

/// Metrics on an address other machines can reach need the API key to be set, as the API does.
#[test]
fn a_non_loopback_metrics_address_needs_an_api_key() {
    let redis = RedisServer::start().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_taskstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &redis.url()])
        // A documentation address (RFC 5737): never bound, whatever happens.
        .args(["--metrics-listen", "192.0.2.1:0"])
        .env_remove("TASKSTORE_API_KEY")
        .env("TASKSTORE_CACHE_DIR", crate::run::cache_dir())
        .stdin(Stdio::null())
        .output()
        .expect("run taskstore serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("metrics") && stderr.contains("API key"),
        "{stderr}"
    );
}

/// An instance cut off at the request's deadline is counted as discarded for that reason,
/// and the host's `503 timeout` is not taken for a Redis error code.
#[test]
fn an_instance_cut_off_at_its_deadline_is_counted_as_discarded() {
    // Completes connections from its backlog and never answers: Redis hung.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", hung.local_addr().unwrap());
    let serve = Operated::start(
        &url,
        &["--timeout-ms", "10000", "--request-timeout-ms", "700"],
        &[],
    );
    let reply = get(&agent(), &serve.url("/research/tasks"));
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.error_code(), "timeout");
    // The handler task drops the instance just after the client's answer.
    let settle_by = Instant::now() + Duration::from_secs(5);
    let mut samples = serve.scrape();
    while samples["taskstore_instances_busy"] != 0.0 && Instant::now() < settle_by {
        thread::sleep(Duration::from_millis(20));
        samples = serve.scrape();
    }
    assert_eq!(samples["taskstore_instances_busy"], 0.0);
    assert_eq!(samples["taskstore_instances_idle"], 0.0);
    assert_eq!(samples["taskstore_instances_created_total"], 1.0);
    for (series, value) in family(&samples, "taskstore_instances_discarded_total") {
        let want = if series.contains(r#"reason="deadline""#) {
            1.0
        } else {
            0.0
        };
        assert_eq!(value, want, "{series}");
    }
    assert!(family(&samples, "taskstore_redis_errors_total")
        .values()
        .all(|value| *value == 0.0));
    assert_eq!(
        samples[&requests_series("/research/tasks", "GET", "5xx")],
        1.0
    );
}

/// A connection over `--max-connections` while every open one is in a request is refused,
/// and counted (the metrics listener is not under that cap).
#[test]
fn connections_refused_at_the_cap_are_counted() {
    let redis = RedisServer::start().unwrap();
    let serve = Operated::start(&redis.url(), &["--max-connections", "1"], &[]);
    // In a request once the host reads its body (it says `100 Continue` then), of which
    // one byte of ten has come.
    let mut trickler = TcpStream::connect(serve.addr).unwrap();
    write!(
        trickler,
        "POST /research/tasks HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 10\r\nExpect: 100-continue\r\n\r\n{{",
        serve.addr
    )
    .unwrap();
    trickler
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut interim = [0_u8; 25];
    trickler
        .read_exact(&mut interim)
        .expect("the host reads the body within 20 s");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    for _ in 0..2 {
        // Sends nothing: the host answers at once, and nothing unread makes its close a reset.
        let mut refused = TcpStream::connect(serve.addr).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = refused.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    }
    let samples = serve.scrape();
    assert_eq!(
        samples[r#"taskstore_refusals_total{reason="connection_limit"}"#],
        2.0
    );
    drop(trickler);
}
