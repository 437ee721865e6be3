//! The component's network permissions: TCP to the Redis address from the URL, nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

use crate::error::TaskError;
use crate::options::{Endpoint, HostName};

/// Which socket operations the component may perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkPolicy {
    /// Every address the URL's host resolved to, with the URL's port.
    connect_to: Vec<SocketAddr>,
    /// Whether the component may resolve names: only when the URL names its host.
    name_lookup: bool,
}

impl NetworkPolicy {
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
            SocketAddrUse::TcpConnect => self.connect_to.iter().any(|allowed| {
                // Compare canonical forms: an IPv4-mapped IPv6 address is the same peer.
                allowed.ip().to_canonical() == addr.ip().to_canonical()
                    && allowed.port() == addr.port()
            }),
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
            Box::pin(async move { allowed })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(addrs: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            connect_to: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            name_lookup: false,
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
    async fn ip_literal_needs_no_lookup() {
        let endpoint = Endpoint::from_url("redis://[::1]:7000").unwrap();
        let p = NetworkPolicy::resolve(&endpoint).await.unwrap();
        assert_eq!(p, policy(&["[::1]:7000"]));
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
