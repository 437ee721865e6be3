//! The component's network permissions: TCP to the Redis address from the URL, nothing else;
//! for a Redis Cluster URL, TCP to the cluster's nodes, nothing else.
//!
//! A cluster's nodes are not all in its URL: the component discovers them (`CLUSTER SLOTS`,
//! `MOVED`, `ASK`). So the host allows the seeds the URL names, and for any other address
//! asks the cluster itself — natively, from the host, with the URL's credentials, only ever
//! dialling the seeds — which masters serve slots now, and allows the address iff it is one
//! of them. Answers are cached; an unknown address makes the host ask again at most once per
//! [`CLUSTER_RECHECK_INTERVAL`], so a guest cannot make it flood the cluster. For
//! `rediss+cluster://` the host asks over TLS, verifying each node as the component will.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskstore::client::ClientError;
use taskstore::cluster_client::ClusterClient;
use taskstore::config::{RedisUrl, TlsSettings};
use taskstore::std_tcp::StdConnector;
use taskstore::tls::MaybeTlsConnector;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

use crate::error::TaskError;
use crate::options::{Endpoint, HostName};

/// Least time between two membership questions to the cluster about unknown addresses.
pub const CLUSTER_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Which socket operations the component may perform.
#[derive(Debug, Clone)]
pub(crate) struct NetworkPolicy {
    /// Every address the URL's hosts resolved to, with their ports.
    connect_to: Vec<SocketAddr>,
    /// Whether the component may resolve names: only when the URL names a host.
    name_lookup: bool,
    /// For a cluster URL: which other addresses are the cluster's nodes.
    cluster: Option<Arc<ClusterNodes>>,
}

impl NetworkPolicy {
    /// The policy for the URL `url`: [`NetworkPolicy::resolve`] of its host, or for a
    /// cluster URL, of each seed plus the cluster's discovered nodes (asked with `timeout`;
    /// over TLS verified as `tls` says for `rediss+cluster://`).
    ///
    /// # Errors
    /// [`TaskError::InvalidInput`] for a malformed URL or unusable TLS CA certificates;
    /// [`TaskError::Connection`] if a name does not resolve.
    pub(crate) async fn for_url(
        url: &str,
        tls: &TlsSettings,
        timeout: Duration,
    ) -> Result<NetworkPolicy, TaskError> {
        let parsed = RedisUrl::parse(url).map_err(|e| TaskError::InvalidInput(e.to_string()))?;
        if !parsed.is_cluster() {
            return NetworkPolicy::resolve(&Endpoint::from_url(url)?).await;
        }
        let connector = MaybeTlsConnector::new(StdConnector, parsed.tls.then_some(tls))
            .map_err(|e| TaskError::InvalidInput(e.0))?;
        let mut connect_to = Vec::new();
        let mut name_lookup = false;
        for seed in Endpoint::all_from_url(url)? {
            let policy = NetworkPolicy::resolve(&seed).await?;
            connect_to.extend(policy.connect_to);
            name_lookup |= policy.name_lookup;
        }
        connect_to.sort();
        connect_to.dedup();
        Ok(NetworkPolicy {
            connect_to,
            name_lookup,
            cluster: Some(Arc::new(ClusterNodes::new(parsed, connector, timeout))),
        })
    }

    /// The policy for `endpoint`, resolving a host name on the host.
    ///
    /// The addresses are fixed here: should the name later resolve elsewhere, connections
    /// there are denied until the store is opened again.
    ///
    /// # Errors
    /// [`TaskError::Connection`] if the name does not resolve.
    pub(crate) async fn resolve(endpoint: &Endpoint) -> Result<NetworkPolicy, TaskError> {
        match &endpoint.host {
            HostName::Ip(ip) => Ok(NetworkPolicy {
                connect_to: vec![SocketAddr::new(*ip, endpoint.port)],
                name_lookup: false,
                cluster: None,
            }),
            HostName::Name(name) => {
                let unresolved = |why: String| {
                    TaskError::Connection(format!("cannot resolve Redis host {endpoint}: {why}"))
                };
                let found = tokio::net::lookup_host((name.as_str(), endpoint.port))
                    .await
                    .map_err(|e| unresolved(e.to_string()))?;
                let mut connect_to: Vec<SocketAddr> = found.collect();
                connect_to.sort();
                connect_to.dedup();
                if connect_to.is_empty() {
                    return Err(unresolved("no addresses".to_owned()));
                }
                Ok(NetworkPolicy {
                    connect_to,
                    name_lookup: true,
                    cluster: None,
                })
            }
        }
    }

    /// Whether the component may use `addr` for `usage`.
    ///
    /// wasmtime-wasi checks a connect twice: first as a bind of the unspecified address with
    /// port 0 (the implicit bind), then as a connect to the remote address. So that bind is
    /// allowed, and any other bind, listen, accept and all of UDP are not.
    pub(crate) fn allows(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        match usage {
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => self
                .connect_to
                .iter()
                .any(|allowed| same_peer(*allowed, addr)),
            _ => false,
        }
    }

    /// [`NetworkPolicy::allows`], and for a cluster URL also a connect to any address the
    /// cluster says is one of its nodes.
    pub(crate) async fn allows_node(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        if self.allows(addr, usage) {
            return true;
        }
        match (&self.cluster, usage) {
            (Some(cluster), SocketAddrUse::TcpConnect) => cluster.clone().contains(addr).await,
            _ => false,
        }
    }

    /// Grants exactly this policy's permissions on `builder` (TCP, name lookup when needed,
    /// the address check) and denies UDP.
    pub(crate) fn apply(self, builder: &mut WasiCtxBuilder) {
        builder
            .allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(self.name_lookup);
        let policy = Arc::new(self);
        builder.socket_addr_check(move |addr, usage| {
            let allowed = policy.allows(addr, usage);
            if allowed || policy.cluster.is_none() {
                return Box::pin(async move { allowed });
            }
            let policy = policy.clone();
            Box::pin(async move { policy.allows_node(addr, usage).await })
        });
    }
}

/// The nodes of a cluster, as the cluster itself reports them.
pub(crate) struct ClusterNodes {
    url: RedisUrl,
    /// Plain TCP, or TLS for `rediss+cluster://`.
    connector: MaybeTlsConnector<StdConnector>,
    timeout: Duration,
    known: Mutex<KnownNodes>,
}

#[derive(Default)]
struct KnownNodes {
    addresses: Vec<SocketAddr>,
    asked_at: Option<Instant>,
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
            .finish()
    }
}

impl ClusterNodes {
    pub(crate) fn new(
        url: RedisUrl,
        connector: MaybeTlsConnector<StdConnector>,
        timeout: Duration,
    ) -> ClusterNodes {
        ClusterNodes {
            url,
            connector,
            timeout,
            known: Mutex::new(KnownNodes::default()),
        }
    }

    /// Whether `addr` is one of the cluster's masters, asking the cluster unless the cache
    /// knows it or the cluster was asked less than [`CLUSTER_RECHECK_INTERVAL`] ago.
    pub(crate) async fn contains(self: Arc<Self>, addr: SocketAddr) -> bool {
        if let Some(answer) = self.cached(addr) {
            return answer;
        }
        let asking = self.clone();
        let found = tokio::task::spawn_blocking(move || asking.discover()).await;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.asked_at = Some(Instant::now());
        if let Ok(Ok(addresses)) = found {
            known.addresses = addresses;
        }
        known.addresses.iter().any(|node| same_peer(*node, addr))
    }

    fn cached(&self, addr: SocketAddr) -> Option<bool> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.addresses.iter().any(|node| same_peer(*node, addr)) {
            return Some(true);
        }
        match known.asked_at {
            Some(at) if at.elapsed() < CLUSTER_RECHECK_INTERVAL => Some(false),
            _ => None,
        }
    }

    /// Asks a seed (with the URL's credentials, within `timeout` per step) for the slot map
    /// and returns its masters' addresses. Blocking.
    fn discover(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let mut client = ClusterClient::new(
            self.connector.clone(),
            self.url.clone(),
            self.timeout,
            1 << 16,
        );
        client.connect()?;
        let mut addresses = Vec::new();
        for endpoint in client.master_endpoints() {
            if let Ok(resolved) = (endpoint.host.as_str(), endpoint.port).to_socket_addrs() {
                addresses.extend(resolved);
            }
        }
        Ok(addresses)
    }
}

/// Compares canonical forms: an IPv4-mapped IPv6 address is the same peer.
fn same_peer(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(addrs: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            connect_to: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            name_lookup: false,
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
        let cluster = crate::redis_cluster::RedisCluster::start(3).unwrap();
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
        let pki = crate::test_pki::pki("network test CA", &["127.0.0.1"]);
        let cluster = crate::redis_cluster::RedisCluster::start_tls(3, pki.server.clone()).unwrap();
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
            ca_certificates: Some(crate::test_pki::pki("other CA", &["127.0.0.1"]).ca_pem),
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
            Err(TaskError::InvalidInput(message)) => assert!(message.contains("PEM"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn cluster_that_cannot_be_asked_allows_only_the_seeds() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
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

    #[tokio::test(flavor = "current_thread")]
    async fn ip_literal_needs_no_lookup() {
        let endpoint = Endpoint::from_url("redis://[::1]:7000").unwrap();
        let p = NetworkPolicy::resolve(&endpoint).await.unwrap();
        assert_eq!(p.connect_to, policy(&["[::1]:7000"]).connect_to);
        assert!(!p.name_lookup);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn name_is_resolved_on_the_host_and_lookup_allowed() {
        let endpoint = Endpoint::from_url("redis://localhost:7001").unwrap();
        let p = NetworkPolicy::resolve(&endpoint).await.unwrap();
        assert!(p.name_lookup);
        assert!(p.allows(addr("127.0.0.1:7001"), SocketAddrUse::TcpConnect));
        assert!(!p.allows(addr("127.0.0.1:7002"), SocketAddrUse::TcpConnect));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unresolvable_name_is_a_connection_error() {
        let endpoint = Endpoint::from_url("redis://no-such-host.invalid:6379").unwrap();
        match NetworkPolicy::resolve(&endpoint).await {
            Err(TaskError::Connection(m)) => {
                assert!(m.contains("no-such-host.invalid:6379"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
