//! Store options and the `redis://` / `rediss://` URL: parsed and validated once, at `open`.
//!
//! The URL parser is small and hand-written on purpose: the `url` crate brings IDNA tables
//! that would more than double the component's size, and a Redis URL needs only scheme,
//! userinfo, host, port and database.
//!
//! A password may contain any character, `/`, `?`, `#` and `@` included, written raw: the
//! userinfo is everything up to the **last** `@` after the scheme ([`split_url`]), and every
//! reader of a URL (the parser, [`redact_url`], the host's list of secrets to scrub) splits
//! it there. Error messages never quote any part of the authority or path: a misplaced
//! password could be in any of them.

use std::fmt;
use std::time::Duration;

use crate::text::excerpt;
use crate::transport::Endpoint;

pub use taskstore_model::limits::{
    DEFAULT_KEY_PREFIX, DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_TIMEOUT_MS, DEFAULT_TTL_SECONDS,
    MAX_DOCUMENT_BYTES_LIMIT, MAX_TIMEOUT_MS, MAX_TTL_SECONDS, MIN_DOCUMENT_BYTES_LIMIT,
};
pub const DEFAULT_PORT: u16 = 6379;

/// Declares a struct with the fields of the WIT `options` record, any further fields given,
/// `new(url)`, and `debug_record`, which adds the record's fields to a `Debug` with the
/// URL's credentials and the PEM text left out: the guest's [`StoreOptions`] and the host's
/// `Options` (which adds a password kept apart from the URL and the cluster allow-list). The
/// record's fields are written once, here, so the two cannot drift apart.
#[macro_export]
macro_rules! store_options {
    ($(#[$attr:meta])* $vis:vis struct $name:ident { $($extra:tt)* }) => {
        $(#[$attr])*
        $vis struct $name {
            /// `redis://[[user]:password@]host[:port][/db]`, `rediss://…` for TLS, or for a
            /// Redis Cluster `redis+cluster://[[user]:password@]host[:port][,host[:port]…]`
            /// (seed nodes; `rediss+cluster://…` for a cluster over TLS), or for Redis Sentinel
            /// `redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]`
            /// (`?sentinel-password=…&wait-replicas=N&wait-timeout-ms=T`). A password may
            /// hold any character, `/` and `@` included.
            pub url: ::std::string::String,
            /// Prefix of every key.
            pub key_prefix: ::std::option::Option<::std::string::String>,
            /// TTL given to a document written without one, in seconds.
            pub default_ttl_seconds: ::std::option::Option<u64>,
            /// Deadline for each connect and for each operation's write and reply, in
            /// milliseconds.
            pub timeout_ms: ::std::option::Option<u32>,
            /// Largest document accepted and returned, in bytes.
            pub max_document_bytes: ::std::option::Option<u32>,
            /// `rediss://` (or `rediss+cluster://`) only: PEM text of the CA certificate(s)
            /// trusted to sign the server's (every node's) certificate, instead of the
            /// built-in web PKI roots.
            pub tls_ca_certificates: ::std::option::Option<::std::string::String>,
            /// `rediss://` (or `rediss+cluster://`) only. DANGER, development only: accept
            /// any server certificate, so anyone who can intercept the connection can
            /// impersonate Redis and read the password.
            pub danger_accept_invalid_certificates: bool,
            $($extra)*
        }

        impl $name {
            /// Options for `url` with every other field at its default.
            pub fn new(url: impl ::std::convert::Into<::std::string::String>) -> $name {
                $name {
                    url: url.into(),
                    ..::std::default::Default::default()
                }
            }

            fn debug_record(&self, out: &mut ::std::fmt::DebugStruct<'_, '_>) {
                out.field("url", &$crate::config::redact_url(&self.url))
                    .field("key_prefix", &self.key_prefix)
                    .field("default_ttl_seconds", &self.default_ttl_seconds)
                    .field("timeout_ms", &self.timeout_ms)
                    .field("max_document_bytes", &self.max_document_bytes)
                    .field(
                        "tls_ca_certificates",
                        &self.tls_ca_certificates.as_ref().map(|pem| pem.len()),
                    )
                    .field(
                        "danger_accept_invalid_certificates",
                        &self.danger_accept_invalid_certificates,
                    );
            }
        }
    };
}

store_options! {
    /// Options as the caller gives them (the WIT `options` record); `None` means the default.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct StoreOptions {}
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("StoreOptions");
        self.debug_record(&mut out);
        out.finish()
    }
}

/// Validated options with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub redis: RedisUrl,
    pub key_prefix: String,
    pub default_ttl_seconds: u64,
    pub timeout: Duration,
    pub max_document_bytes: usize,
    /// `Some` exactly when the URL is `rediss://`.
    pub tls: Option<TlsSettings>,
}

/// How a `rediss://` connection verifies the server. The default: against the web PKI
/// roots, verification on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM text whose certificates are the only trust anchors; `None`: the web PKI roots.
    pub ca_certificates: Option<String>,
    /// Skip certificate verification entirely (development only).
    pub danger_accept_invalid_certificates: bool,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field(
                "ca_certificates",
                &self.ca_certificates.as_ref().map(|pem| pem.len()),
            )
            .field(
                "danger_accept_invalid_certificates",
                &self.danger_accept_invalid_certificates,
            )
            .finish()
    }
}

/// An option or URL that cannot be used; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// For a cluster or Sentinel URL, the refusal of a component built without the `topologies`
/// feature (the plain `taskstore.wasm`): which build serves it. The host switches to that
/// build by itself; the message is for a caller that loaded the plain one by hand.
pub fn needs_topologies(redis: &RedisUrl) -> Option<ConfigError> {
    let what = if redis.is_cluster() {
        "redis+cluster:// (Redis Cluster)"
    } else if redis.is_sentinel() {
        "redis+sentinel:// (Redis Sentinel)"
    } else {
        return None;
    };
    Some(ConfigError(format!(
        "{what} needs the full build of the component (taskstore-tls.wasm: TLS, cluster and \
         Sentinel, built with the `tls` and `topologies` features); this build reaches one \
         Redis server only"
    )))
}

impl StoreSettings {
    pub fn from_options(options: &StoreOptions) -> Result<StoreSettings, ConfigError> {
        let redis = RedisUrl::parse(&options.url)?;
        #[cfg(not(any(feature = "topologies", not(target_arch = "wasm32"))))]
        if let Some(refusal) = needs_topologies(&redis) {
            return Err(refusal);
        }
        let default_ttl_seconds = options.default_ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        check_ttl(default_ttl_seconds).map_err(|why| ConfigError(format!("default TTL {why}")))?;
        let timeout_ms = options.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ConfigError(format!(
                "timeout of {timeout_ms} ms is out of range: it must be between 1 and {MAX_TIMEOUT_MS} ms"
            )));
        }
        let max_document_bytes = options
            .max_document_bytes
            .unwrap_or(DEFAULT_MAX_DOCUMENT_BYTES);
        if !(MIN_DOCUMENT_BYTES_LIMIT..=MAX_DOCUMENT_BYTES_LIMIT).contains(&max_document_bytes) {
            return Err(ConfigError(format!(
                "maximum document size of {max_document_bytes} bytes is out of range: it must be between {MIN_DOCUMENT_BYTES_LIMIT} and {MAX_DOCUMENT_BYTES_LIMIT}"
            )));
        }
        if let Some(wait) = redis.wait {
            if wait.timeout_ms >= timeout_ms {
                return Err(ConfigError(format!(
                    "wait-timeout-ms of {} ms must be below the timeout of {timeout_ms} ms: the WAIT \
                     runs within each write's deadline",
                    wait.timeout_ms
                )));
            }
        }
        let tls = if redis.tls {
            if options.tls_ca_certificates.is_some() && options.danger_accept_invalid_certificates {
                return Err(ConfigError(
                    "give either a TLS CA certificate or danger-accept-invalid-certificates, not both".into(),
                ));
            }
            Some(TlsSettings {
                ca_certificates: options.tls_ca_certificates.clone(),
                danger_accept_invalid_certificates: options.danger_accept_invalid_certificates,
            })
        } else if options.tls_ca_certificates.is_some()
            || options.danger_accept_invalid_certificates
        {
            // A TLS option with a plaintext URL is a mistake; ignoring it would silently
            // send traffic in the clear that the caller meant to protect.
            return Err(ConfigError(
                "TLS options are given but the Redis URL is redis:// (plaintext); use rediss:// for TLS".into(),
            ));
        } else {
            None
        };
        Ok(StoreSettings {
            tls,
            redis,
            key_prefix: options
                .key_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            default_ttl_seconds,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            max_document_bytes: max_document_bytes as usize,
        })
    }
}

/// Checks a TTL in seconds; the error completes the sentence "TTL …".
pub fn check_ttl(seconds: u64) -> Result<(), String> {
    if (1..=MAX_TTL_SECONDS).contains(&seconds) {
        Ok(())
    } else {
        Err(format!(
            "of {seconds} s is out of range: it must be between 1 and {MAX_TTL_SECONDS} s"
        ))
    }
}

/// A parsed `redis[s]://[[user]:password@]host[:port][/db]` URL, a Redis Cluster URL
/// `redis[s]+cluster://[[user]:password@]host[:port][,host[:port]…]`, or a Redis Sentinel
/// URL `redis[s]+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]`.
///
/// A single-server or Sentinel URL may end in `?wait-replicas=N&wait-timeout-ms=T` (see
/// [`ReplicaWait`]); a Sentinel URL also in `sentinel-password=…` (%-encoded), the password
/// of the sentinels themselves, separate from the data password in the userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The server (for a cluster URL: the first seed node).
    pub endpoint: Endpoint,
    pub credentials: Option<Credentials>,
    pub database: u32,
    /// `rediss://` or `rediss+cluster://`: every connection runs over TLS, with the host
    /// dialled (the URL's, or a cluster node's) as the server name.
    pub tls: bool,
    /// For a cluster URL, every seed node in the order given (the first is `endpoint`);
    /// empty for a single-server URL.
    pub cluster_seeds: Vec<Endpoint>,
    /// For a Sentinel URL: the sentinels and the service they are asked about (`endpoint`
    /// is then the first sentinel, not a data node).
    pub sentinel: Option<SentinelTarget>,
    /// After each write, wait for this many replicas to acknowledge it (`WAIT`).
    pub wait: Option<ReplicaWait>,
}

/// The sentinels of a `redis+sentinel://` URL and what to ask them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// Every sentinel in the order given; asked in that order.
    pub sentinels: Vec<Endpoint>,
    /// The master's name as the sentinels know it (`sentinel monitor <service> …`).
    pub service: String,
    /// What `AUTH` is sent to the sentinels with (`sentinel-password`): a sentinel's own
    /// `requirepass`, never the data password. `None`: no `AUTH`.
    pub credentials: Option<Credentials>,
}

/// `WAIT replicas timeout-ms` after every write: the write is reported only once that many
/// replicas hold it, or failed (as "may have applied") when they do not within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout_ms: u32,
}

/// What `AUTH` is sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `None` for `AUTH password` (requirepass), `Some` for `AUTH user password` (ACL).
    pub username: Option<String>,
    pub password: Secret,
}

/// A string that never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for the one place that must send it: the `AUTH` command.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, ConfigError> {
        let Scheme {
            rest,
            tls,
            cluster,
            sentinel,
        } = strip_scheme(url)?;
        let UrlParts {
            userinfo,
            hosts,
            tail,
        } = UrlParts::split(rest);
        let credentials = userinfo.map(parse_userinfo).transpose()?.flatten();
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        if path.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(ConfigError(
                "Redis URL fragment parts (#…) are not supported".into(),
            ));
        }
        let query = match query {
            Some(_) if cluster => {
                return Err(ConfigError(
                    "a Redis Cluster URL takes no query parameters (after a ?)".into(),
                ))
            }
            Some(query) => parse_query(query, sentinel)?,
            None => UrlQuery::default(),
        };
        if sentinel {
            let (service, database) = parse_sentinel_path(path)?;
            let sentinels = parse_host_list(hosts, "sentinel")?;
            return Ok(RedisUrl {
                endpoint: sentinels[0].clone(),
                credentials,
                database,
                tls,
                cluster_seeds: Vec::new(),
                sentinel: Some(SentinelTarget {
                    sentinels,
                    service,
                    credentials: query.sentinel_password.map(|password| Credentials {
                        username: None,
                        password,
                    }),
                }),
                wait: query.wait,
            });
        }
        let database = parse_database(path)?;
        if !cluster {
            return Ok(RedisUrl {
                endpoint: parse_host_port(hosts)?,
                credentials,
                database,
                tls,
                cluster_seeds: Vec::new(),
                sentinel: None,
                wait: query.wait,
            });
        }
        if database != 0 {
            return Err(ConfigError(
                "Redis Cluster has only database 0; remove the /db part of the cluster URL".into(),
            ));
        }
        let seeds = parse_host_list(hosts, "seed")?;
        Ok(RedisUrl {
            endpoint: seeds[0].clone(),
            credentials,
            database,
            tls,
            cluster_seeds: seeds,
            sentinel: None,
            wait: None,
        })
    }

    /// Whether this is a `redis+cluster://` URL.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_seeds.is_empty()
    }

    /// Whether this is a `redis+sentinel://` URL.
    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The same credentials, database and replica wait, for another server: how a cluster
    /// client reaches each node it discovers, and a Sentinel client the master it is told.
    pub fn for_node(&self, endpoint: Endpoint) -> RedisUrl {
        RedisUrl {
            endpoint,
            credentials: self.credentials.clone(),
            database: self.database,
            tls: self.tls,
            cluster_seeds: Vec::new(),
            sentinel: None,
            wait: self.wait,
        }
    }

    /// For a Sentinel URL, how to reach sentinel `endpoint`: the sentinel password (not the
    /// data password), database 0, no replica wait, TLS as the URL says.
    pub fn for_sentinel(&self, endpoint: Endpoint) -> RedisUrl {
        RedisUrl {
            endpoint,
            credentials: self
                .sentinel
                .as_ref()
                .and_then(|target| target.credentials.clone()),
            database: 0,
            tls: self.tls,
            cluster_seeds: Vec::new(),
            sentinel: None,
            wait: None,
        }
    }
}

/// Most sentinels a Sentinel URL may name (as many as a cluster URL's seeds).
pub const MAX_SENTINELS: usize = MAX_CLUSTER_SEEDS;

/// `hosts` split at `,`: at least one, at most [`MAX_CLUSTER_SEEDS`]; errors name the
/// position (`seed node 2`), never the text.
fn parse_host_list(hosts: &str, what: &str) -> Result<Vec<Endpoint>, ConfigError> {
    let list = hosts
        .split(',')
        .enumerate()
        .map(|(index, host)| {
            parse_host_port(host).map_err(|e| {
                let what = if what == "seed" { "seed node" } else { what };
                ConfigError(format!("{} ({what} {} of the URL)", e.0, index + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_CLUSTER_SEEDS {
        return Err(ConfigError(format!(
            "Redis URL names {} {what}s; the limit is {MAX_CLUSTER_SEEDS}",
            list.len()
        )));
    }
    Ok(list)
}

/// What a URL's `?…` says.
#[derive(Default)]
struct UrlQuery {
    wait: Option<ReplicaWait>,
    sentinel_password: Option<Secret>,
}

/// `wait-replicas=N`, `wait-timeout-ms=T` and, on a Sentinel URL, `sentinel-password=…`,
/// joined by `&`. Errors name the parameter, never a value: one may be a password.
fn parse_query(query: &str, sentinel: bool) -> Result<UrlQuery, ConfigError> {
    let mut replicas = None;
    let mut timeout_ms = None;
    let mut out = UrlQuery::default();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let twice = || ConfigError(format!("Redis URL parameter {name} is given twice"));
        let number = || {
            value.parse::<u32>().map_err(|_| {
                ConfigError(format!("Redis URL parameter {name} is not a whole number"))
            })
        };
        match name {
            "wait-replicas" => {
                if replicas.replace(number()?).is_some() {
                    return Err(twice());
                }
            }
            "wait-timeout-ms" => {
                if timeout_ms.replace(number()?).is_some() {
                    return Err(twice());
                }
            }
            "sentinel-password" if sentinel => {
                let password = percent_decode(value, "sentinel password")?;
                if password.is_empty() {
                    return Err(ConfigError(
                        "Redis URL has an empty sentinel-password".into(),
                    ));
                }
                if out
                    .sentinel_password
                    .replace(Secret::new(password))
                    .is_some()
                {
                    return Err(twice());
                }
            }
            _ => {
                return Err(ConfigError(format!(
                    "Redis URL has an unknown query parameter (after the ?); known: wait-replicas, wait-timeout-ms{}",
                    if sentinel { ", sentinel-password" } else { "" }
                )))
            }
        }
    }
    out.wait = match (replicas, timeout_ms) {
        (None, None) | (Some(0), _) => None,
        (Some(replicas), Some(timeout_ms)) if timeout_ms > 0 => Some(ReplicaWait {
            replicas,
            timeout_ms,
        }),
        _ => {
            return Err(ConfigError(
                "Redis URL parameter wait-replicas needs wait-timeout-ms, a timeout above 0 \
                 (a WAIT without one could block past every deadline)"
                    .into(),
            ))
        }
    };
    Ok(out)
}

/// `/service[/db]` of a Sentinel URL. The service name is never quoted in an error.
fn parse_sentinel_path(path: &str) -> Result<(String, u32), ConfigError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, database) = match path.split_once('/') {
        Some((service, database)) => (service, database),
        None => (path, ""),
    };
    if service.is_empty() {
        return Err(ConfigError(
            "Redis Sentinel URL names no service: write redis+sentinel://host:port/service-name[/db]"
                .into(),
        ));
    }
    let service = percent_decode(service, "service name")?;
    if service.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ConfigError(
            "Redis Sentinel URL service name holds a space or a control character".into(),
        ));
    }
    let database = match database.strip_suffix('/').unwrap_or(database) {
        "" => 0,
        db => db.parse::<u32>().map_err(|_| {
            ConfigError(
                "Redis Sentinel URL database (after the service name) is not a number".into(),
            )
        })?,
    };
    Ok((service, database))
}

/// Most seed nodes a cluster URL may name.
pub const MAX_CLUSTER_SEEDS: usize = 64;

/// The parts of a URL after `scheme://`, split the one way every reader of a URL splits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlParts<'a> {
    /// Everything before the last `@`, raw: `user:password`, `:password`, or `user`.
    pub userinfo: Option<&'a str>,
    /// The host(s) and port(s): up to the first `/`, `?` or `#` after the userinfo.
    pub hosts: &'a str,
    /// The path, query and fragment: `""` or `/db` in a valid URL.
    pub tail: &'a str,
}

impl<'a> UrlParts<'a> {
    /// Splits `rest` (a URL after its `scheme://`) at the last `@` first: a password may
    /// hold `/`, `?`, `#` or `@`, while a host, port or database never holds an `@`.
    pub fn split(rest: &'a str) -> UrlParts<'a> {
        let (userinfo, after) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let hosts_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (hosts, tail) = after.split_at(hosts_end);
        UrlParts {
            userinfo,
            hosts,
            tail,
        }
    }

    /// The password as written in the URL (still %-encoded): what follows the first `:` of
    /// the userinfo.
    pub fn raw_password(&self) -> Option<&'a str> {
        self.userinfo
            .and_then(|userinfo| userinfo.split_once(':'))
            .map(|(_, password)| password)
    }
}

/// `url` split after its `scheme://`; `None` if it has no `://`.
pub fn split_url(url: &str) -> Option<(&str, UrlParts<'_>)> {
    url.split_once("://")
        .map(|(scheme, rest)| (scheme, UrlParts::split(rest)))
}

/// `url` with the password `password` in place of its own, for the component only: how a
/// password kept out of the URL the caller shows (read from a file or the environment)
/// reaches the one parser. A user name in `url` is kept.
///
/// # Errors
/// The URL has no `scheme://`, or already holds a password: two passwords are a mistake,
/// and picking one silently would hide it.
pub fn url_with_password(url: &str, password: &str) -> Result<String, ConfigError> {
    let Some((scheme, parts)) = split_url(url) else {
        return Err(ConfigError(
            "Redis URL must look like redis://[[user]:password@]host[:port][/db]".into(),
        ));
    };
    if parts.raw_password().is_some() {
        return Err(ConfigError(
            "a Redis password is given both in the URL and separately; give it once".into(),
        ));
    }
    if password.is_empty() {
        return Err(ConfigError(
            "the separately given Redis password is empty".into(),
        ));
    }
    let user = parts.userinfo.unwrap_or("");
    Ok(format!(
        "{scheme}://{user}:{}@{}{}",
        percent_encode(password),
        parts.hosts,
        parts.tail
    ))
}

/// `url` with `sentinel-password` set to `password` (%-encoded), for the component only:
/// how a sentinel password kept out of the URL the caller shows reaches the one parser.
///
/// # Errors
/// The URL is not a Sentinel URL, or already holds a sentinel password.
pub fn url_with_sentinel_password(url: &str, password: &str) -> Result<String, ConfigError> {
    let Some((scheme, parts)) = split_url(url) else {
        return Err(ConfigError(
            "Redis URL must look like redis+sentinel://host:port/service-name".into(),
        ));
    };
    if !scheme.to_ascii_lowercase().ends_with("+sentinel") {
        return Err(ConfigError(
            "a sentinel password is given but the Redis URL is not redis+sentinel://".into(),
        ));
    }
    if raw_sentinel_password(parts.tail).is_some() {
        return Err(ConfigError(
            "a sentinel password is given both in the URL and separately; give it once".into(),
        ));
    }
    if password.is_empty() {
        return Err(ConfigError(
            "the separately given sentinel password is empty".into(),
        ));
    }
    let joiner = if parts.tail.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{joiner}sentinel-password={}",
        percent_encode(password)
    ))
}

/// `%XX` for every byte that is not unreserved (RFC 3986), so any password survives the
/// round trip through [`RedisUrl::parse`].
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What the scheme says, and the rest of the URL after it.
struct Scheme<'a> {
    rest: &'a str,
    /// `rediss`: TLS.
    tls: bool,
    /// `+cluster`: the hosts are seed nodes of a Redis Cluster.
    cluster: bool,
    /// `+sentinel`: the hosts are Redis Sentinels.
    sentinel: bool,
}

fn strip_scheme(url: &str) -> Result<Scheme<'_>, ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError(
            "Redis URL must look like redis://[[user]:password@]host[:port][/db]".into(),
        ));
    };
    let (tls, cluster, sentinel) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, false, false),
        "rediss" => (true, false, false),
        "redis+cluster" => (false, true, false),
        // Every node over TLS, each verified against its own address (as the cluster
        // reports it, or as a redirect names it).
        "rediss+cluster" => (true, true, false),
        "redis+sentinel" => (false, false, true),
        // Sentinels and data nodes over TLS, each verified against the address dialled.
        "rediss+sentinel" => (true, false, true),
        _ => {
            return Err(ConfigError(format!(
                "Redis URL scheme {} is not supported; use redis://, rediss:// (TLS), \
                 redis+cluster://, rediss+cluster:// (cluster over TLS), redis+sentinel:// \
                 or rediss+sentinel:// (Sentinel over TLS)",
                excerpt(scheme, 16)
            )))
        }
    };
    Ok(Scheme {
        rest,
        tls,
        cluster,
        sentinel,
    })
}

fn parse_host_port(host_port: &str) -> Result<Endpoint, ConfigError> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let close = bracketed
            .find(']')
            .ok_or_else(|| ConfigError("Redis URL has an unclosed '[' in its host".into()))?;
        let host = &bracketed[..close];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ConfigError(
                "Redis URL host in [brackets] is not an IPv6 address".into(),
            ));
        }
        let after = &bracketed[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(ConfigError("Redis URL has text after its IPv6 host".into())),
        };
        (host, port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(ConfigError("Redis URL has no host".into()));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return Err(ConfigError(
            "Redis URL host is not a valid host name or IP address (letters, digits, '-', '.', \
             or an IPv6 address in [brackets])"
                .into(),
        ));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(ConfigError(
                    "Redis URL port is not a number between 1 and 65535".into(),
                ))
            }
        },
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
    })
}

fn parse_userinfo(userinfo: &str) -> Result<Option<Credentials>, ConfigError> {
    let Some((user, password)) = userinfo.split_once(':') else {
        return if userinfo.is_empty() {
            Ok(None)
        } else {
            Err(ConfigError(
                "Redis URL gives a user name but no password; write redis://user:password@host"
                    .into(),
            ))
        };
    };
    let password = percent_decode(password, "password")?;
    if password.is_empty() {
        return Err(ConfigError("Redis URL has an empty password".into()));
    }
    let username = match percent_decode(user, "user name")? {
        name if name.is_empty() => None,
        name => Some(name),
    };
    Ok(Some(Credentials {
        username,
        password: Secret::new(password),
    }))
}

fn parse_database(tail: &str) -> Result<u32, ConfigError> {
    match tail.strip_prefix('/').unwrap_or(tail) {
        "" => Ok(0),
        db => db.parse::<u32>().map_err(|_| {
            ConfigError("Redis URL database (after the host's '/') is not a number".into())
        }),
    }
}

/// Decodes `%XX` escapes. The error names only `what`, never the text: it may be a password.
fn percent_decode(text: &str, what: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError(format!("Redis URL {what} has a bad %-escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConfigError(format!("Redis URL {what} is not UTF-8 once decoded")))
}

/// The URL with any userinfo replaced by `***`, for logs and `Debug`; split as
/// [`RedisUrl::parse`] splits it, so whatever it reads as the password is what is hidden.
pub fn redact_url(url: &str) -> String {
    match split_url(url) {
        None => "***".into(),
        Some((scheme, parts)) => {
            let tail = redact_sentinel_password(parts.tail);
            match parts.userinfo {
                None => format!("{scheme}://{}{tail}", parts.hosts),
                Some(_) => format!("{scheme}://***@{}{tail}", parts.hosts),
            }
        }
    }
}

/// The raw value of a `sentinel-password=` parameter in `tail` (a URL's path and query),
/// as written: a secret to scrub from messages.
pub fn raw_sentinel_password(tail: &str) -> Option<&str> {
    let (_, query) = tail.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sentinel-password="))
        .filter(|value| !value.is_empty())
}

/// `tail` with the value of any `sentinel-password=` parameter replaced by `***`.
fn redact_sentinel_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let pairs: Vec<&str> = query
        .split('&')
        .map(|pair| {
            if pair.starts_with("sentinel-password=") {
                "sentinel-password=***"
            } else {
                pair
            }
        })
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// Test oracle, shared by the property test below and the `redis_url` fuzz target: every
/// text a URL can be shown as ([`RedisUrl::parse`]'s error, the parsed URL's `Debug`,
/// [`redact_url`]) checked for any three consecutive characters (fewer for a shorter
/// password) of `password`, or of the password as the URL writes it, that occur nowhere in
/// the URL outside its userinfo. Returns the first text that shows some, or `None`.
///
/// Give it passwords drawn from non-ASCII letters and `/`, `@`, `#`, `?`, `%`, `:`, or a
/// shared English word would count as a leak; parts of fewer than three ASCII characters
/// are not checked, as templates hold those characters too.
#[doc(hidden)]
pub fn text_showing_password(url: &str, password: &str) -> Option<String> {
    let (elsewhere, raw) = match split_url(url) {
        Some((scheme, parts)) => (
            format!("{scheme}://{}{}", parts.hosts, parts.tail),
            parts.raw_password().unwrap_or(""),
        ),
        None => (String::new(), ""),
    };
    let mut shown = vec![redact_url(url)];
    match RedisUrl::parse(url) {
        Ok(parsed) => shown.push(format!("{parsed:?}")),
        Err(error) => shown.push(error.to_string()),
    }
    for secret in [password, raw] {
        let chars: Vec<char> = secret.chars().collect();
        let size = chars.len().clamp(1, 3);
        for window in chars.windows(size) {
            let part: String = window.iter().collect();
            // Message templates are ASCII and hold `%`, `@`, `:` and `/`: a shorter ASCII
            // part ("%", "@/") shows up there without coming from the password.
            let template_like = part.is_ascii() && window.len() < 3;
            if template_like || elsewhere.contains(part.as_str()) || part.contains('*') {
                continue;
            }
            if let Some(text) = shown.iter().find(|text| text.contains(part.as_str())) {
                return Some(text.clone());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_show_what_they_should_and_no_secret() {
        let options = StoreOptions::new("redis://:hunter2@cache.local:6380/2");
        let shown = format!("{options:?}");
        assert!(shown.starts_with("StoreOptions {"), "{shown}");
        assert!(
            shown.contains("cache.local:6380/2") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
        assert_eq!(ConfigError("bad URL".into()).to_string(), "bad URL");
    }

    #[test]
    fn only_cluster_and_sentinel_urls_need_the_full_build_and_the_refusal_names_it() {
        for (url, what) in [
            ("redis+cluster://:hunter2@127.0.0.1:7000", "Redis Cluster"),
            ("rediss+cluster://127.0.0.1:7000", "Redis Cluster"),
            (
                "redis+sentinel://:hunter2@127.0.0.1:26379/main",
                "Redis Sentinel",
            ),
        ] {
            let refusal = needs_topologies(&RedisUrl::parse(url).unwrap())
                .unwrap_or_else(|| panic!("{url}: expected a refusal"))
                .to_string();
            assert!(refusal.contains(what), "{refusal}");
            assert!(refusal.contains("taskstore-tls.wasm"), "{refusal}");
            assert!(!refusal.contains("hunter2"), "{refusal}");
        }
        for url in ["redis://127.0.0.1:6379", "rediss://:hunter2@cache.local/1"] {
            assert_eq!(
                needs_topologies(&RedisUrl::parse(url).unwrap()),
                None,
                "{url}"
            );
        }
    }

    #[test]
    fn a_cluster_url_may_name_exactly_the_seed_limit() {
        let seeds = |n: u16| -> String {
            (0..n)
                .map(|i| format!("127.0.0.1:{}", 7000 + i))
                .collect::<Vec<_>>()
                .join(",")
        };
        let at_limit = format!("redis+cluster://{}", seeds(MAX_CLUSTER_SEEDS as u16));
        assert_eq!(
            RedisUrl::parse(&at_limit).unwrap().cluster_seeds.len(),
            MAX_CLUSTER_SEEDS
        );
        let over = format!("redis+cluster://{}", seeds(MAX_CLUSTER_SEEDS as u16 + 1));
        assert!(RedisUrl::parse(&over).is_err());
    }

    #[test]
    fn percent_encoding_keeps_exactly_the_unreserved_bytes() {
        assert_eq!(percent_encode("aZ9-._~"), "aZ9-._~");
        assert_eq!(percent_encode("a b/@:é"), "a%20b%2F%40%3A%C3%A9");
    }

    #[test]
    fn a_bracketed_ipv6_host_takes_a_port_or_nothing_else() {
        let url = RedisUrl::parse("redis://[::1]").unwrap();
        assert_eq!(url.endpoint, Endpoint::new("::1", DEFAULT_PORT));
        assert!(RedisUrl::parse("redis://[::1]x").is_err());
        assert!(RedisUrl::parse("redis://[::1]x:6379").is_err());
    }

    #[test]
    fn a_url_without_userinfo_is_shown_unchanged() {
        assert_eq!(
            redact_url("redis://cache.local:6380/2"),
            "redis://cache.local:6380/2"
        );
        assert_eq!(redact_url("redis://u:p@h"), "redis://***@h");
    }

    #[test]
    fn parses_plain_host_with_default_port_and_database() {
        let url = RedisUrl::parse("redis://localhost").unwrap();
        assert_eq!(url.endpoint, Endpoint::new("localhost", 6379));
        assert_eq!(url.credentials, None);
        assert_eq!(url.database, 0);
    }

    #[test]
    fn parses_password_only_userinfo_as_requirepass() {
        let url = RedisUrl::parse("redis://:s3cr%40t@127.0.0.1:7000/2").unwrap();
        assert_eq!(url.endpoint, Endpoint::new("127.0.0.1", 7000));
        let credentials = url.credentials.unwrap();
        assert_eq!(credentials.username, None);
        assert_eq!(credentials.password.expose(), "s3cr@t");
        assert_eq!(url.database, 2);
    }

    #[test]
    fn parses_acl_user_and_password() {
        let url = RedisUrl::parse("REDIS://worker:p%3Aw@redis.internal:6380/").unwrap();
        let credentials = url.credentials.unwrap();
        assert_eq!(credentials.username.as_deref(), Some("worker"));
        assert_eq!(credentials.password.expose(), "p:w");
        assert_eq!(url.endpoint, Endpoint::new("redis.internal", 6380));
    }

    #[test]
    fn rediss_scheme_asks_for_tls_and_redis_does_not() {
        let url = RedisUrl::parse("rediss://:pw@cache.example:6380/1").unwrap();
        assert!(url.tls);
        assert_eq!(url.endpoint, Endpoint::new("cache.example", 6380));
        assert_eq!(url.database, 1);
        assert!(RedisUrl::parse("REDISS://h").unwrap().tls);
        assert!(!RedisUrl::parse("redis://h").unwrap().tls);
    }

    #[test]
    fn tls_options_are_kept_for_rediss_and_refused_for_plain_redis() {
        let mut options = StoreOptions::new("rediss://h");
        options.tls_ca_certificates = Some("-----BEGIN CERTIFICATE-----".into());
        let tls = StoreSettings::from_options(&options).unwrap().tls.unwrap();
        assert_eq!(tls.ca_certificates, options.tls_ca_certificates);
        assert!(!tls.danger_accept_invalid_certificates);
        assert!(format!("{tls:?}").contains("Some(27)"));

        let plain = StoreSettings::from_options(&StoreOptions::new("redis://h")).unwrap();
        assert_eq!(plain.tls, None);
        for set in [
            |o: &mut StoreOptions| o.tls_ca_certificates = Some("pem".into()),
            |o: &mut StoreOptions| o.danger_accept_invalid_certificates = true,
        ] {
            let mut options = StoreOptions::new("redis://h");
            set(&mut options);
            let err = StoreSettings::from_options(&options).unwrap_err();
            assert!(err.0.contains("rediss://"), "{err}");
        }
    }

    #[test]
    fn parses_bracketed_ipv6() {
        assert_eq!(
            RedisUrl::parse("redis://[::1]:6390").unwrap().endpoint,
            Endpoint::new("::1", 6390)
        );
        assert_eq!(Endpoint::new("::1", 6390).to_string(), "[::1]:6390");
    }

    #[test]
    fn rejects_malformed_urls_without_echoing_secrets() {
        let bad = [
            "localhost:6379",
            "http://localhost",
            "rediss://",
            "redis://",
            "redis://:pw@",
            "redis://host:0",
            "redis://host:99999",
            "redis://host:abc",
            "redis://host/db1",
            "redis://host?x=1",
            "redis://[::1",
            "redis://[zz]:1",
            "redis://ho st",
            "redis://user@host",
            "redis://:@host",
            "redis://:bad%zzsecret@host",
        ];
        for text in bad {
            let err = RedisUrl::parse(text).expect_err(text);
            assert!(!err.0.contains("secret"), "{text}: {err}");
        }
    }

    #[test]
    fn password_with_slash_question_hash_or_at_is_read_whole() {
        for (password, host) in [
            ("Xk9Q/Zp2SecretTail", "127.0.0.1:6379"),
            ("a?b#c", "h:1"),
            ("p@ss/w:rd", "h"),
        ] {
            for scheme in ["redis", "rediss"] {
                let url = RedisUrl::parse(&format!("{scheme}://:{password}@{host}/3")).unwrap();
                let credentials = url.credentials.unwrap();
                assert_eq!(credentials.password.expose(), password);
                assert_eq!(url.database, 3);
            }
            let url =
                RedisUrl::parse(&format!("redis+cluster://u:{password}@{host},h2:2")).unwrap();
            assert_eq!(url.credentials.unwrap().password.expose(), password);
            assert_eq!(url.cluster_seeds.len(), 2);
        }
    }

    /// The report: the part after the `/` was read as the database and quoted.
    #[test]
    fn errors_never_quote_the_authority_or_path() {
        for text in [
            "redis://:Xk9Q/Zp2SecretTail@127.0.0.1:6379x",
            "redis://:Xk9Q/Zp2SecretTail@127.0.0.1:6379/Zp2SecretTail",
            "redis://Zp2SecretTail!:6379",
            "redis://host:Zp2SecretTail",
            "redis://[Zp2SecretTail]:1",
            "redis+cluster://a:1,Zp2SecretTail:x",
            "redis+cluster://a:1,b:1/Zp2SecretTail",
        ] {
            let err = RedisUrl::parse(text).expect_err(text);
            assert!(!err.0.contains("Zp2"), "{text}: {err}");
            assert!(!redact_url(text).contains("Xk9Q"), "{text}");
        }
    }

    #[test]
    fn url_with_password_puts_any_password_where_the_parser_reads_it() {
        for password in ["Xk9Q/Zp2", "a@b:c#d?e%f", "é ü", "%41"] {
            for (url, host, port) in [
                ("redis://h:1/2", "h", 1),
                ("rediss://worker@h", "h", 6379),
                ("redis+cluster://a:1,b:2", "a", 1),
            ] {
                let with = url_with_password(url, password).unwrap();
                let parsed = RedisUrl::parse(&with).unwrap();
                assert_eq!(
                    parsed.credentials.as_ref().unwrap().password.expose(),
                    password
                );
                assert_eq!(parsed.endpoint, Endpoint::new(host, port));
            }
        }
        let parsed =
            RedisUrl::parse(&url_with_password("redis://worker@h/2", "pw").unwrap()).unwrap();
        assert_eq!(
            parsed.credentials.unwrap().username.as_deref(),
            Some("worker")
        );
        assert_eq!(parsed.database, 2);
        for (url, password) in [("redis://:old@h", "new"), ("redis://h", ""), ("h", "pw")] {
            let err = url_with_password(url, password).unwrap_err();
            assert!(!err.0.contains("old") && !err.0.contains("new"), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_part_of_any_password_shows_in_any_error(
            // Characters that no message template holds, so any three of them in a row in a
            // message can only have come from the password.
            password in "[ЖßλЯ€/@:#?%é]{1,24}",
            encode in proptest::bool::ANY,
            user in "(|worker)",
            scheme in "(redis|rediss|redis\\+cluster|rediss\\+cluster|redis\\+sentinel|http)",
            hosts in "(|h|127\\.0\\.0\\.1:6379|h:0|h:x|\\[::1\\]:7|\\[zz\\]|a:1,b:2|a:1,,b|ho st)",
            tail in "(|/|/0|/2|/x|\\?q|#f|/1/2|/svc/1)",
        ) {
            let written = if encode { percent_encode(&password) } else { password.clone() };
            let url = format!("{scheme}://{user}:{written}@{hosts}{tail}");
            if let Some(text) = text_showing_password(&url, &password) {
                proptest::prop_assert!(false, "{url} shows its password in: {text}");
            }
        }
    }

    #[test]
    fn single_server_urls_have_no_cluster_seeds() {
        let url = RedisUrl::parse("redis://h:1").unwrap();
        assert!(!url.is_cluster());
        assert!(url.cluster_seeds.is_empty());
        assert!(RedisUrl::parse("redis://a:1,b:2").is_err());
    }

    #[test]
    fn parses_cluster_url_with_several_seeds_and_shared_credentials() {
        let url =
            RedisUrl::parse("redis+cluster://u:p%21@10.0.0.1:7000,[::1]:7001,node-c").unwrap();
        assert!(url.is_cluster());
        assert_eq!(
            url.cluster_seeds,
            vec![
                Endpoint::new("10.0.0.1", 7000),
                Endpoint::new("::1", 7001),
                Endpoint::new("node-c", 6379)
            ]
        );
        assert_eq!(url.endpoint, Endpoint::new("10.0.0.1", 7000));
        assert_eq!(url.credentials.as_ref().unwrap().password.expose(), "p!");
        let node = url.for_node(Endpoint::new("127.0.0.1", 7005));
        assert_eq!(node.endpoint, Endpoint::new("127.0.0.1", 7005));
        assert!(!node.is_cluster());
        assert_eq!(node.credentials, url.credentials);
        assert_eq!(
            RedisUrl::parse("REDIS+CLUSTER://h/0")
                .unwrap()
                .cluster_seeds,
            vec![Endpoint::new("h", 6379)]
        );
    }

    #[test]
    fn tls_cluster_url_asks_for_tls_on_every_node() {
        let url = RedisUrl::parse("rediss+cluster://:pw@a:7000,b:7001").unwrap();
        assert!(url.is_cluster() && url.tls);
        assert_eq!(
            url.cluster_seeds,
            vec![Endpoint::new("a", 7000), Endpoint::new("b", 7001)]
        );
        let node = url.for_node(Endpoint::new("c", 7002));
        assert!(node.tls, "a discovered node is dialled over TLS too");
        assert!(!RedisUrl::parse("redis+cluster://a:7000").unwrap().tls);

        let mut options = StoreOptions::new("rediss+cluster://a:7000");
        options.tls_ca_certificates = Some("-----BEGIN CERTIFICATE-----".into());
        let tls = StoreSettings::from_options(&options).unwrap().tls.unwrap();
        assert_eq!(tls.ca_certificates, options.tls_ca_certificates);
        options.url = "redis+cluster://a:7000".into();
        assert!(StoreSettings::from_options(&options).is_err());
    }

    #[test]
    fn rejects_malformed_cluster_urls() {
        for text in [
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://,a:1",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1,b:0",
            "redis+cluster://a:1/2",
            "rediss+cluster://a:1/2",
            "redis+cluster://a:1?wait-replicas=1&wait-timeout-ms=5",
        ] {
            assert!(RedisUrl::parse(text).is_err(), "{text}");
        }
        let many = vec!["h:1"; MAX_CLUSTER_SEEDS + 1].join(",");
        assert!(RedisUrl::parse(&format!("redis+cluster://{many}")).is_err());
    }

    #[test]
    fn parses_sentinel_url_with_service_database_and_separate_passwords() {
        let url = RedisUrl::parse(
            "redis+sentinel://app:data%21@10.0.0.1:26379,[::1]:26380,s3/mymaster/2\
             ?sentinel-password=sen%2Ftinel&wait-replicas=1&wait-timeout-ms=250",
        )
        .unwrap();
        assert!(url.is_sentinel() && !url.is_cluster() && !url.tls);
        let target = url.sentinel.as_ref().unwrap();
        assert_eq!(
            target.sentinels,
            vec![
                Endpoint::new("10.0.0.1", 26379),
                Endpoint::new("::1", 26380),
                Endpoint::new("s3", 6379)
            ]
        );
        assert_eq!(url.endpoint, target.sentinels[0]);
        assert_eq!(target.service, "mymaster");
        assert_eq!(url.database, 2);
        assert_eq!(
            url.wait,
            Some(ReplicaWait {
                replicas: 1,
                timeout_ms: 250
            })
        );
        // The userinfo is the data password; the sentinels get only their own.
        let data = url.credentials.as_ref().unwrap();
        assert_eq!(data.username.as_deref(), Some("app"));
        assert_eq!(data.password.expose(), "data!");
        let sentinel = url.for_sentinel(Endpoint::new("10.0.0.1", 26379));
        assert_eq!(
            sentinel.credentials.as_ref().unwrap().password.expose(),
            "sen/tinel"
        );
        assert_eq!(sentinel.credentials.unwrap().username, None);
        assert_eq!((sentinel.database, sentinel.wait), (0, None));
        let master = url.for_node(Endpoint::new("10.0.0.9", 6379));
        assert_eq!(master.credentials, url.credentials);
        assert_eq!((master.database, master.wait), (2, url.wait));
        assert!(!master.is_sentinel());

        let plain = RedisUrl::parse("REDISS+SENTINEL://h/svc").unwrap();
        assert!(plain.tls && plain.is_sentinel());
        assert_eq!(plain.database, 0);
        assert_eq!(plain.credentials, None);
        assert_eq!(plain.sentinel.unwrap().credentials, None);
        assert_eq!(plain.endpoint, Endpoint::new("h", 6379));
    }

    #[test]
    fn rejects_malformed_sentinel_urls_without_quoting_them() {
        for text in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:1//2",
            "redis+sentinel://a:1,/svc",
            "redis+sentinel://a:1/svc/x",
            "redis+sentinel://a:1/s%20c",
            "redis+sentinel://a:1/svc?wait-replicas=1",
            "redis+sentinel://a:1/svc?wait-replicas=1&wait-timeout-ms=0",
            "redis+sentinel://a:1/svc?wait-replicas=x&wait-timeout-ms=5",
            "redis+sentinel://a:1/svc?sentinel-password=",
            "redis+sentinel://a:1/svc?sentinel-password=a&sentinel-password=b",
            "redis+sentinel://a:1/svc?other=1",
            "redis+sentinel://a:1/svc#f",
            "redis://h?sentinel-password=Zp2Secret",
        ] {
            let err = RedisUrl::parse(text).expect_err(text);
            assert!(
                !err.0.contains("svc") && !err.0.contains("Zp2"),
                "{text}: {err}"
            );
        }
        let many = vec!["h:1"; MAX_SENTINELS + 1].join(",");
        assert!(RedisUrl::parse(&format!("redis+sentinel://{many}/svc")).is_err());
    }

    #[test]
    fn replica_wait_is_read_on_single_server_urls_and_must_fit_the_timeout() {
        let url = RedisUrl::parse("redis://h/1?wait-replicas=2&wait-timeout-ms=100").unwrap();
        assert_eq!(
            url.wait,
            Some(ReplicaWait {
                replicas: 2,
                timeout_ms: 100
            })
        );
        assert_eq!(url.database, 1);
        assert_eq!(
            RedisUrl::parse("redis://h?wait-replicas=0").unwrap().wait,
            None
        );
        let mut options = StoreOptions::new("redis://h?wait-replicas=1&wait-timeout-ms=5000");
        let err = StoreSettings::from_options(&options).unwrap_err();
        assert!(err.0.contains("wait-timeout-ms"), "{err}");
        options.timeout_ms = Some(5001);
        assert!(StoreSettings::from_options(&options).is_ok());
    }

    #[test]
    fn the_sentinel_password_is_redacted_and_can_be_given_apart() {
        let url = "redis+sentinel://:data@h:26379/svc?wait-replicas=0&sentinel-password=Zp2Se&x";
        assert_eq!(
            redact_url(url),
            "redis+sentinel://***@h:26379/svc?wait-replicas=0&sentinel-password=***&x"
        );
        assert_eq!(
            raw_sentinel_password("/svc?sentinel-password=Zp2Se"),
            Some("Zp2Se")
        );
        let shown = format!("{:?}", RedisUrl::parse(&url.replace("&x", "")).unwrap());
        assert!(
            !shown.contains("Zp2") && !shown.contains("Secret(\"data"),
            "{shown}"
        );

        let with = url_with_sentinel_password("redis+sentinel://h/svc", "a&b/é").unwrap();
        let parsed = RedisUrl::parse(&with).unwrap();
        let sentinel = parsed.sentinel.unwrap().credentials.unwrap();
        assert_eq!(sentinel.password.expose(), "a&b/é");
        let with =
            url_with_sentinel_password("redis+sentinel://h/svc?wait-replicas=0", "p").unwrap();
        assert!(RedisUrl::parse(&with)
            .unwrap()
            .sentinel
            .unwrap()
            .credentials
            .is_some());
        for (url, password) in [
            ("redis://h", "p"),
            ("redis+sentinel://h/svc?sentinel-password=old", "new"),
            ("redis+sentinel://h/svc", ""),
        ] {
            let err = url_with_sentinel_password(url, password).unwrap_err();
            assert!(!err.0.contains("old") && !err.0.contains("new"), "{err}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let options = StoreOptions::new("redis://admin:hunter2@localhost");
        let settings = StoreSettings::from_options(&options).unwrap();
        assert!(!format!("{options:?}").contains("hunter2"));
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(redact_url(&options.url), "redis://***@localhost");
    }

    #[test]
    fn applies_defaults() {
        let settings = StoreSettings::from_options(&StoreOptions::new("redis://h")).unwrap();
        assert_eq!(settings.key_prefix, "research_task:");
        assert_eq!(settings.default_ttl_seconds, 604_800);
        assert_eq!(settings.timeout, Duration::from_secs(5));
        assert_eq!(settings.max_document_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn rejects_out_of_range_options() {
        let with = |f: fn(&mut StoreOptions)| {
            let mut options = StoreOptions::new("redis://h");
            f(&mut options);
            StoreSettings::from_options(&options)
        };
        assert!(with(|o| o.default_ttl_seconds = Some(0)).is_err());
        assert!(with(|o| o.default_ttl_seconds = Some(MAX_TTL_SECONDS + 1)).is_err());
        assert!(with(|o| o.timeout_ms = Some(0)).is_err());
        assert!(with(|o| o.max_document_bytes = Some(1)).is_err());
        assert!(with(|o| o.max_document_bytes = Some(u32::MAX)).is_err());
        assert!(with(|o| o.key_prefix = Some(String::new())).is_ok());
    }
}
