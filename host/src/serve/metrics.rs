//! `serve --metrics-listen`: the server's counters in the Prometheus text format, on a
//! listener of their own (never on the API's, so a proxy in front of the API does not
//! publish them by accident).
//!
//! Every label takes its value from a short fixed list: the route template (never a raw
//! path, which holds task ids), a method from the standard ones, a status class. A client
//! cannot grow the number of series, whatever it sends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::guard::AllowedHosts;

/// The route templates requests are counted and logged under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Collection,
    Task,
    OpenApi,
    Healthz,
    Readyz,
    Other,
}

impl Route {
    /// The template `path` (without its query) matches, as the function routes it.
    pub(crate) fn of(path: &str) -> Route {
        const COLLECTION: &str = "/research/tasks";
        match path {
            COLLECTION => Route::Collection,
            "/research/openapi.json" => Route::OpenApi,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => match path
                .strip_prefix(COLLECTION)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(id) if !id.is_empty() && !id.contains('/') => Route::Task,
                _ => Route::Other,
            },
        }
    }

    pub(crate) fn template(self) -> &'static str {
        match self {
            Route::Collection => "/research/tasks",
            Route::Task => "/research/tasks/{id}",
            Route::OpenApi => "/research/openapi.json",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Other => "other",
        }
    }

    /// Answered without the API key (GET and HEAD only): they tell whether the server is up
    /// and ready, and publish the contract, nothing about any task.
    pub(crate) fn is_public(self) -> bool {
        matches!(self, Route::OpenApi | Route::Healthz | Route::Readyz)
    }
}

/// A request method as a label: the standard ones by name, any extension method as `other`.
pub(crate) fn method_label(method: &hyper::Method) -> &'static str {
    match *method {
        hyper::Method::GET => "GET",
        hyper::Method::POST => "POST",
        hyper::Method::PATCH => "PATCH",
        hyper::Method::DELETE => "DELETE",
        hyper::Method::PUT => "PUT",
        hyper::Method::HEAD => "HEAD",
        hyper::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Why an instance was dropped instead of serving another request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Discard {
    /// It trapped.
    Trap,
    /// It was cut off at the request's deadline.
    Deadline,
    /// It had served `--max-requests-per-instance` requests.
    ReuseLimit,
    /// The request could not be handed to it (the host's resource table refused).
    Unusable,
}

impl Discard {
    const ALL: [Discard; 4] = [
        Discard::Trap,
        Discard::Deadline,
        Discard::ReuseLimit,
        Discard::Unusable,
    ];

    fn label(self) -> &'static str {
        match self {
            Discard::Trap => "trap",
            Discard::Deadline => "deadline",
            Discard::ReuseLimit => "reuse_limit",
            Discard::Unusable => "unusable",
        }
    }
}

/// Why the host answered a request (or a connection) itself, before any instance ran.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refused {
    HostNotAllowed,
    Unauthorized,
    BodyTooLarge,
    BodyTimeout,
    BodyUnreadable,
    /// Every request slot stayed busy until the request's deadline.
    NoSlot,
    /// A connection over `--max-connections` while every open one was in a request.
    ConnectionLimit,
}

impl Refused {
    const ALL: [Refused; 7] = [
        Refused::HostNotAllowed,
        Refused::Unauthorized,
        Refused::BodyTooLarge,
        Refused::BodyTimeout,
        Refused::BodyUnreadable,
        Refused::NoSlot,
        Refused::ConnectionLimit,
    ];

    fn label(self) -> &'static str {
        match self {
            Refused::HostNotAllowed => "host_not_allowed",
            Refused::Unauthorized => "unauthorized",
            Refused::BodyTooLarge => "body_too_large",
            Refused::BodyTimeout => "body_timeout",
            Refused::BodyUnreadable => "body_unreadable",
            Refused::NoSlot => "no_slot",
            Refused::ConnectionLimit => "connection_limit",
        }
    }
}

/// The function's error codes for a failing Redis (its error table, function/README.md):
/// the host sees Redis only through them. Any other code is not a Redis error.
const REDIS_ERROR_CODES: [&str; 9] = [
    "storage_unavailable",
    "storage_timeout",
    "storage_contended",
    "storage_authentication",
    "storage_busy",
    "storage_server",
    "storage_protocol",
    "storage_error",
    "corrupt_data",
];

/// The Redis error kind a `5xx` body names, if it is one: the body starts
/// `{"error":{"code":"<code>"`, as the function (serde_json, compact) writes it.
pub(crate) fn redis_error_kind(body_start: &[u8]) -> Option<&'static str> {
    let rest = body_start.strip_prefix(br#"{"error":{"code":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let code = &rest[..end];
    REDIS_ERROR_CODES
        .into_iter()
        .find(|known| known.as_bytes() == code)
}

/// How many bytes of a `5xx` body [`redis_error_kind`] needs.
pub(crate) const ERROR_CODE_PREFIX_BYTES: usize = 64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Request latencies from 1 ms (a warm GET) to the default 30 s deadline.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// The counters of one server.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    instances_busy: Gauge,
    instances_idle: Gauge,
    instances_created: Counter,
    instances_discarded: Family<ReasonLabels, Counter>,
    redis_errors: Family<KindLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("taskstore");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status class",
            requests.clone(),
        );
        let latency: Family<LatencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "From the request head to the last byte of the response, by route template and method",
            Unit::Seconds,
            latency.clone(),
        );
        let instances_busy = Gauge::default();
        registry.register(
            "instances_busy",
            "Instances serving a request now",
            instances_busy.clone(),
        );
        let instances_idle = Gauge::default();
        registry.register(
            "instances_idle",
            "Warm instances waiting for their next request",
            instances_idle.clone(),
        );
        let instances_created = Counter::default();
        registry.register(
            "instances_created",
            "Instances made",
            instances_created.clone(),
        );
        let instances_discarded = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "instances_discarded",
            "Instances dropped, by reason: trap, deadline (cut off mid-request), reuse_limit \
             (--max-requests-per-instance reached)",
            instances_discarded.clone(),
        );
        let redis_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "redis_errors",
            "Responses the function gave for a failing Redis, by its error code",
            redis_errors.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests (or, for connection_limit, connections) the host answered itself, by reason",
            refusals.clone(),
        );
        // Every fixed series from the start, at zero: a rate over a series that appears only
        // at its first event misses that event.
        for discard in Discard::ALL {
            drop(instances_discarded.get_or_create(&ReasonLabels {
                reason: discard.label(),
            }));
        }
        for refusal in Refused::ALL {
            drop(refusals.get_or_create(&ReasonLabels {
                reason: refusal.label(),
            }));
        }
        for kind in REDIS_ERROR_CODES {
            drop(redis_errors.get_or_create(&KindLabels { kind }));
        }
        Metrics {
            registry,
            requests,
            latency,
            instances_busy,
            instances_idle,
            instances_created,
            instances_discarded,
            redis_errors,
            refusals,
        }
    }

    /// One answered request, when its response has been written (or abandoned).
    pub(crate) fn request(
        &self,
        route: Route,
        method: &'static str,
        status: u16,
        duration: Duration,
        redis_error: Option<&'static str>,
    ) {
        let route = route.template();
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: status_class(status),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { route, method })
            .observe(duration.as_secs_f64());
        if let Some(kind) = redis_error {
            self.redis_errors.get_or_create(&KindLabels { kind }).inc();
        }
    }

    pub(crate) fn refused(&self, refusal: Refused) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: refusal.label(),
            })
            .inc();
    }

    pub(crate) fn instance_created(&self) {
        self.instances_created.inc();
    }

    pub(crate) fn instance_discarded(&self, discard: Discard) {
        self.instances_discarded
            .get_or_create(&ReasonLabels {
                reason: discard.label(),
            })
            .inc();
    }

    /// An instance took a request.
    pub(crate) fn instance_busy(&self) {
        self.instances_busy.inc();
    }

    /// An instance finished its request (kept or dropped).
    pub(crate) fn instance_done(&self) {
        self.instances_busy.dec();
    }

    pub(crate) fn set_idle(&self, idle: usize) {
        self.instances_idle
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }

    /// The exposition, in the Prometheus text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// Scrapes served at once; more connections wait in the accept queue.
const MAX_SCRAPE_CONNECTIONS: usize = 8;
/// A scraper sends its request head within this (also its keep-alive idle timeout).
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until `stop` turns true. `Host` must name an allowed
/// host, as on the API listener (a DNS-rebinding page could otherwise read the counters).
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    allowed_hosts: AllowedHosts,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    let allowed_hosts = Arc::new(allowed_hosts);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((socket, _peer)) = accepted else {
            // As on the API listener: a failing accept must not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let allowed_hosts = Arc::clone(&allowed_hosts);
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let answer = scrape(&request, &metrics, &allowed_hosts);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service)
                .await;
            drop(slot);
        });
    }
}

fn scrape<B>(
    request: &hyper::Request<B>,
    metrics: &Metrics,
    allowed_hosts: &AllowedHosts,
) -> hyper::Response<Full<Bytes>> {
    let authority = request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|host| host.to_str().ok())
        });
    let (status, content_type, body) =
        if !authority.is_some_and(|authority| allowed_hosts.admits(authority)) {
            (421, "text/plain", "host not allowed\n".to_owned())
        } else if request.uri().path() != "/metrics" {
            (404, "text/plain", "not found: try /metrics\n".to_owned())
        } else if !matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD) {
            (405, "text/plain", "GET only\n".to_owned())
        } else {
            (200, prometheus_text::CONTENT_TYPE, metrics.encode())
        };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_templates_never_to_ids() {
        for (path, template) in [
            ("/research/tasks", "/research/tasks"),
            ("/research/tasks/4c45a4ef", "/research/tasks/{id}"),
            ("/research/tasks/a%2Fb", "/research/tasks/{id}"),
            ("/research/tasks/", "other"),
            ("/research/tasks/a/b", "other"),
            ("/research/tasksx", "other"),
            ("/research/openapi.json", "/research/openapi.json"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/healthz/", "other"),
            ("/", "other"),
        ] {
            assert_eq!(Route::of(path).template(), template, "{path}");
        }
    }

    #[test]
    fn only_the_function_s_redis_codes_count_as_redis_errors() {
        let body = br#"{"error":{"code":"storage_unavailable","message":"the task store is unreachable"}}"#;
        assert_eq!(redis_error_kind(body), Some("storage_unavailable"));
        assert_eq!(
            redis_error_kind(&br#"{"error":{"code":"corrupt_data","#[..]),
            Some("corrupt_data")
        );
        for other in [
            &br#"{"error":{"code":"timeout","message":"deadline"}}"#[..],
            br#"{"error":{"code":"storage_made_up"}}"#,
            br#"{"error":{"code":"storage_unavail"#,
            b"",
        ] {
            assert_eq!(redis_error_kind(other), None);
        }
        assert!(REDIS_ERROR_CODES
            .iter()
            .all(|code| code.len() + 20 <= ERROR_CODE_PREFIX_BYTES));
    }

    #[test]
    fn the_exposition_names_every_series_with_fixed_labels() {
        let metrics = Metrics::new();
        metrics.request(Route::Task, "GET", 404, Duration::from_millis(3), None);
        metrics.request(
            Route::Collection,
            "GET",
            503,
            Duration::from_millis(3),
            Some("storage_timeout"),
        );
        metrics.refused(Refused::BodyTooLarge);
        let text = metrics.encode();
        for line in [
            r#"taskstore_http_requests_total{route="/research/tasks/{id}",method="GET",status="4xx"} 1"#,
            r#"taskstore_http_requests_total{route="/research/tasks",method="GET",status="5xx"} 1"#,
            r#"taskstore_http_request_duration_seconds_count{route="/research/tasks/{id}",method="GET"} 1"#,
            r#"taskstore_redis_errors_total{kind="storage_timeout"} 1"#,
            r#"taskstore_redis_errors_total{kind="storage_busy"} 0"#,
            r#"taskstore_refusals_total{reason="body_too_large"} 1"#,
            r#"taskstore_refusals_total{reason="connection_limit"} 0"#,
            r#"taskstore_instances_discarded_total{reason="reuse_limit"} 0"#,
            "taskstore_instances_busy 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
