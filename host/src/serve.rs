//! `taskstore serve`: the research-task HTTP function, composed with the storage component
//! at build time, served over HTTP/1.1 with `wasmtime-wasi-http`.
//!
//! Requests run in a bounded pool of warm instances, each made from a pre-linked
//! [`ProxyPre`] with its own memory limit and the same sandbox as a [`crate::TaskStore`]: TCP
//! only to the Redis addresses, no outgoing HTTP, no environment or files. At most
//! [`ServeConfig::max_concurrent_requests`] instances exist at once, each holding at most one
//! Redis connection, so that bounds the Redis connections too. An instance serves one request
//! at a time, under the request's deadline, and is reused (keeping its open task store and
//! connection: a fresh connection per request would cost more than the request itself) up to
//! [`ServeConfig::max_requests_per_instance`] times. One that traps or runs past its deadline
//! is dropped: the client gets a `500` or `503`, and no other request is affected.
//!
//! The function reads its settings from `wasi:config/store` (`redis-url`, `key-prefix`,
//! `timeout-ms`, `default-ttl-seconds`, `max-document-bytes`, `tls-ca-certificates`,
//! `danger-accept-invalid-certificates`: the keys of [`research_api::settings`]), which this
//! host fills from [`ServeConfig`]: the same keys `wasmtime serve -S config-var=...` sets. They are parsed
//! here too, with the function's own parser, so that a bad value, or a document limit the
//! instance memory cannot hold, stops the server at startup instead of failing requests.
//!
//! Before a request reaches an instance, the host checks its `Host` against an allow-list and
//! its bearer token against the API key (if one is set), and reads its body whole (capped at
//! the function's `max-document-bytes`, each read bounded in time): a slow or hostile client
//! holds at most a connection, never an instance slot. Connections are capped
//! ([`ServeConfig::max_connections`]; over it the connection that has waited longest for a
//! request head is closed, or, when all are in requests, the new one gets a `503`), a
//! request head must arrive within [`ServeConfig::header_timeout`] (which also closes idle
//! keep-alive connections), and a response write that makes no progress for
//! [`ServeConfig::write_timeout`] closes the connection.
//!
//! What it does is visible three ways: a Prometheus exposition on its own listener
//! ([`ServeConfig::metrics_listen`]), one access-log line per request and the operational
//! messages, all `tracing` events (see [`logging`]). `GET`/`HEAD` of `/healthz`, `/readyz`
//! and `/research/openapi.json` need no API key: orchestrators probe without secrets, and
//! the answers say nothing about any task.

mod connections;
mod guard;
mod io;
pub mod logging;
mod metrics;

pub use guard::{ApiKey, API_KEY_ENV};
pub use logging::LogFormat;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use wasmtime::{Engine, Store};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use hyper_util::rt::{TokioIo, TokioTimer};
use research_api::settings::{Settings, MAX_DOCUMENT_BYTES, REDIS_URL};
use taskstore_model::redact::redact_secrets;

use self::connections::Connections;
use self::guard::{AllowedHosts, Authorization};
use self::io::{read_body, BodyFailure, ThrottledLog, WriteDeadline};
use self::logging::AccessRecord;
use self::metrics::{
    method_label, redis_error_kind, serve_metrics, Discard, Metrics, Refused, Route,
    ERROR_CODE_PREFIX_BYTES,
};
use crate::engine::{
    deadline_ticks, load_component, new_engine, to_anyhow, ComponentCache, EpochTicker,
};
use crate::instance::{linker, Imports, InstanceBuilder, InstanceState};
use crate::network::NetworkPolicy;
use crate::options::{redact_url, url_secrets, ClusterAllow};
use crate::output::GuestOutput;

/// The research-task HTTP function composed with the storage component (see `build.rs`):
/// exports `wasi:http/incoming-handler`, imports only WASI.
pub static HTTP_COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_HTTP_COMPONENT"));

/// Default bound on concurrent requests, and so on Redis connections.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 16;
/// Default number of requests an instance serves before it is replaced.
pub const DEFAULT_MAX_REQUESTS_PER_INSTANCE: u32 = 10_000;
/// Default deadline of one request, from accepting it to its last response byte.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default linear-memory limit of one request's instance.
pub const DEFAULT_REQUEST_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// How long a graceful shutdown waits for requests in flight.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default cap on open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default time a client has to send a request head, from connecting or from the end of its
/// previous response.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for the next bytes of a request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest a response write may make no progress.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept free beyond connections and Redis sockets (listener, logs, cache).
const SPARE_DESCRIPTORS: u64 = 64;
/// Redis sockets one instance may hold (a cluster connection holds one per node).
const REDIS_SOCKETS_PER_INSTANCE: u64 = 4;
/// Target of the server's operational messages.
const SERVE_TARGET: &str = "taskstore::serve";
/// Target of what the function wrote to its stdout and stderr.
const FUNCTION_TARGET: &str = "taskstore::function";

/// What `taskstore serve` runs and how.
#[derive(Clone)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port ([`Server::local_addr`] tells which).
    pub listen: SocketAddr,
    /// The component to serve; `None` for the embedded [`HTTP_COMPONENT`].
    pub component: Option<PathBuf>,
    /// Variables of `wasi:config/store` given to the function; `redis-url` is required by
    /// the embedded function. Values may hold secrets (the URL's password): they are never
    /// logged.
    pub config_vars: BTreeMap<String, String>,
    /// Requests handled at once; more wait for a slot (within their deadline). Also the
    /// most instances, and so the most Redis connections, that exist at once.
    pub max_concurrent_requests: usize,
    /// Requests one instance handles before it is replaced by a fresh one; 1 gives every
    /// request a fresh instance (and a fresh Redis connection). An instance that traps or
    /// runs past its deadline is never used again.
    pub max_requests_per_instance: u32,
    /// Deadline of one request; past it the client gets `503` and the instance is dropped.
    pub request_timeout: Duration,
    /// Linear-memory limit of one request's instance.
    pub memory_limit: usize,
    /// How long shutdown waits for requests in flight before dropping them.
    pub shutdown_grace: Duration,
    /// Open client connections at most. One more replaces the connection that has waited
    /// longest for a request head; when every connection is in a request, it is answered
    /// `503` and closed (accepting goes on). Startup fails if the process's file-descriptor
    /// limit cannot cover it.
    pub max_connections: usize,
    /// A client must send a complete request head within this, counted from connecting or
    /// from the end of its previous response (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a request body; past it the client gets `408`.
    pub body_read_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection.
    pub write_timeout: Duration,
    /// When set, every request needs `Authorization: Bearer <key>`. Required to listen on a
    /// non-loopback address.
    pub api_key: Option<ApiKey>,
    /// Host names requests may address (`Host`), besides `localhost` and the listen address.
    pub allowed_hosts: Vec<String>,
    /// Cluster URLs only: where nodes the cluster reports may be reached besides the seeds'
    /// own hosts (as the library's `Options::cluster_allow`).
    pub cluster_allow: Vec<ClusterAllow>,
    /// Where to serve `GET /metrics` (Prometheus text format), if anywhere. Like
    /// [`ServeConfig::listen`], an address other machines can reach needs an API key to be
    /// set, though scrapes never present it (see the README's "Running it in production").
    pub metrics_listen: Option<SocketAddr>,
    /// One access-log event (target `taskstore::access`) per request.
    pub access_log: bool,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("component", &self.component)
            .field("config_keys", &self.config_vars.keys().collect::<Vec<_>>())
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("request_timeout", &self.request_timeout)
            .field("memory_limit", &self.memory_limit)
            .field("max_connections", &self.max_connections)
            .field("api_key", &self.api_key.is_some())
            .field("allowed_hosts", &self.allowed_hosts)
            .field("cluster_allow", &self.cluster_allow)
            .field("metrics_listen", &self.metrics_listen)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Defaults for everything but the Redis URL.
    pub fn new(redis_url: impl Into<String>) -> ServeConfig {
        let mut config_vars = BTreeMap::new();
        config_vars.insert(REDIS_URL.to_owned(), redis_url.into());
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            component: None,
            config_vars,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_requests_per_instance: DEFAULT_MAX_REQUESTS_PER_INSTANCE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            memory_limit: DEFAULT_REQUEST_MEMORY_LIMIT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            api_key: None,
            allowed_hosts: Vec::new(),
            cluster_allow: Vec::new(),
            metrics_listen: None,
            access_log: true,
        }
    }

    fn redis_url(&self) -> anyhow::Result<&str> {
        self.config_vars
            .get(REDIS_URL)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no {REDIS_URL} configured"))
    }
}

/// Everything shared by the requests of one server.
struct Shared {
    engine: Engine,
    pre: ProxyPre<InstanceState>,
    config: Arc<WasiConfigVariables>,
    network: NetworkPolicy,
    slots: Arc<Semaphore>,
    /// Instances waiting for their next request.
    idle: std::sync::Mutex<Vec<Warm>>,
    max_requests_per_instance: u32,
    request_timeout: Duration,
    memory_limit: usize,
    /// The function's `max-document-bytes`: the largest request body read.
    max_body_bytes: usize,
    body_read_timeout: Duration,
    api_key: Option<ApiKey>,
    allowed_hosts: AllowedHosts,
    /// The Redis URL's password, scrubbed from anything logged.
    secrets: Vec<String>,
    metrics: Arc<Metrics>,
    access_log: bool,
    _ticker: EpochTicker,
}

/// A bound listener with the compiled function, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    /// The `/metrics` listener and the hosts it answers for.
    metrics_listener: Option<(TcpListener, AllowedHosts)>,
    shared: Arc<Shared>,
    shutdown_grace: Duration,
    max_connections: usize,
    header_timeout: Duration,
    write_timeout: Duration,
}

impl Server {
    /// Compiles (or loads from `cache`) the component, links it, resolves the Redis host for
    /// the network allow-list, and binds the listener.
    ///
    /// # Errors
    /// The component cannot be read, compiled or linked, or does not export
    /// `wasi:http/incoming-handler`; a function setting is malformed, or its
    /// `max-document-bytes` needs more than the instance memory limit; the listen address is
    /// not loopback and no API key is set; the file-descriptor limit cannot cover the
    /// connection cap; the Redis URL is malformed or its host does not resolve; the address
    /// cannot be bound; the metrics address is not loopback and no API key is set, or cannot
    /// be bound.
    pub async fn bind(
        config: ServeConfig,
        cache: Option<&ComponentCache>,
    ) -> anyhow::Result<Server> {
        anyhow::ensure!(
            config.max_concurrent_requests > 0,
            "max concurrent requests must be at least 1"
        );
        anyhow::ensure!(
            config.max_connections > 0,
            "max connections must be at least 1"
        );
        anyhow::ensure!(
            config.listen.ip().is_loopback() || config.api_key.is_some(),
            "listening on {}, which other machines can reach, needs an API key \
             (--api-key-file PATH or {API_KEY_ENV})",
            config.listen.ip()
        );
        if let Some(metrics_listen) = config.metrics_listen {
            anyhow::ensure!(
                metrics_listen.ip().is_loopback() || config.api_key.is_some(),
                "serving metrics on {}, which other machines can reach, needs an API key for \
                 the API (--api-key-file PATH or {API_KEY_ENV}): a server meant for this \
                 machine alone must not publish even its counters",
                metrics_listen.ip()
            );
        }
        // The function's own parser: messages name keys, never values (the URL's password).
        let settings = Settings::load(|key| Ok(config.config_vars.get(key).cloned()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let needed = settings.min_memory_bytes();
        anyhow::ensure!(
            config.memory_limit >= needed,
            "{MAX_DOCUMENT_BYTES} {} needs an instance memory limit of at least {} MiB (room \
             for the copies of a document the function holds while serving it); raise the \
             memory limit or lower {MAX_DOCUMENT_BYTES}",
            settings.max_document_bytes(),
            needed.div_ceil(1 << 20)
        );
        ensure_descriptors(&config)?;
        let redis_url = config.redis_url()?;
        let secrets = url_secrets(redis_url);
        // The allow-list: the URL's addresses, and for a cluster the nodes it reports.
        let timeout_ms = settings
            .timeout_ms
            .unwrap_or(taskstore::config::DEFAULT_TIMEOUT_MS);
        // For `rediss+cluster://` the host's discovery verifies the nodes as the function
        // will, from the same parsed settings.
        let tls = taskstore::config::TlsSettings {
            ca_certificates: settings.tls_ca_certificates.clone(),
            danger_accept_invalid_certificates: settings
                .danger_accept_invalid_certificates
                .unwrap_or(false),
        };
        let network = NetworkPolicy::for_url_allowing(
            redis_url,
            &tls,
            Duration::from_millis(timeout_ms.into()),
            &config.cluster_allow,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.redact(&secrets)))?;

        let engine = new_engine()?;
        let bytes = match &config.component {
            Some(path) => std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read component {}: {e}", path.display()))?,
            None => HTTP_COMPONENT.to_vec(),
        };
        let (component, _) = load_component(&engine, &bytes, cache)?;
        let instance_pre = linker(&engine, Imports::WasiHttpConfig)?
            .instantiate_pre(&component)
            .map_err(|e| to_anyhow(e).context("the component needs imports this host lacks"))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| {
            to_anyhow(e).context("the component does not export wasi:http/incoming-handler")
        })?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?;
                let bound = listener.local_addr()?;
                Some((listener, AllowedHosts::new(bound, &config.allowed_hosts)))
            }
            None => None,
        };
        let ticker = EpochTicker::start(&engine)?;
        let shared = Shared {
            engine,
            pre,
            config: Arc::new(config.config_vars.iter().collect()),
            network,
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            idle: std::sync::Mutex::new(Vec::new()),
            max_requests_per_instance: config.max_requests_per_instance.max(1),
            request_timeout: config.request_timeout,
            memory_limit: config.memory_limit,
            max_body_bytes: settings.max_document_bytes(),
            body_read_timeout: config.body_read_timeout,
            api_key: config.api_key.clone(),
            allowed_hosts: AllowedHosts::new(config.listen, &config.allowed_hosts),
            secrets,
            metrics: Arc::new(Metrics::new()),
            access_log: config.access_log,
            _ticker: ticker,
        };
        Ok(Server {
            listener,
            metrics_listener,
            shared: Arc::new(shared),
            shutdown_grace: config.shutdown_grace,
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            write_timeout: config.write_timeout,
        })
    }

    /// The address the server listens on.
    ///
    /// # Errors
    /// The socket cannot tell (not expected for a bound listener).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address `/metrics` is served on, if [`ServeConfig::metrics_listen`] was set.
    ///
    /// # Errors
    /// As [`Server::local_addr`].
    pub fn metrics_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.metrics_listener
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
            .transpose()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight
    /// finish (for at most the configured grace period) and returns how many connections
    /// were still open when the grace period ended.
    ///
    /// # Errors
    /// Accepting connections fails persistently.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<usize> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let scrapes = self.metrics_listener.map(|(listener, allowed_hosts)| {
            tokio::spawn(serve_metrics(
                listener,
                Arc::clone(&self.shared.metrics),
                allowed_hosts,
                stop_rx.clone(),
            ))
        });
        let open_connections = Connections::new(self.max_connections);
        let mut accept_errors = ThrottledLog::new(Duration::from_secs(1));
        let mut refusals = ThrottledLog::new(Duration::from_secs(1));
        let mut shutdown = pin!(shutdown);
        loop {
            // Reap finished connection tasks so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (socket, _peer) = match accepted {
                Ok(accepted) => accepted,
                // Per-connection failures (reset before accept, out of descriptors): keep
                // serving, after a pause so a persistent one does not spin, and say so at
                // most once a second.
                Err(e) => {
                    let message = format!("accept failed: {e}");
                    if let Some(line) = accept_errors.line(tokio::time::Instant::now(), &message) {
                        tracing::warn!(target: SERVE_TARGET, "{line}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over the cap, the connection that has waited longest for a request head makes
            // room; if every connection is in a request, the new one is answered and closed
            // at once. Either way accepting goes on and descriptors stay within the limit.
            let Some(registered) = open_connections.open(tokio::time::Instant::now()) else {
                let _ = socket.try_write(CONNECTION_LIMIT_RESPONSE);
                self.shared.metrics.refused(Refused::ConnectionLimit);
                let message = format!(
                    "{} connections open, all in requests; refusing new ones",
                    self.max_connections
                );
                if let Some(line) = refusals.line(tokio::time::Instant::now(), &message) {
                    tracing::warn!(target: SERVE_TARGET, "{line}");
                }
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let mut stop = stop_rx.clone();
            let mut builder = http1::Builder::new();
            builder
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(self.header_timeout);
            let io = TokioIo::new(WriteDeadline::new(socket, self.write_timeout));
            connections.spawn(async move {
                let registered = Arc::new(registered);
                let in_service = Arc::clone(&registered);
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    let shared = Arc::clone(&shared);
                    let registered = Arc::clone(&in_service);
                    registered.request_started();
                    let mut exchange = Exchange {
                        started: tokio::time::Instant::now(),
                        method: method_label(request.method()),
                        route: Route::of(request.uri().path()),
                        bytes_in: 0,
                        instance_reuse: None,
                    };
                    async move {
                        let response = Arc::clone(&shared).handle(request, &mut exchange).await;
                        registered.request_finished(tokio::time::Instant::now());
                        Ok::<_, std::convert::Infallible>(Observed::wrap(
                            response, shared, exchange,
                        ))
                    }
                });
                let connection = builder.serve_connection(io, service);
                let mut connection = pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        // A client that goes away mid-request is its own business.
                        let _ = result;
                        return;
                    }
                    _ = stop.wait_for(|stop| *stop) => {}
                    // Replaced while it waited for a request head: closed at once, so that
                    // its descriptor is free for the connection that replaced it.
                    () = registered.replaced() => return,
                }
                // Finish the request in progress, then close: no new requests on it.
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            });
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        while connections.try_join_next().is_some() {}
        let in_flight = connections.len();
        if in_flight > 0 {
            tracing::info!(
                target: SERVE_TARGET,
                "shutting down, waiting for {in_flight} connection(s)"
            );
        }
        let drained = tokio::time::timeout(self.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        let remaining = if drained.is_ok() {
            0
        } else {
            connections.len()
        };
        connections.abort_all();
        if let Some(scrapes) = scrapes {
            scrapes.abort();
        }
        Ok(remaining)
    }
}

impl Shared {
    /// One request: check its host and credentials, read its body, wait for a slot, run a
    /// warm (or new) instance's handler, return its response, or a JSON error in the
    /// function's own format when it gave none.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
        exchange: &mut Exchange,
    ) -> hyper::Response<HyperOutgoingBody> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let admitted = match self.admit(&request, exchange.route) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                self.metrics.refused(match refusal {
                    Refusal::HostNotAllowed => Refused::HostNotAllowed,
                    Refusal::Unauthorized(_) => Refused::Unauthorized,
                });
                return refusal.into_response();
            }
        };
        // A request let in without the key brings no body: a probe has none, and a keyless
        // client must not make the host read a megabyte.
        let max_body_bytes = match admitted {
            Admitted::Keyless => 0,
            Admitted::Authorized => self.max_body_bytes,
        };
        let (head, body) = request.into_parts();
        let body = match read_body(body, max_body_bytes, self.body_read_timeout, deadline).await {
            Ok(body) => body,
            Err(failure) => {
                self.metrics.refused(match failure {
                    BodyFailure::TooLarge => Refused::BodyTooLarge,
                    BodyFailure::Stalled => Refused::BodyTimeout,
                    BodyFailure::Broken => Refused::BodyUnreadable,
                });
                return self.body_failure_response(failure, max_body_bytes);
            }
        };
        exchange.bytes_in = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let request = hyper::Request::from_parts(
            head,
            Full::new(body).map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
        );
        let slot = match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                self.metrics.refused(Refused::NoSlot);
                return error_response(
                    503,
                    "busy",
                    "all request slots stayed busy until the deadline",
                );
            }
        };
        // Taken after the slot: an instance is either idle or owned by a slot holder, so a
        // new one is made only while every existing one is in use by another slot, and
        // there are never more instances (and Redis connections) than slots.
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let warm = idle.pop();
            self.metrics.set_idle(idle.len());
            warm
        };
        let mut warm = match idle {
            Some(warm) => warm,
            None => match tokio::time::timeout_at(deadline, self.instantiate()).await {
                Ok(Ok(warm)) => {
                    self.metrics.instance_created();
                    warm
                }
                Ok(Err(e)) => {
                    self.log("cannot instantiate the function", &e);
                    return error_response(500, "internal", "the function could not be started");
                }
                Err(_) => {
                    return error_response(
                        503,
                        "timeout",
                        "the request did not complete within its deadline",
                    )
                }
            },
        };
        warm.store
            .set_epoch_deadline(deadline_ticks(deadline - tokio::time::Instant::now()));
        exchange.instance_reuse = Some(warm.served);

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let mut http = warm.store.data_mut().http();
            let request = http.new_incoming_request(Scheme::Http, request)?;
            let outparam = http.new_response_outparam(sender)?;
            wasmtime::Result::Ok((request, outparam))
        })();
        let (incoming, outparam) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.log("cannot pass the request to the function", &to_anyhow(e));
                self.metrics.instance_discarded(Discard::Unusable);
                return error_response(500, "internal", "the request could not be handed over");
            }
        };
        self.metrics.instance_busy();

        // The handler runs in its own task: it may keep writing the body after it has sent
        // the head, and stays bounded by the deadline even if the client goes away.
        let shared = Arc::clone(&self);
        let handler = tokio::spawn(async move {
            let call = warm.proxy.wasi_http_incoming_handler().call_handle(
                &mut warm.store,
                incoming,
                outparam,
            );
            let end = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(())) => HandlerEnd::Returned,
                // An epoch interrupt is the deadline reached inside guest code. Recognised
                // on wasmtime's own error: once converted, the trap code is out of reach.
                Ok(Err(trap))
                    if trap.downcast_ref::<wasmtime::Trap>()
                        == Some(&wasmtime::Trap::Interrupt) =>
                {
                    HandlerEnd::TimedOut
                }
                Ok(Err(trap)) => {
                    shared.log_function_output(&warm.output);
                    shared.log_trap(&to_anyhow(trap), &warm.output);
                    HandlerEnd::Trapped
                }
                Err(_elapsed) => HandlerEnd::TimedOut,
            };
            // The function's own reasons for its errors (one line each), for operators.
            shared.log_function_output(&warm.output);
            if matches!(end, HandlerEnd::TimedOut) {
                tracing::warn!(
                    target: SERVE_TARGET,
                    "a request ran past its {} ms deadline and was cut off",
                    shared.request_timeout.as_millis()
                );
            }
            // Only an instance that returned normally is used again; one that trapped or
            // was cut off mid-call is dropped with its sockets and Redis connection.
            warm.served += 1;
            let discard = match end {
                HandlerEnd::Trapped => Some(Discard::Trap),
                HandlerEnd::TimedOut => Some(Discard::Deadline),
                HandlerEnd::Returned if warm.served >= shared.max_requests_per_instance => {
                    Some(Discard::ReuseLimit)
                }
                HandlerEnd::Returned => None,
            };
            shared.metrics.instance_done();
            match discard {
                None => {
                    let mut idle = shared.idle.lock().unwrap_or_else(|e| e.into_inner());
                    idle.push(warm);
                    shared.metrics.set_idle(idle.len());
                }
                Some(discard) => {
                    shared.metrics.instance_discarded(discard);
                    drop(warm);
                }
            }
            drop(slot);
            end
        });

        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                tracing::warn!(
                    target: SERVE_TARGET,
                    "the function answered with an error: {code:?}"
                );
                error_response(500, "internal", "the function failed to produce a response")
            }
            // The outparam was dropped unset: the handler trapped, timed out or returned
            // without answering.
            Err(_) => match handler.await {
                Ok(HandlerEnd::TimedOut) => error_response(
                    503,
                    "timeout",
                    "the request did not complete within its deadline",
                ),
                Ok(HandlerEnd::Returned) => {
                    error_response(500, "internal", "the function returned without a response")
                }
                Ok(HandlerEnd::Trapped) | Err(_) => error_response(
                    500,
                    "internal",
                    "the function failed while handling the request",
                ),
            },
        }
    }

    /// A new instance in its own store: sandboxed WASI, the function's config, limits.
    async fn instantiate(&self) -> anyhow::Result<Warm> {
        let output = GuestOutput::new(4096);
        let mut store = InstanceBuilder::new(
            &self.network,
            &output,
            self.memory_limit,
            self.request_timeout,
        )
        // The composed function (HTTP function and storage component) creates a handful of
        // core instances; 64 bounds that far below wasmtime's default of 10,000.
        .max_instances(64)
        .config(&self.config)
        .build(&self.engine);
        let proxy = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(to_anyhow)?;
        Ok(Warm {
            store,
            proxy,
            output,
            served: 0,
        })
    }

    /// The checks that need no instance: the `Host` allow-list, then the API key, which
    /// `GET` and `HEAD` of the public routes (probes, the contract) do without.
    fn admit(&self, request: &hyper::Request<Incoming>, route: Route) -> Result<Admitted, Refusal> {
        let authority = match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|host| host.to_str().ok()),
        };
        if !authority.is_some_and(|authority| self.allowed_hosts.admits(authority)) {
            return Err(Refusal::HostNotAllowed);
        }
        let Some(key) = &self.api_key else {
            return Ok(Admitted::Authorized);
        };
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        match key.admits(header) {
            Authorization::Admitted => Ok(Admitted::Authorized),
            _ if route.is_public()
                && matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD) =>
            {
                Ok(Admitted::Keyless)
            }
            refused => Err(Refusal::Unauthorized(refused)),
        }
    }

    fn body_failure_response(
        &self,
        failure: BodyFailure,
        limit: usize,
    ) -> hyper::Response<HyperOutgoingBody> {
        let mut response = match failure {
            BodyFailure::TooLarge if limit == 0 => error_response(
                413,
                "body_too_large",
                "a request without the API key may not carry a body",
            ),
            BodyFailure::TooLarge => error_response(
                413,
                "body_too_large",
                &format!(
                    "the request body is larger than {limit} bytes, the most this function \
                     accepts (its {MAX_DOCUMENT_BYTES}, sized to its instance memory)"
                ),
            ),
            BodyFailure::Stalled => error_response(
                408,
                "body_timeout",
                "the request body did not arrive in time",
            ),
            BodyFailure::Broken => {
                error_response(400, "body_unreadable", "the request body could not be read")
            }
        };
        // The rest of the body was not read: the connection cannot carry another request.
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        response
    }

    /// What the function wrote to stdout and stderr during a request, one log line each.
    fn log_function_output(&self, output: &GuestOutput) {
        for line in output.take_lines() {
            tracing::warn!(target: FUNCTION_TARGET, "{}", self.redact(line));
        }
    }

    fn redact(&self, text: String) -> String {
        redact_secrets(text, &self.secrets)
    }

    fn log(&self, what: &str, error: &anyhow::Error) {
        let message = self.redact(format!("{error:#}"));
        tracing::error!(target: SERVE_TARGET, "{what}: {message}");
    }

    /// A response written whole, or abandoned: its metrics and access-log line.
    fn finished(&self, exchange: &Exchange, status: u16, bytes_out: u64, error_start: &[u8]) {
        let duration = exchange.started.elapsed();
        let redis_error = (status >= 500)
            .then(|| redis_error_kind(error_start))
            .flatten();
        self.metrics.request(
            exchange.route,
            exchange.method,
            status,
            duration,
            redis_error,
        );
        if self.access_log {
            AccessRecord {
                method: exchange.method,
                route: exchange.route,
                status,
                duration,
                bytes_in: exchange.bytes_in,
                bytes_out,
                instance_reuse: exchange.instance_reuse,
            }
            .emit();
        }
    }

    fn log_trap(&self, trap: &anyhow::Error, output: &GuestOutput) {
        let mut what = String::from("the function trapped");
        if let Some(line) = output.last_line() {
            what.push_str(&format!(" (last output: {line})"));
        }
        self.log(&what, trap);
    }
}

/// An instance between requests: its store keeps the function's state, including its open
/// task store and that store's Redis connection.
struct Warm {
    store: Store<InstanceState>,
    proxy: Proxy,
    output: GuestOutput,
    /// Requests it has handled; it is retired at [`ServeConfig::max_requests_per_instance`].
    served: u32,
}

/// What one request did, filled in as it goes, for its metrics and access-log line.
struct Exchange {
    started: tokio::time::Instant,
    method: &'static str,
    route: Route,
    /// Request body bytes read.
    bytes_in: u64,
    /// Requests the serving instance had served before this one; `None` when none ran.
    instance_reuse: Option<u32>,
}

/// How a request got past [`Shared::admit`].
enum Admitted {
    /// With the API key, or none is needed.
    Authorized,
    /// A public route without the key.
    Keyless,
}

/// A response body that reports, once written whole or abandoned (the client went away),
/// what the request did: counted bytes, and the first bytes of a `5xx` body, where the
/// function names its error code.
struct Observed {
    inner: HyperOutgoingBody,
    status: u16,
    bytes_out: u64,
    error_start: Vec<u8>,
    /// Taken when reported.
    report: Option<(Arc<Shared>, Exchange)>,
}

impl Observed {
    fn wrap(
        response: hyper::Response<HyperOutgoingBody>,
        shared: Arc<Shared>,
        exchange: Exchange,
    ) -> hyper::Response<HyperOutgoingBody> {
        let status = response.status().as_u16();
        response.map(|inner| {
            Observed {
                inner,
                status,
                bytes_out: 0,
                error_start: Vec::new(),
                report: Some((shared, exchange)),
            }
            .boxed_unsync()
        })
    }

    fn report(&mut self) {
        if let Some((shared, exchange)) = self.report.take() {
            shared.finished(&exchange, self.status, self.bytes_out, &self.error_start);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += u64::try_from(data.len()).unwrap_or(u64::MAX);
                    let wanted = ERROR_CODE_PREFIX_BYTES.saturating_sub(this.error_start.len());
                    if this.status >= 500 && wanted > 0 {
                        this.error_start
                            .extend_from_slice(&data[..wanted.min(data.len())]);
                    }
                }
                // Reported before hyper writes the last bytes: a client that has read its
                // whole response finds it counted.
                if this.inner.is_end_stream() {
                    this.report();
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.report(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.report();
    }
}

/// Why a request was refused before its body was read.
enum Refusal {
    HostNotAllowed,
    /// The API key was missing or wrong.
    Unauthorized(Authorization),
}

impl Refusal {
    fn into_response(self) -> hyper::Response<HyperOutgoingBody> {
        let challenge = match self {
            Refusal::HostNotAllowed => {
                return error_response(
                    421,
                    "host_not_allowed",
                    "this server does not serve the host the request names",
                )
            }
            Refusal::Unauthorized(Authorization::Invalid) => {
                r#"Bearer realm="taskstore", error="invalid_token""#
            }
            Refusal::Unauthorized(_) => r#"Bearer realm="taskstore""#,
        };
        let mut response = error_response(
            401,
            "unauthorized",
            "this server needs Authorization: Bearer <API key>",
        );
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static(challenge),
        );
        response
    }
}

/// How a request's handler task ended.
enum HandlerEnd {
    Returned,
    Trapped,
    TimedOut,
}

/// A JSON error in the function's own format: `{"error":{"code","message"}}`.
fn error_response(status: u16, code: &str, message: &str) -> hyper::Response<HyperOutgoingBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if status == 503 {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    response
}

/// What a connection over [`ServeConfig::max_connections`] gets before it is closed, when
/// every open connection is in a request.
const CONNECTION_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 78\r\n\r\n\
{\"error\":{\"code\":\"busy\",\"message\":\"the server has too many open connections\"}}";

/// Makes sure the process may open a descriptor for every connection and Redis socket the
/// configuration allows, raising the soft limit up to the hard one if needed: running out
/// makes `accept` fail for everyone.
fn ensure_descriptors(config: &ServeConfig) -> anyhow::Result<()> {
    let to_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let needed = to_u64(config.max_connections)
        .saturating_add(
            to_u64(config.max_concurrent_requests).saturating_mul(REDIS_SOCKETS_PER_INSTANCE),
        )
        .saturating_add(SPARE_DESCRIPTORS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes only to the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        // Unknown: nothing to check against.
        return Ok(());
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    anyhow::ensure!(
        limit.rlim_max >= needed,
        "--max-connections {} (with --max-concurrent-requests {}) needs about {needed} file \
         descriptors, but this process may open only {} (ulimit -n): lower --max-connections \
         or raise the limit",
        config.max_connections,
        config.max_concurrent_requests,
        limit.rlim_max
    );
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `setrlimit` only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        anyhow::bail!(
            "cannot raise the file-descriptor limit to {needed} for --max-connections {}: {}",
            config.max_connections,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The redacted Redis URL of `config`, for messages.
pub fn describe_redis(config: &ServeConfig) -> String {
    config.redis_url().map(redact_url).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_response_is_well_formed_json_of_its_declared_length() {
        let text = std::str::from_utf8(CONNECTION_LIMIT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.parse::<usize>().ok());
        assert_eq!(declared, Some(body.len()));
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(error["error"]["code"], "busy");
    }
}
