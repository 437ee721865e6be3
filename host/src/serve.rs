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
//! `timeout-ms`, `default-ttl-seconds`, `max-document-bytes`), which this host fills from
//! [`ServeConfig`]: the same keys `wasmtime serve -S config-var=...` sets.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::cache::{compile, ComponentCache};
use crate::network::NetworkPolicy;
use crate::options::{redact_url, url_secrets};
use crate::output::GuestOutput;
use crate::runtime::{deadline_ticks, engine_config, to_anyhow, EpochTicker};
use crate::sandbox::wasi_context;

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
            .finish_non_exhaustive()
    }
}

impl ServeConfig {
    /// Defaults for everything but the Redis URL.
    pub fn new(redis_url: impl Into<String>) -> ServeConfig {
        let mut config_vars = BTreeMap::new();
        config_vars.insert("redis-url".to_owned(), redis_url.into());
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            component: None,
            config_vars,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_requests_per_instance: DEFAULT_MAX_REQUESTS_PER_INSTANCE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            memory_limit: DEFAULT_REQUEST_MEMORY_LIMIT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    fn redis_url(&self) -> anyhow::Result<&str> {
        self.config_vars
            .get("redis-url")
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no redis-url configured"))
    }
}

/// The state of one request's store: WASI (sandboxed), wasi:http, wasi:config, limits.
struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: DenyOutgoingRequests,
    table: ResourceTable,
    config: Arc<WasiConfigVariables>,
    limits: StoreLimits,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The function only talks to Redis: outgoing HTTP is refused.
struct DenyOutgoingRequests;

impl WasiHttpHooks for DenyOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Everything shared by the requests of one server.
struct Shared {
    engine: Engine,
    pre: ProxyPre<RequestState>,
    config: Arc<WasiConfigVariables>,
    network: NetworkPolicy,
    slots: Arc<Semaphore>,
    /// Instances waiting for their next request.
    idle: std::sync::Mutex<Vec<Warm>>,
    max_requests_per_instance: u32,
    request_timeout: Duration,
    memory_limit: usize,
    /// The Redis URL's password, scrubbed from anything logged.
    secrets: Vec<String>,
    _ticker: EpochTicker,
}

/// A bound listener with the compiled function, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown_grace: Duration,
}

impl Server {
    /// Compiles (or loads from `cache`) the component, links it, resolves the Redis host for
    /// the network allow-list, and binds the listener.
    ///
    /// # Errors
    /// The component cannot be read, compiled or linked, or does not export
    /// `wasi:http/incoming-handler`; the Redis URL is malformed or its host does not
    /// resolve; the address cannot be bound.
    pub async fn bind(
        config: ServeConfig,
        cache: Option<&ComponentCache>,
    ) -> anyhow::Result<Server> {
        anyhow::ensure!(
            config.max_concurrent_requests > 0,
            "max concurrent requests must be at least 1"
        );
        let redis_url = config.redis_url()?;
        let secrets = url_secrets(redis_url);
        // The allow-list: the URL's addresses, and for a cluster the nodes it reports.
        let timeout_ms = match config.config_vars.get("timeout-ms") {
            Some(ms) => ms
                .parse::<u64>()
                .map_err(|_| anyhow::anyhow!("timeout-ms must be a number of milliseconds"))?,
            None => u64::from(taskstore::config::DEFAULT_TIMEOUT_MS),
        };
        // For `rediss+cluster://` the host's discovery verifies the nodes as the function
        // will (a value the function rejects makes it answer every request with an error).
        let tls = taskstore::config::TlsSettings {
            ca_certificates: config.config_vars.get("tls-ca-certificates").cloned(),
            danger_accept_invalid_certificates: config
                .config_vars
                .get("danger-accept-invalid-certificates")
                .is_some_and(|value| value == "true"),
        };
        let network = NetworkPolicy::for_url(redis_url, &tls, Duration::from_millis(timeout_ms))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.redact(&secrets)))?;

        let engine = Engine::new(&engine_config()).map_err(to_anyhow)?;
        let bytes = match &config.component {
            Some(path) => std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read component {}: {e}", path.display()))?,
            None => HTTP_COMPONENT.to_vec(),
        };
        let component = match cache {
            Some(cache) => cache.load_or_compile(&engine, &bytes)?.0,
            None => compile(&engine, &bytes)?,
        };
        let mut linker = Linker::<RequestState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(to_anyhow)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut RequestState| {
            WasiConfig::from(&*state.config)
        })
        .map_err(to_anyhow)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| to_anyhow(e).context("the component needs imports this host lacks"))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| {
            to_anyhow(e).context("the component does not export wasi:http/incoming-handler")
        })?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
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
            secrets,
            _ticker: ticker,
        };
        Ok(Server {
            listener,
            shared: Arc::new(shared),
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The address the server listens on.
    ///
    /// # Errors
    /// The socket cannot tell (not expected for a bound listener).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
                // serving, after a pause so a persistent one does not spin.
                Err(e) => {
                    eprintln!("taskstore serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&self.shared);
            let mut stop = stop_rx.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, std::convert::Infallible>(shared.handle(request).await) }
                });
                let connection = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(socket), service);
                let mut connection = pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        // A client that goes away mid-request is its own business.
                        let _ = result;
                        return;
                    }
                    _ = stop.wait_for(|stop| *stop) => {}
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
            eprintln!("taskstore serve: shutting down, waiting for {in_flight} connection(s)");
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
        Ok(remaining)
    }
}

impl Shared {
    /// One request: wait for a slot, run a warm (or new) instance's handler, return its
    /// response, or a JSON error in the function's own format when it gave none.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> hyper::Response<HyperOutgoingBody> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let slot = match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                return error_response(
                    503,
                    "busy",
                    "all request slots stayed busy until the deadline",
                )
            }
        };
        // Taken after the slot: an instance is either idle or owned by a slot holder, so a
        // new one is made only while every existing one is in use by another slot, and
        // there are never more instances (and Redis connections) than slots.
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut warm = match idle {
            Some(warm) => warm,
            None => match tokio::time::timeout_at(deadline, self.instantiate()).await {
                Ok(Ok(warm)) => warm,
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
                return error_response(500, "internal", "the request could not be handed over");
            }
        };

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
                Ok(Err(trap)) => {
                    let trap = to_anyhow(trap);
                    // An epoch interrupt is the deadline reached inside guest code.
                    if trap.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                        HandlerEnd::TimedOut
                    } else {
                        shared.log_trap(&trap, &warm.output);
                        HandlerEnd::Trapped
                    }
                }
                Err(_elapsed) => HandlerEnd::TimedOut,
            };
            // Only an instance that returned normally is used again; one that trapped or
            // was cut off mid-call is dropped with its sockets and Redis connection.
            warm.served += 1;
            if matches!(end, HandlerEnd::Returned) && warm.served < shared.max_requests_per_instance
            {
                shared
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(warm);
            } else {
                drop(warm);
            }
            drop(slot);
            end
        });

        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                eprintln!("taskstore serve: the function answered with an error: {code:?}");
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
        let mut store = Store::new(
            &self.engine,
            RequestState {
                wasi: wasi_context(self.network.clone(), &output),
                http: WasiHttpCtx::new(),
                hooks: DenyOutgoingRequests,
                table: ResourceTable::new(),
                config: Arc::clone(&self.config),
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.memory_limit)
                    .instances(64)
                    .build(),
            },
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(deadline_ticks(self.request_timeout));
        store.epoch_deadline_trap();
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

    fn log(&self, what: &str, error: &anyhow::Error) {
        let mut message = format!("{error:#}");
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        eprintln!("taskstore serve: {what}: {message}");
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
    store: Store<RequestState>,
    proxy: Proxy,
    output: GuestOutput,
    /// Requests it has handled; it is retired at [`ServeConfig::max_requests_per_instance`].
    served: u32,
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

/// The redacted Redis URL of `config`, for messages.
pub fn describe_redis(config: &ServeConfig) -> String {
    config.redis_url().map(redact_url).unwrap_or_default()
}
