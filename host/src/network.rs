//! The component's network permissions: TCP to the Redis address from the URL, nothing else;
//! for a Redis Cluster URL, TCP to the cluster's nodes within the operator's allow-list,
//! nothing else.
//!
//! Names in the URL are resolved on the host. Should a name later resolve elsewhere (a
//! managed Redis failing over to a new IP), a connect to an address the policy does not
//! know makes it resolve the URL's names again, at most once per [`RERESOLVE_INTERVAL`];
//! clones of a policy (every instance `serve` creates) share what it learns.
//!
//! A cluster's nodes are not all in its URL: the component discovers them (`CLUSTER SLOTS`,
//! `MOVED`, `ASK`). So the host allows the seeds the URL names, and a connect to any other
//! address only if (1) the address is within the allow-list: the seeds' own IP addresses
//! (any port) plus [`ClusterAllow`] entries the operator gives; (2) it is no link-local or
//! cloud metadata address ([`never_a_node`]), whatever the allow-list says; and (3) the
//! cluster itself says it is one of its masters, slots or not (so an empty node receiving its
//! first slots, the target of an `ASK`, is reachable). The host asks (3) natively, with
//! `CLUSTER NODES`, the URL's credentials and small reply limits
//! ([`DISCOVERY_MAX_REPLY_BYTES`]), only ever dialling the seeds, and only for addresses that
//! pass (1) and (2). Answers are cached; an unknown address makes the host ask again at most
//! once per [`CLUSTER_RECHECK_INTERVAL`], so a guest cannot make it flood the cluster. For
//! `rediss+cluster://` the host asks over TLS, verifying each node as the component will.
//!
//! A Sentinel URL (`redis+sentinel://`) is bounded the same way: the sentinels it names are
//! the URL's servers, and another address is reachable only if it passes (1) and (2) (the
//! sentinels' IP addresses, any port, plus the operator's entries) and (3) the sentinels
//! report it as the service's master or one of its replicas (`SENTINEL
//! get-master-addr-by-name` and `SENTINEL replicas`, asked with the sentinel password only,
//! the same limits and rate). Reported names are not admitted: only IP addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskstore::client::{Client, Retry};
use taskstore::config::{RedisUrl, TlsSettings};
use taskstore::resp::{Reply, ReplyLimits};
use taskstore::std_tcp::StdConnector;
use taskstore::tls::MaybeTlsConnector;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::TaskError;
use crate::options::{ClusterAllow, HostName, RedisAddress};

/// Least time between two membership questions to the cluster about unknown addresses.
pub const CLUSTER_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two resolutions of the URL's names after the first.
pub const RERESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// Largest `CLUSTER NODES` reply the host accepts, in bytes: about 2,000 nodes' lines.
pub const DISCOVERY_MAX_REPLY_BYTES: usize = 256 * 1024;

/// Most array elements in any reply the host's discovery accepts.
pub const DISCOVERY_MAX_ARRAY_LEN: usize = 16_384;

/// Which socket operations the component may perform. Clones share the resolved addresses
/// and the cluster's answers.
#[derive(Debug, Clone)]
pub(crate) struct NetworkPolicy {
    /// The URL's own servers (its host, or a cluster URL's seeds).
    servers: Arc<Servers>,
    /// For a cluster (or Sentinel) URL: which other addresses are the cluster's nodes (the
    /// service's master and replicas).
    cluster: Option<Arc<ClusterNodes>>,
}

impl NetworkPolicy {
    /// [`NetworkPolicy::for_url_allowing`] with the default allow-list: the seeds only.
    #[cfg(test)]
    pub(crate) async fn for_url(
        url: &str,
        tls: &TlsSettings,
        timeout: Duration,
    ) -> Result<NetworkPolicy, TaskError> {
        NetworkPolicy::for_url_allowing(url, tls, timeout, &[]).await
    }

    /// The policy for the URL `url`: its host (resolved on the host), or for a cluster URL,
    /// each seed plus the cluster's discovered nodes within `allow` (asked with `timeout`;
    /// over TLS verified as `tls` says for `rediss+cluster://`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed URL or unusable TLS CA certificates;
    /// [`ErrorKind::Connection`] if a name does not resolve.
    pub(crate) async fn for_url_allowing(
        url: &str,
        tls: &TlsSettings,
        timeout: Duration,
        allow: &[ClusterAllow],
    ) -> Result<NetworkPolicy, TaskError> {
        let parsed = RedisUrl::parse(url).map_err(|e| TaskError::invalid_input(e.to_string()))?;
        let servers = Servers::resolve(RedisAddress::all_from_url(url)?, Resolver::System).await?;
        let cluster = if parsed.is_cluster() || parsed.is_sentinel() {
            let connector = MaybeTlsConnector::new(StdConnector, parsed.tls.then_some(tls))
                .map_err(|e| TaskError::invalid_input(e.0))?;
            Some(Arc::new(ClusterNodes::new(
                parsed,
                connector,
                timeout,
                allow.to_vec(),
            )))
        } else {
            None
        };
        Ok(NetworkPolicy {
            servers: Arc::new(servers),
            cluster,
        })
    }

    /// The policy for `endpoint` alone, resolving a host name on the host.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`] if the name does not resolve.
    pub(crate) async fn resolve(endpoint: &RedisAddress) -> Result<NetworkPolicy, TaskError> {
        let servers = Servers::resolve(vec![endpoint.clone()], Resolver::System).await?;
        Ok(NetworkPolicy {
            servers: Arc::new(servers),
            cluster: None,
        })
    }

    /// Whether the component may use `addr` for `usage`, by what is known now.
    ///
    /// wasmtime-wasi checks a connect twice: first as a bind of the unspecified address with
    /// port 0 (the implicit bind), then as a connect to the remote address. So that bind is
    /// allowed, and any other bind, listen, accept and all of UDP are not.
    pub(crate) fn allows(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => self.servers.contains(addr),
            _ => false,
        }
    }

    /// [`NetworkPolicy::allows`]; else, for a connect, after resolving the URL's names again
    /// (rate-limited), and for a cluster URL, a node within the allow-list that the cluster
    /// reports.
    pub(crate) async fn allows_node(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        if self.allows(addr, usage) {
            return true;
        }
        if !matches!(usage, SocketAddrUse::TcpConnect) {
            return false;
        }
        if self.servers.resolve_again().await && self.servers.contains(addr) {
            return true;
        }
        match &self.cluster {
            Some(cluster) if self.may_be_a_node(addr) => cluster.clone().contains(addr).await,
            _ => false,
        }
    }

    /// Whether `addr` passes the cluster allow-list: a seed's IP address (any port) or
    /// inside an operator's entry, and never a link-local or metadata address.
    fn may_be_a_node(&self, addr: SocketAddr) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        if never_a_node(addr.ip()) {
            return false;
        }
        let ip = addr.ip().to_canonical();
        self.servers.ips().contains(&ip) || cluster.allow.iter().any(|entry| entry.contains(addr))
    }

    /// The host names the component may always look up: the URL's own.
    pub(crate) fn lookup_names(&self) -> Vec<String> {
        self.servers.names()
    }

    /// Whether the component may look up `name`: one of the URL's own names, or for a
    /// cluster URL, a name a master announces (asked as for an address) whose address
    /// passes the allow-list.
    pub(crate) async fn may_look_up(&self, name: &str) -> bool {
        if self
            .lookup_names()
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
        {
            return true;
        }
        match &self.cluster {
            Some(cluster) => cluster
                .clone()
                .announcing(name)
                .await
                .into_iter()
                .any(|addr| self.may_be_a_node(addr)),
            None => false,
        }
    }

    /// Grants exactly this policy's permissions on `builder` (TCP, name lookup when the URL
    /// names a host, the address check) and denies UDP.
    pub(crate) fn apply(self, builder: &mut WasiCtxBuilder) {
        builder
            .allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(!self.lookup_names().is_empty() || self.cluster.is_some());
        let policy = Arc::new(self);
        builder.socket_addr_check(move |addr, usage| {
            if policy.allows(addr, usage) {
                return Box::pin(async move { true });
            }
            let policy = policy.clone();
            Box::pin(async move { policy.allows_node(addr, usage).await })
        });
    }
}

/// Addresses that are never a cluster node the component may reach, whatever the cluster
/// says or the allow-list holds: link-local addresses (which include the cloud metadata
/// service at 169.254.169.254), other well-known metadata addresses, and addresses that
/// name no one host.
pub(crate) fn never_a_node(ip: IpAddr) -> bool {
    /// Alibaba Cloud's metadata service.
    const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
    /// AWS's metadata service over IPv6 (`fd00:ec2::254`).
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4 == ALIBABA_METADATA
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6 == AWS_METADATA_V6
        }
    }
}

/// How the URL's names are resolved: the system resolver, or in tests, a scripted answer.
#[derive(Clone)]
enum Resolver {
    System,
    #[cfg(test)]
    Scripted(Arc<Mutex<Vec<SocketAddr>>>),
}

impl Resolver {
    async fn lookup(&self, name: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Resolver::System => Ok(tokio::net::lookup_host((name, port)).await?.collect()),
            #[cfg(test)]
            Resolver::Scripted(answer) => {
                let _ = name;
                Ok(answer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|addr| SocketAddr::new(addr.ip(), port))
                    .collect())
            }
        }
    }
}

/// The URL's own servers and the addresses they resolved to last.
struct Servers {
    endpoints: Vec<RedisAddress>,
    resolver: Resolver,
    resolved: Mutex<Resolved>,
}

struct Resolved {
    addresses: Vec<SocketAddr>,
    at: Instant,
}

impl fmt::Debug for Servers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        f.debug_struct("Servers")
            .field("endpoints", &endpoints)
            .finish_non_exhaustive()
    }
}

impl Servers {
    /// Resolves every endpoint once.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`] naming the endpoint whose name does not resolve.
    async fn resolve(
        endpoints: Vec<RedisAddress>,
        resolver: Resolver,
    ) -> Result<Servers, TaskError> {
        let addresses = lookup_all(&endpoints, &resolver).await?;
        Ok(Servers {
            endpoints,
            resolver,
            resolved: Mutex::new(Resolved {
                addresses,
                at: Instant::now(),
            }),
        })
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved
            .addresses
            .iter()
            .any(|known| same_peer(*known, addr))
    }

    fn ips(&self) -> Vec<IpAddr> {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved
            .addresses
            .iter()
            .map(|addr| addr.ip().to_canonical())
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter_map(|endpoint| match &endpoint.host {
                HostName::Name(name) => Some(name.clone()),
                HostName::Ip(_) => None,
            })
            .collect()
    }

    /// Resolves the names again unless that was done less than [`RERESOLVE_INTERVAL`] ago;
    /// whether it was done (and succeeded: on failure the last answer stays).
    async fn resolve_again(&self) -> bool {
        if self.names().is_empty() {
            return false;
        }
        {
            let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            if resolved.at.elapsed() < RERESOLVE_INTERVAL {
                return false;
            }
            // Claimed before the lookup, so concurrent denials resolve once.
            resolved.at = Instant::now();
        }
        match lookup_all(&self.endpoints, &self.resolver).await {
            Ok(addresses) => {
                let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
                resolved.addresses = addresses;
                resolved.at = Instant::now();
                true
            }
            Err(_) => false,
        }
    }
}

/// Every address of every endpoint, sorted, without duplicates.
async fn lookup_all(
    endpoints: &[RedisAddress],
    resolver: &Resolver,
) -> Result<Vec<SocketAddr>, TaskError> {
    let mut addresses = Vec::new();
    for endpoint in endpoints {
        match &endpoint.host {
            HostName::Ip(ip) => addresses.push(SocketAddr::new(*ip, endpoint.port)),
            HostName::Name(name) => {
                let unresolved = |why: String| {
                    TaskError::connection(format!("cannot resolve Redis host {endpoint}: {why}"))
                };
                let found = resolver
                    .lookup(name, endpoint.port)
                    .await
                    .map_err(|e| unresolved(e.to_string()))?;
                if found.is_empty() {
                    return Err(unresolved("no addresses".to_owned()));
                }
                addresses.extend(found);
            }
        }
    }
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// The nodes of a cluster, as the cluster itself reports them.
pub(crate) struct ClusterNodes {
    url: RedisUrl,
    /// Plain TCP, or TLS for `rediss+cluster://`.
    connector: MaybeTlsConnector<StdConnector>,
    timeout: Duration,
    /// The operator's widening of the allow-list.
    allow: Vec<ClusterAllow>,
    known: Mutex<KnownNodes>,
}

#[derive(Default)]
struct KnownNodes {
    masters: Vec<Master>,
    asked_at: Option<Instant>,
}

/// A master as `CLUSTER NODES` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Master {
    addr: SocketAddr,
    /// The name it announces (`cluster-announce-hostname`), which clients then dial when
    /// the cluster prefers hostname endpoints.
    hostname: Option<String>,
}

impl fmt::Debug for ClusterNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL holds credentials: show only the seeds.
        let seeds: Vec<String> = self
            .url
            .cluster_seeds
            .iter()
            .map(|s| s.to_string())
            .collect();
        f.debug_struct("ClusterNodes")
            .field("seeds", &seeds)
            .field("allow", &self.allow)
            .finish()
    }
}

impl ClusterNodes {
    pub(crate) fn new(
        url: RedisUrl,
        connector: MaybeTlsConnector<StdConnector>,
        timeout: Duration,
        allow: Vec<ClusterAllow>,
    ) -> ClusterNodes {
        ClusterNodes {
            url,
            connector,
            timeout,
            allow,
            known: Mutex::new(KnownNodes::default()),
        }
    }

    /// Whether `addr` is one of the cluster's masters, asking the cluster unless the cache
    /// knows it or the cluster was asked less than [`CLUSTER_RECHECK_INTERVAL`] ago.
    pub(crate) async fn contains(self: Arc<Self>, addr: SocketAddr) -> bool {
        let is_it = |master: &Master| same_peer(master.addr, addr);
        self.masters(is_it).await.iter().any(is_it)
    }

    /// The addresses of the masters that announce the host name `name`, asked as
    /// [`ClusterNodes::contains`] asks.
    async fn announcing(self: Arc<Self>, name: &str) -> Vec<SocketAddr> {
        let is_it = |master: &Master| {
            master
                .hostname
                .as_deref()
                .is_some_and(|hostname| hostname.eq_ignore_ascii_case(name))
        };
        let masters = self.masters(is_it).await;
        masters
            .iter()
            .filter(|master| is_it(master))
            .map(|master| master.addr)
            .collect()
    }

    /// The masters known, asking the cluster first unless one of them is `wanted` or the
    /// cluster was asked less than [`CLUSTER_RECHECK_INTERVAL`] ago.
    async fn masters(self: Arc<Self>, wanted: impl Fn(&Master) -> bool) -> Vec<Master> {
        {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let recent = known
                .asked_at
                .is_some_and(|at| at.elapsed() < CLUSTER_RECHECK_INTERVAL);
            if recent || known.masters.iter().any(&wanted) {
                return known.masters.clone();
            }
        }
        let asking = self.clone();
        let found = tokio::task::spawn_blocking(move || asking.discover()).await;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.asked_at = Some(Instant::now());
        if let Ok(Ok(masters)) = found {
            known.masters = masters;
        }
        known.masters.clone()
    }

    /// Asks the seeds in turn (with the URL's credentials, within `timeout` per step) for
    /// `CLUSTER NODES` and returns the masters' addresses from the first that answers; for
    /// a Sentinel URL, [`ClusterNodes::discover_sentinel`]. Blocking.
    fn discover(&self) -> Result<Vec<Master>, TaskError> {
        let limits = ReplyLimits {
            max_bulk_bytes: DISCOVERY_MAX_REPLY_BYTES,
            max_array_len: DISCOVERY_MAX_ARRAY_LEN,
            max_reply_bytes: DISCOVERY_MAX_REPLY_BYTES,
        };
        if self.url.is_sentinel() {
            return self.discover_sentinel(limits);
        }
        let mut last_error = None;
        for seed in &self.url.cluster_seeds {
            let mut client = Client::new(
                self.connector.clone(),
                self.url.for_node(seed.clone()),
                self.timeout,
                DISCOVERY_MAX_REPLY_BYTES,
            )
            .with_reply_limits(limits);
            let reply = client
                .connect()
                .and_then(|()| client.command(&[b"CLUSTER", b"NODES"], Retry::Idempotent));
            match reply {
                Ok(Reply::BulkString(text)) => {
                    // A seed named by a host name fills no empty address: such a node is
                    // not yet reachable by any other name anyway.
                    let answering = seed.host.parse::<IpAddr>().ok();
                    return Ok(cluster_masters(&String::from_utf8_lossy(&text), answering));
                }
                Ok(other) => last_error = Some(client.unexpected_reply("CLUSTER NODES", &other)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| TaskError::connection("no seed nodes")))
    }
}

impl ClusterNodes {
    /// Asks the sentinels in turn (with the sentinel password only) for the service's
    /// master and replicas, and returns their addresses from the first that answers.
    /// Blocking.
    fn discover_sentinel(&self, limits: ReplyLimits) -> Result<Vec<Master>, TaskError> {
        let Some(target) = &self.url.sentinel else {
            return Ok(Vec::new());
        };
        let service = target.service.as_bytes();
        let mut last_error = None;
        for sentinel in &target.sentinels {
            let mut client = Client::new(
                self.connector.clone(),
                self.url.for_sentinel(sentinel.clone()),
                self.timeout,
                DISCOVERY_MAX_REPLY_BYTES,
            )
            .with_reply_limits(limits);
            let replies = client.connect().and_then(|()| {
                client.pipeline(
                    &[
                        &[b"SENTINEL", b"get-master-addr-by-name", service],
                        &[b"SENTINEL", b"replicas", service],
                    ],
                    Retry::Idempotent,
                )
            });
            match replies {
                Ok(replies) => return Ok(sentinel_nodes(&replies)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| TaskError::connection("no sentinels")))
    }
}

/// The master and replicas in the replies to `SENTINEL get-master-addr-by-name` (`[ip,
/// port]`) and `SENTINEL replicas` (one flat `[field, value, …]` array per replica, with
/// `ip` and `port`). Addresses that are not IP literals are left out.
fn sentinel_nodes(replies: &[Reply]) -> Vec<Master> {
    fn text(reply: &Reply) -> Option<&str> {
        match reply {
            Reply::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
    fn node(ip: Option<&str>, port: Option<&str>) -> Option<Master> {
        let ip = ip?.trim_matches(['[', ']']).parse::<IpAddr>().ok()?;
        let port = port?.parse::<u16>().ok().filter(|&port| port != 0)?;
        Some(Master {
            addr: SocketAddr::new(ip, port),
            hostname: None,
        })
    }
    let mut nodes = Vec::new();
    if let Some(Reply::Array(pair)) = replies.first() {
        if let [ip, port] = pair.as_slice() {
            nodes.extend(node(text(ip), text(port)));
        }
    }
    if let Some(Reply::Array(replicas)) = replies.get(1) {
        for replica in replicas {
            let Reply::Array(fields) = replica else {
                continue;
            };
            let value = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| text(&pair[0]) == Some(name))
                    .and_then(|pair| pair.get(1))
                    .and_then(text)
            };
            nodes.extend(node(value("ip"), value("port")));
        }
    }
    nodes
}

/// The masters in a `CLUSTER NODES` reply, slots or not, that are neither failed nor still
/// joining. A node line is `<id> <ip>:<port>@<bus-port>[,<hostname>] <flags> …`; an empty
/// `<ip>` is the answering node's (`answering`), as it is in `CLUSTER SLOTS`.
fn cluster_masters(text: &str, answering: Option<IpAddr>) -> Vec<Master> {
    let mut masters = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(' ');
        let (Some(_id), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|flag| matches!(*flag, "fail" | "handshake" | "noaddr"))
        {
            continue;
        }
        let hostname = address
            .split_once(',')
            .map(|(_, hostname)| hostname.to_owned())
            .filter(|hostname| !hostname.is_empty());
        let address = address.split(['@', ',']).next().unwrap_or("");
        let Some((ip, port)) = address.rsplit_once(':') else {
            continue;
        };
        let ip = match ip {
            "" => answering,
            ip => ip.trim_matches(['[', ']']).parse::<IpAddr>().ok(),
        };
        if let (Some(ip), Ok(port)) = (ip, port.parse::<u16>()) {
            if port != 0 {
                masters.push(Master {
                    addr: SocketAddr::new(ip, port),
                    hostname,
                });
            }
        }
    }
    masters
}

/// Compares canonical forms: an IPv4-mapped IPv6 address is the same peer.
fn same_peer(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn policy(addrs: &[&str]) -> NetworkPolicy {
        let addresses: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        NetworkPolicy {
            servers: Arc::new(Servers {
                endpoints: addresses
                    .iter()
                    .map(|a| RedisAddress {
                        host: HostName::Ip(a.ip()),
                        port: a.port(),
                    })
                    .collect(),
                resolver: Resolver::System,
                resolved: Mutex::new(Resolved {
                    addresses,
                    at: Instant::now(),
                }),
            }),
            cluster: None,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn allows_the_implicit_bind_of_a_connect() {
        let p = policy(&["127.0.0.1:6379"]);
        assert!(p.allows(addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(p.allows(addr("[::]:0"), SocketAddrUse::TcpBind));
    }

    #[test]
    fn denies_binds_to_a_port_or_a_specific_address() {
        let p = policy(&["127.0.0.1:6379"]);
        assert!(!p.allows(addr("0.0.0.0:8080"), SocketAddrUse::TcpBind));
        assert!(!p.allows(addr("127.0.0.1:0"), SocketAddrUse::TcpBind));
    }

    #[test]
    fn allows_connect_only_to_the_resolved_addresses() {
        let p = policy(&["127.0.0.1:6379", "[::1]:6379"]);
        assert!(p.allows(addr("127.0.0.1:6379"), SocketAddrUse::TcpConnect));
        assert!(p.allows(addr("[::1]:6379"), SocketAddrUse::TcpConnect));
        assert!(p.allows(addr("[::ffff:127.0.0.1]:6379"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("127.0.0.1:6380"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("127.0.0.2:6379"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("10.0.0.1:6379"), SocketAddrUse::TcpConnect));
    }

    #[test]
    fn denies_listen_accept_and_udp_even_for_the_redis_address() {
        let p = policy(&["127.0.0.1:6379"]);
        for usage in [
            SocketAddrUse::TcpListen,
            SocketAddrUse::TcpAccept,
            SocketAddrUse::UdpBind,
            SocketAddrUse::UdpSend,
            SocketAddrUse::UdpReceive,
        ] {
            assert!(!p.allows(addr("127.0.0.1:6379"), usage), "{usage:?}");
            assert!(!p.allows(addr("0.0.0.0:0"), usage), "{usage:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cluster_policy_allows_seeds_and_reported_nodes_only() {
        let cluster = taskstore_testing::redis_cluster::RedisCluster::start(3).unwrap();
        let nodes = cluster.addrs();
        let p = NetworkPolicy::for_url(
            &cluster.seed_url(1),
            &TlsSettings::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(p.allows(nodes[1], SocketAddrUse::TcpConnect), "the seed");
        assert!(
            !p.allows(nodes[0], SocketAddrUse::TcpConnect),
            "not statically"
        );
        for node in &nodes {
            assert!(
                p.allows_node(*node, SocketAddrUse::TcpConnect).await,
                "{node}"
            );
        }
        let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", nodes[2].port())
            .parse()
            .unwrap();
        assert!(p.allows_node(mapped, SocketAddrUse::TcpConnect).await);
        let stranger = addr("127.0.0.1:1");
        assert!(!p.allows_node(stranger, SocketAddrUse::TcpConnect).await);
        assert!(!p.allows_node(nodes[0], SocketAddrUse::TcpListen).await);
        assert!(!p.allows_node(nodes[0], SocketAddrUse::UdpSend).await);
    }

    /// Over TLS the cluster reports its nodes' TLS ports: those are allowed, the plaintext
    /// ports of the same nodes are not. Discovery verifies the nodes as the component does:
    /// with a CA that did not sign them, only the seed stays allowed.
    #[tokio::test(flavor = "current_thread")]
    async fn tls_cluster_policy_allows_the_reported_tls_ports_only() {
        let pki = taskstore_testing::pki::pki("network test CA", &["127.0.0.1"]);
        let cluster =
            taskstore_testing::redis_cluster::RedisCluster::start_tls(3, pki.server.clone())
                .unwrap();
        let trusted = TlsSettings {
            ca_certificates: Some(pki.ca_pem.clone()),
            danger_accept_invalid_certificates: false,
        };
        let p = NetworkPolicy::for_url(&cluster.seed_url(1), &trusted, Duration::from_secs(5))
            .await
            .unwrap();
        for node in cluster.tls_addrs() {
            assert!(
                p.allows_node(node, SocketAddrUse::TcpConnect).await,
                "{node}"
            );
        }
        for node in cluster.addrs() {
            assert!(
                !p.allows_node(node, SocketAddrUse::TcpConnect).await,
                "plaintext port {node}"
            );
        }

        let untrusted = TlsSettings {
            ca_certificates: Some(taskstore_testing::pki::pki("other CA", &["127.0.0.1"]).ca_pem),
            danger_accept_invalid_certificates: false,
        };
        let p = NetworkPolicy::for_url(&cluster.seed_url(1), &untrusted, Duration::from_secs(5))
            .await
            .unwrap();
        let tls_addrs = cluster.tls_addrs();
        assert!(
            p.allows(tls_addrs[1], SocketAddrUse::TcpConnect),
            "the seed"
        );
        assert!(!p.allows_node(tls_addrs[0], SocketAddrUse::TcpConnect).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tls_cluster_with_unusable_ca_text_is_invalid_input() {
        let junk = TlsSettings {
            ca_certificates: Some("not a certificate".into()),
            danger_accept_invalid_certificates: false,
        };
        match NetworkPolicy::for_url(
            "rediss+cluster://127.0.0.1:7000",
            &junk,
            Duration::from_secs(1),
        )
        .await
        {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                assert!(error.message().contains("PEM"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cluster_that_cannot_be_asked_allows_only_the_seeds() {
        let refusing = taskstore_testing::redis_server::RefusingPort::bind().unwrap();
        let port = refusing.port();
        let url = format!("redis+cluster://127.0.0.1:{port}");
        let p = NetworkPolicy::for_url(&url, &TlsSettings::default(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(p.allows(
            addr(&format!("127.0.0.1:{port}")),
            SocketAddrUse::TcpConnect
        ));
        assert!(
            !p.allows_node(addr("127.0.0.1:6379"), SocketAddrUse::TcpConnect)
                .await
        );
    }

    /// A managed Redis fails over: its name now resolves to another address. Every
    /// instance sharing the policy (as `serve`'s do) reaches the new address once the name
    /// is resolved again, which a denied connect triggers, at most once per interval.
    #[tokio::test(flavor = "current_thread")]
    async fn a_name_that_moves_is_resolved_again_after_a_denied_connect() {
        let answer = Arc::new(Mutex::new(vec![addr("127.0.0.1:0")]));
        let endpoint = RedisAddress {
            host: HostName::Name("redis.internal".into()),
            port: 7000,
        };
        let servers = Servers::resolve(vec![endpoint], Resolver::Scripted(answer.clone()))
            .await
            .unwrap();
        let first_instance = NetworkPolicy {
            servers: Arc::new(servers),
            cluster: None,
        };
        let later_instance = first_instance.clone();
        let (old, new) = (addr("127.0.0.1:7000"), addr("127.0.0.2:7000"));
        assert!(first_instance.allows(old, SocketAddrUse::TcpConnect));

        *answer.lock().unwrap() = vec![addr("127.0.0.2:0")];
        // Resolved less than an interval ago: not asked again yet.
        assert!(
            !first_instance
                .allows_node(new, SocketAddrUse::TcpConnect)
                .await
        );
        tokio::time::sleep(RERESOLVE_INTERVAL + Duration::from_millis(50)).await;
        assert!(
            later_instance
                .allows_node(new, SocketAddrUse::TcpConnect)
                .await
        );
        assert!(
            first_instance.allows(new, SocketAddrUse::TcpConnect),
            "shared"
        );
        assert!(
            !first_instance.allows(old, SocketAddrUse::TcpConnect),
            "old one dropped"
        );
        // Right after, a stranger does not make the policy resolve again.
        *answer.lock().unwrap() = vec![addr("127.0.0.3:0")];
        let stranger = addr("127.0.0.3:7000");
        assert!(
            !later_instance
                .allows_node(stranger, SocketAddrUse::TcpConnect)
                .await
        );
        // Only the URL's names may be looked up by the component.
        assert_eq!(
            later_instance.lookup_names(),
            vec!["redis.internal".to_owned()]
        );
    }

    #[test]
    fn link_local_metadata_and_unspecified_addresses_are_never_nodes() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(never_a_node(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.5", "::1", "fd12::1", "192.168.1.1"] {
            assert!(!never_a_node(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_allow_list_is_the_seeds_hosts_plus_the_operators_entries() {
        let url = "redis+cluster://127.0.0.1:7000";
        let everywhere = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let tls = TlsSettings::default();
        let timeout = Duration::from_secs(1);
        let default = NetworkPolicy::for_url(url, &tls, timeout).await.unwrap();
        let wide = NetworkPolicy::for_url_allowing(url, &tls, timeout, &everywhere)
            .await
            .unwrap();
        let narrow = NetworkPolicy::for_url_allowing(
            url,
            &tls,
            timeout,
            &["10.0.0.0/8:7000-7002".parse().unwrap()],
        )
        .await
        .unwrap();
        assert!(
            default.may_be_a_node(addr("127.0.0.1:7005")),
            "a seed's host"
        );
        assert!(!default.may_be_a_node(addr("127.0.0.2:7000")));
        assert!(!default.may_be_a_node(addr("10.0.0.1:7000")));
        assert!(narrow.may_be_a_node(addr("10.0.0.1:7002")));
        assert!(!narrow.may_be_a_node(addr("10.0.0.1:7003")));
        assert!(wide.may_be_a_node(addr("10.0.0.1:7003")));
        for metadata in ["169.254.169.254:80", "[fd00:ec2::254]:80", "[fe80::1]:7000"] {
            assert!(!wide.may_be_a_node(addr(metadata)), "{metadata}");
        }
        let single =
            NetworkPolicy::for_url_allowing("redis://127.0.0.1:7000", &tls, timeout, &everywhere)
                .await
                .unwrap();
        assert!(
            !single.may_be_a_node(addr("10.0.0.1:7000")),
            "no cluster, no nodes"
        );
    }

    #[test]
    fn sentinel_replies_give_the_master_and_replicas_by_ip_only() {
        let bulk = |text: &str| Reply::BulkString(text.as_bytes().to_vec());
        let replica = |ip: &str, port: &str| {
            Reply::Array(vec![
                bulk("name"),
                bulk("x"),
                bulk("ip"),
                bulk(ip),
                bulk("port"),
                bulk(port),
            ])
        };
        let replies = [
            Reply::Array(vec![bulk("10.0.0.1"), bulk("6379")]),
            Reply::Array(vec![
                replica("10.0.0.2", "6380"),
                replica("replica.internal", "6381"),
                replica("::1", "0"),
                Reply::Integer(1),
            ]),
        ];
        let addrs: Vec<SocketAddr> = sentinel_nodes(&replies).iter().map(|m| m.addr).collect();
        assert_eq!(addrs, [addr("10.0.0.1:6379"), addr("10.0.0.2:6380")]);
        assert!(sentinel_nodes(&[Reply::Null, Reply::Array(vec![])]).is_empty());
    }

    #[test]
    fn cluster_nodes_lists_masters_with_or_without_slots() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,node-b.internal master - 0 0 2 connected 5461-16383
c3 127.0.0.1:7002@17002 master - 0 0 0 connected
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 master,fail - 0 0 3 disconnected
f6 :7005@17005 master,handshake - 0 0 0 connected
g7 ::1:7006@17006 master - 0 0 4 connected 1-2
h8 :7007@17007 myself,master - 0 0 0 connected
broken line
";
        let masters = cluster_masters(text, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(masters[1].hostname.as_deref(), Some("node-b.internal"));
        assert_eq!(masters[0].hostname, None);
        assert_eq!(
            masters.iter().map(|master| master.addr).collect::<Vec<_>>(),
            vec![
                addr("127.0.0.1:7000"),
                addr("127.0.0.1:7001"),
                addr("127.0.0.1:7002"),
                addr("[::1]:7006"),
                addr("10.0.0.9:7007"),
            ]
        );
    }

    /// A cluster that prefers hostname endpoints tells its clients names to dial: the
    /// component may look up a name a master announces if that master's address is inside
    /// the allow-list, and no other name.
    #[tokio::test(flavor = "current_thread")]
    async fn names_cluster_nodes_announce_may_be_looked_up_within_the_allow_list() {
        let tls = TlsSettings::default();
        let timeout = Duration::from_secs(5);
        let inside = taskstore_testing::redis_cluster::start_node(
            None,
            &["--cluster-announce-hostname", "redis-node-a.internal"],
        )
        .unwrap();
        let url = format!("redis+cluster://127.0.0.1:{}", inside.port());
        let p = NetworkPolicy::for_url(&url, &tls, timeout).await.unwrap();
        assert!(p.may_look_up("redis-node-a.internal").await);
        assert!(p.may_look_up("REDIS-NODE-A.internal").await);
        assert!(!p.may_look_up("exfiltrate.example").await);

        let outside = taskstore_testing::redis_cluster::start_node(
            None,
            &[
                "--cluster-announce-ip",
                "127.0.0.2",
                "--cluster-announce-hostname",
                "redis-node-b.internal",
            ],
        )
        .unwrap();
        let url = format!("redis+cluster://127.0.0.1:{}", outside.port());
        let p = NetworkPolicy::for_url(&url, &tls, timeout).await.unwrap();
        assert!(!p.may_look_up("redis-node-b.internal").await);
        let widened =
            NetworkPolicy::for_url_allowing(&url, &tls, timeout, &["127.0.0.2".parse().unwrap()])
                .await
                .unwrap();
        assert!(widened.may_look_up("redis-node-b.internal").await);
    }

    /// A node that joined the cluster but serves no slots yet (the target of its first
    /// slot migration, reached through `ASK`) is not in `CLUSTER SLOTS`; the policy still
    /// lets the component reach it, as it is inside the allow-list and a master.
    #[tokio::test(flavor = "current_thread")]
    async fn an_empty_master_inside_the_allow_list_is_reachable() {
        let cluster = taskstore_testing::redis_cluster::RedisCluster::start(3).unwrap();
        let empty = taskstore_testing::redis_cluster::start_node(None, &[]).unwrap();
        let bus_port = {
            let reply = taskstore_testing::redis_server::command(
                empty.addr(),
                &[b"CONFIG", b"GET", b"cluster-port"],
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
            let text = String::from_utf8_lossy(&reply).into_owned();
            text.lines().nth(4).unwrap().parse::<u16>().unwrap()
        };
        let port = empty.port().to_string();
        let bus = bus_port.to_string();
        cluster
            .command(
                0,
                &[
                    b"CLUSTER",
                    b"MEET",
                    b"127.0.0.1",
                    port.as_bytes(),
                    bus.as_bytes(),
                ],
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = cluster.command(0, &[b"CLUSTER", b"NODES"]).unwrap();
            let nodes = String::from_utf8_lossy(&nodes);
            let joined = nodes.lines().any(|line| {
                line.contains(&format!("127.0.0.1:{port}@")) && !line.contains("handshake")
            });
            if joined {
                break;
            }
            assert!(Instant::now() < deadline, "the node did not join: {nodes}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let p = NetworkPolicy::for_url(
            &cluster.seed_url(0),
            &TlsSettings::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(p.allows_node(empty.addr(), SocketAddrUse::TcpConnect).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ip_literal_needs_no_lookup() {
        let endpoint = RedisAddress::from_url("redis://[::1]:7000").unwrap();
        let p = NetworkPolicy::resolve(&endpoint).await.unwrap();
        assert!(p.allows(addr("[::1]:7000"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("[::1]:7001"), SocketAddrUse::TcpConnect));
        assert!(p.lookup_names().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn name_is_resolved_on_the_host_and_lookup_allowed() {
        let endpoint = RedisAddress::from_url("redis://localhost:7001").unwrap();
        let p = NetworkPolicy::resolve(&endpoint).await.unwrap();
        assert_eq!(p.lookup_names(), vec!["localhost".to_owned()]);
        assert!(p.allows(addr("127.0.0.1:7001"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("127.0.0.1:7002"), SocketAddrUse::TcpConnect));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unresolvable_name_is_a_connection_error() {
        let endpoint = RedisAddress::from_url("redis://no-such-host.invalid:6379").unwrap();
        match NetworkPolicy::resolve(&endpoint).await {
            Err(error) if error.kind() == ErrorKind::Connection => {
                assert!(
                    error.message().contains("no-such-host.invalid:6379"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
