//! The research API over HTTP: `taskstore serve` (the composed wasm function) against a native
//! server of the same two routes, under the same load, side by side in one run.
//!
//! ```text
//! cargo build --release -p taskstore-cli
//! cargo bench -p taskstore-bench --bench http [-- --seconds S] [--reps N] [--connections C] [--taskstore PATH]
//! ```
//!
//! `taskstore` is the release binary next to this one (`target/release/taskstore`) unless
//! `--taskstore` names another: it is built by its own cargo run, since building the CLI and
//! this benchmark in one would build the component crates twice (see `Cargo.toml`).
//! `--taskstore` may be repeated: every binary is served and measured in the same run
//! (`serve#1`, `serve#2`, ...), to compare a change with a baseline build under the same load.
//!
//! Both servers run as child processes on loopback against one private `redis-server`:
//! `taskstore serve` with its defaults, and this binary re-run with `--native-server`, an
//! axum + `redis` crate server (what a Rust team would write by hand: one multiplexed
//! connection, tokio's multi-threaded runtime). The native routes do the function's work with
//! the function's own pure code (request parsing, the new task's document, ids and times), so
//! the difference is the wasm boundary and the host, not the API.
//!
//! The load generator is this process: `--connections` keep-alive HTTP/1.1 connections, each
//! sending its next request when the last answer arrived, for `--seconds` per measurement
//! after a short warm-up. Each rep measures every route on every server, in an order that
//! rotates per rep; lines are the medians over the reps:
//!
//! ```text
//! <route> <server> <req_per_s> <p50_us> <p99_us>
//! ratio:[serve#N:]<route> req/s <serve/native> p50 <serve/native>
//! ```
//!
//! The machine's cores are shared by the server under test, Redis and the load generator, as
//! they would be on a small VM; compare the ratio, not the absolute figures, across machines.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The research function's pure document code, compiled in from its source rather than taken
/// as a dependency (see `Cargo.toml`): the native server builds tasks exactly as the function
/// does. Cargo compiles a harness-less benchmark with `--cfg test` but without the test
/// harness, so the file's unit tests vanish and leave their `use super::*` unused.
#[path = "../../function/src/document.rs"]
#[allow(unused_imports)]
mod document;

/// The 1 KiB research task of the component's benchmark; its server-set members are removed to
/// make it a create request.
const TASK: &str = include_str!("../../cli/benches/task.json");
/// A server's start (`serve` compiles the component unless it is cached).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Any one connect or request; a server that stops answering fails the run instead of
/// hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tasks created before the GET runs; each GET reads one of them, round robin.
const SEEDED_TASKS: usize = 256;
const WARM_UP: Duration = Duration::from_millis(500);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--native-server") {
        let redis_url = args.get(1).context("--native-server REDIS_URL")?;
        return native::serve(redis_url);
    }
    let options = Options::parse(&args)?;
    run(&options)
}

struct Options {
    seconds: f64,
    reps: usize,
    connections: usize,
    /// The `taskstore` binaries to serve; more than one are measured side by side in one run
    /// (a change against a baseline build).
    taskstore: Vec<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            seconds: 3.0,
            reps: 3,
            connections: 16,
            taskstore: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .with_context(|| format!("{name} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--seconds" => options.seconds = value("--seconds")?.parse()?,
                "--reps" => options.reps = value("--reps")?.parse()?,
                "--connections" => options.connections = value("--connections")?.parse()?,
                "--taskstore" => options.taskstore.push(value("--taskstore")?.into()),
                other => bail!(
                    "unknown argument {other:?} (--seconds S, --reps N, --connections C, \
                     --taskstore PATH, repeatable)"
                ),
            }
        }
        if !(options.seconds > 0.0 && options.seconds <= 600.0) {
            bail!("--seconds must be in (0, 600]");
        }
        if options.reps == 0 || options.connections == 0 || options.connections > 1024 {
            bail!("--reps must be positive and --connections in 1..=1024");
        }
        if options.taskstore.is_empty() {
            options.taskstore.push(default_taskstore()?);
        }
        for taskstore in &options.taskstore {
            if !taskstore.is_file() {
                bail!(
                    "no taskstore binary at {}: run `cargo build --release -p taskstore-cli` \
                     first, or name one with --taskstore",
                    taskstore.display()
                );
            }
        }
        Ok(options)
    }
}

/// `target/release/taskstore`: this benchmark runs from `target/release/deps/`.
fn default_taskstore() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark's own path has no profile directory")?;
    Ok(profile_dir.join("taskstore"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Get,
    Post,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Get => "GET /research/tasks/{id}",
            Route::Post => "POST /research/tasks",
        }
    }
}

/// One measurement: requests done and each one's latency.
struct Run {
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn run(options: &Options) -> anyhow::Result<()> {
    let redis = taskstore_testing::redis_server::RedisServer::start()?;
    let redis_url = redis.url();
    let body = create_request_body()?;
    // `serve` for one binary; `serve#1`, `serve#2`, ... in `--taskstore` order for several.
    let mut servers = Vec::new();
    for (i, taskstore) in options.taskstore.iter().enumerate() {
        let name = match options.taskstore.len() {
            1 => "serve".to_owned(),
            _ => format!("serve#{}", i + 1),
        };
        let process = ServerProcess::start(Command::new(taskstore).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &redis_url,
        ]))?;
        servers.push((name, process));
    }
    servers.push((
        "native".to_owned(),
        ServerProcess::start(
            Command::new(std::env::current_exe()?).args(["--native-server", &redis_url]),
        )?,
    ));
    let native = servers.len() - 1;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seconds = Duration::from_secs_f64(options.seconds);
    for (name, taskstore) in servers.iter().map(|(name, _)| name).zip(&options.taskstore) {
        println!("# {name}: {}", taskstore.display());
    }
    println!(
        "# {} connection(s), {:.1} s per measurement, {} rep(s), {}-byte create body; medians over reps",
        options.connections,
        options.seconds,
        options.reps,
        body.len()
    );
    println!("# <route> <server> <req_per_s> <p50_us> <p99_us>");
    let routes = [Route::Get, Route::Post];
    // results[route][server]: one Run per rep
    let mut results: Vec<Vec<Vec<Run>>> = routes
        .iter()
        .map(|_| servers.iter().map(|_| Vec::new()).collect())
        .collect();
    let mut seeded = Vec::new();
    for (_, server) in &servers {
        seeded.push(runtime.block_on(seed(server.addr, &body))?);
    }
    for rep in 0..options.reps {
        // The servers' order rotates per rep, so that none always runs first or last.
        let order: Vec<usize> = (0..servers.len())
            .map(|i| (i + rep) % servers.len())
            .collect();
        for (r, &route) in routes.iter().enumerate() {
            for &s in &order {
                let addr = servers[s].1.addr;
                let load = Load {
                    addr,
                    route,
                    body: &body,
                    ids: &seeded[s],
                    connections: options.connections,
                };
                runtime.block_on(load.run(WARM_UP))?;
                results[r][s].push(runtime.block_on(load.run(seconds))?);
            }
        }
    }
    for (r, route) in routes.iter().enumerate() {
        let mut medians = Vec::new();
        for (s, (name, _)) in servers.iter().enumerate() {
            let runs = &mut results[r][s];
            let rate = median_f64(runs.iter().map(Run::per_second).collect());
            let p50 = median_f64(runs.iter_mut().map(|run| percentile(run, 0.50)).collect());
            let p99 = median_f64(runs.iter_mut().map(|run| percentile(run, 0.99)).collect());
            println!("{} {name} {rate:.0} {p50:.0} {p99:.0}", route.name());
            medians.push((rate, p50));
        }
        for (s, (name, _)) in servers.iter().enumerate().take(native) {
            // With one binary the line keeps its old form: `ratio:<route> ...`.
            let label = match native {
                1 => String::new(),
                _ => format!("{name}:"),
            };
            println!(
                "ratio:{label}{} req/s {:.2} p50 {:.2}",
                route.name(),
                medians[s].0 / medians[native].0,
                medians[s].1 / medians[native].1
            );
        }
    }
    for (_, server) in &mut servers {
        server.stop();
    }
    Ok(())
}

/// The benchmark task as a create request: without the members the server sets.
fn create_request_body() -> anyhow::Result<Vec<u8>> {
    let mut task: serde_json::Map<String, serde_json::Value> = serde_json::from_str(TASK)?;
    for reserved in document::RESERVED_ON_CREATE {
        task.remove(reserved);
    }
    Ok(serde_json::to_vec(&task)?)
}

/// Creates [`SEEDED_TASKS`] tasks through the server; returns their ids.
async fn seed(addr: SocketAddr, body: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut connection = Connection::open(addr).await?;
    let mut ids = Vec::with_capacity(SEEDED_TASKS);
    for _ in 0..SEEDED_TASKS {
        let (status, reply) = connection
            .send(Route::Post, "/research/tasks", body)
            .await?;
        if status != 201 {
            bail!(
                "seeding: POST answered {status}: {}",
                String::from_utf8_lossy(&reply)
            );
        }
        let created: serde_json::Value = serde_json::from_slice(&reply)?;
        let id = created["task_id"]
            .as_str()
            .ok_or_else(|| anyhow!("seeding: no task_id in {created}"))?;
        ids.push(id.to_string());
    }
    Ok(ids)
}

struct Load<'a> {
    addr: SocketAddr,
    route: Route,
    body: &'a [u8],
    ids: &'a [String],
    connections: usize,
}

impl Load<'_> {
    /// Every connection sends requests back to back until `length` has passed; any answer
    /// other than the route's success status stops the run with an error.
    async fn run(&self, length: Duration) -> anyhow::Result<Run> {
        let start = Instant::now();
        let deadline = start + length;
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..self.connections {
            let addr = self.addr;
            let route = self.route;
            let body = self.body.to_vec();
            let paths: Vec<String> = match route {
                Route::Get => self
                    .ids
                    .iter()
                    .map(|id| format!("/research/tasks/{id}"))
                    .collect(),
                Route::Post => vec!["/research/tasks".to_string()],
            };
            tasks.spawn(async move {
                let mut connection = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                let mut next = c;
                while Instant::now() < deadline {
                    let path = &paths[next % paths.len()];
                    next += 1;
                    let sent = Instant::now();
                    let (status, reply) = connection.send(route, path, &body).await?;
                    let expected = if route == Route::Get { 200 } else { 201 };
                    if status != expected {
                        bail!(
                            "{} {path} answered {status}: {}",
                            route.name(),
                            String::from_utf8_lossy(&reply)
                        );
                    }
                    let micros = sent.elapsed().as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                anyhow::Ok(latencies)
            });
        }
        let mut latencies_us = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            latencies_us.extend(joined??);
        }
        Ok(Run {
            requests: latencies_us.len() as u64,
            elapsed: start.elapsed(),
            latencies_us,
        })
    }
}

/// One keep-alive HTTP/1.1 connection (hyper's client connection, no pool).
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    addr: SocketAddr,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, addr })
    }

    /// One request and its whole answer, within [`REQUEST_TIMEOUT`].
    async fn send(
        &mut self,
        route: Route,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, bytes::Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(route, path, body))
            .await
            .with_context(|| {
                format!(
                    "{} {path}: no answer within {REQUEST_TIMEOUT:?}",
                    route.name()
                )
            })?
    }

    async fn exchange(
        &mut self,
        route: Route,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt;
        let request = hyper::Request::builder()
            .uri(path)
            .header("host", self.addr.to_string());
        let request = match route {
            Route::Get => request
                .method("GET")
                .body(http_body_util::Full::new(bytes::Bytes::new()))?,
            Route::Post => request
                .method("POST")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                    body,
                )))?,
        };
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn percentile(run: &mut Run, p: f64) -> f64 {
    if run.latencies_us.is_empty() {
        return f64::NAN;
    }
    run.latencies_us.sort_unstable();
    let index = ((run.latencies_us.len() - 1) as f64 * p).round() as usize;
    f64::from(run.latencies_us[index])
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A server child process that prints `listening on http://ADDR` first; killed and reaped on
/// drop.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(command: &mut Command) -> anyhow::Result<ServerProcess> {
        let mut child = command
            .env_remove("REDIS_PASSWORD")
            .env_remove("TASKSTORE_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start a server")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut stderr = child.stderr.take().context("piped stderr")?;
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = line_tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let Ok(first) = line_rx.recv_timeout(START_TIMEOUT) else {
            server.stop();
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            bail!("the server did not start: {text}");
        };
        // Its stderr (one line per failed request, if any) is drained and dropped.
        thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        });
        server.addr = first
            .strip_prefix("listening on http://")
            .ok_or_else(|| anyhow!("unexpected first line {first:?}"))?
            .parse()?;
        Ok(server)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The hand-written native server: axum + the `redis` crate's multiplexed async connection.
mod native {
    use super::document::{self, Members, RESERVED_ON_CREATE};
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::Router;
    use serde::Serialize;
    use serde_json::value::RawValue;

    use taskstore_model::limits::{
        DEFAULT_KEY_PREFIX as KEY_PREFIX, DEFAULT_TTL_SECONDS as TTL_SECONDS,
    };

    /// `research_api::service::MAX_ECHOED_TASK_BYTES`.
    const MAX_ECHOED_TASK_BYTES: usize = 64 * 1024;

    type Connection = redis::aio::MultiplexedConnection;

    pub fn serve(redis_url: &str) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = redis::Client::open(redis_url)?;
            let connection = client.get_multiplexed_async_connection().await?;
            let app = Router::new()
                .route("/research/tasks", post(create))
                .route("/research/tasks/{id}", get(read))
                .with_state(connection);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).await?;
            anyhow::Ok(())
        })
    }

    fn error(status: StatusCode, code: &str, message: &str) -> Response {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        (status, axum::Json(body)).into_response()
    }

    fn storage_error(err: redis::RedisError) -> Response {
        eprintln!("native server: redis: {err}");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage unavailable",
        )
    }

    async fn read(State(mut redis): State<Connection>, Path(id): Path<String>) -> Response {
        if taskstore_model::validate_id(&id).is_err() {
            return error(StatusCode::BAD_REQUEST, "invalid_id", "invalid task id");
        }
        let stored: Option<String> = match redis::cmd("GET")
            .arg(format!("{KEY_PREFIX}{id}"))
            .query_async(&mut redis)
            .await
        {
            Ok(stored) => stored,
            Err(err) => return storage_error(err),
        };
        match stored {
            Some(task) if document::as_object(&task).is_some() => {
                ([(header::CONTENT_TYPE, "application/json")], task).into_response()
            }
            Some(_) => error(StatusCode::BAD_GATEWAY, "corrupt_data", "not a JSON object"),
            None => error(StatusCode::NOT_FOUND, "task_not_found", "no such task"),
        }
    }

    async fn create(
        State(mut redis): State<Connection>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "JSON only",
            );
        }
        let members = match Members::parse(&body) {
            Ok(members) => members,
            Err(reason) => return error(StatusCode::BAD_REQUEST, "invalid_json", &reason),
        };
        let query_ok = members
            .get("query")
            .and_then(document::as_string)
            .is_some_and(|query| !query.trim().is_empty());
        if !query_ok
            || RESERVED_ON_CREATE
                .iter()
                .any(|name| members.get(name).is_some())
        {
            return error(StatusCode::BAD_REQUEST, "invalid_task", "invalid task");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let Some(created_at) = document::rfc3339_utc_micros(now.as_secs(), now.subsec_nanos())
        else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "clock out of range",
            );
        };
        let mut random = [0u8; 16];
        if getrandom::fill(&mut random).is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no randomness",
            );
        }
        let id = document::uuid_v4(random);
        let task = document::new_task_document(&id, &created_at, &members);
        let written: Option<String> = match redis::cmd("SET")
            .arg(format!("{KEY_PREFIX}{id}"))
            .arg(&task)
            .arg("NX")
            .arg("EX")
            .arg(TTL_SECONDS)
            .query_async(&mut redis)
            .await
        {
            Ok(written) => written,
            Err(err) => return storage_error(err),
        };
        if written.is_none() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "id collision",
            );
        }
        // The function's `201`: the new task echoed unless it is larger than 64 KiB.
        #[derive(Serialize)]
        struct Created<'a> {
            task_id: &'a str,
            status: &'a str,
            created_at: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            task: Option<&'a RawValue>,
        }
        let created = Created {
            task_id: &id,
            status: "pending",
            created_at: &created_at,
            task: match task.len() <= MAX_ECHOED_TASK_BYTES {
                true => document::as_object(&task),
                false => None,
            },
        };
        let location = format!("/research/tasks/{id}");
        (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            axum::Json(created),
        )
            .into_response()
    }
}
