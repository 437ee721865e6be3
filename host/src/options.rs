//! What a store is opened with, and the little the host itself must read from the URL.
//!
//! The component validates the options and parses the URL in full. The host reads only the
//! host and port, to decide which addresses the component may connect to, and the password,
//! to keep it out of every message it passes on; it reads them with the component's own
//! parser, built natively, so both sides agree on what the URL says.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use taskstore::config::RedisUrl;

#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::TaskError;

taskstore::store_options! {
    /// How to reach Redis and lay out tasks in it: the WIT `options` record (the fields of
    /// the component's own `taskstore::config::StoreOptions`), a password given apart from
    /// the URL, and for a cluster where its nodes may be. Fields left `None` take the
    /// component's defaults (key prefix `research_task:`, TTL 7 days, timeout 5 s,
    /// documents up to 16 MiB).
    ///
    /// `Debug` shows the URL with its credentials replaced by `***`.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct Options {
        /// The Redis password, given apart from the URL (read from a file or the
        /// environment, say), so the URL can be shown and logged as it is: better than a
        /// password in [`Options::url`]. The URL must then hold no password of its own; a
        /// user name in it is kept. It never appears in any message or `Debug`.
        pub password: Option<String>,
        /// `redis+sentinel://` URLs only: the password of the sentinels themselves (their
        /// `requirepass`), given apart from the URL as [`Options::password`] is. Redis lets
        /// sentinels have their own password, separate from the data nodes'; the URL's
        /// password (or [`Options::password`]) goes only to the data nodes, this one only to
        /// the sentinels. `None`: the sentinels are sent no `AUTH` (unless the URL holds a
        /// `sentinel-password=` parameter). Never shown.
        pub sentinel_password: Option<String>,
        /// Cluster and Sentinel URLs: networks (and ports) where the component may reach nodes the
        /// cluster reports (or, for Sentinel, the masters and replicas the sentinels report),
        /// besides the seeds' (sentinels') own addresses (any port), which are always
        /// allowed. A node reported outside them is refused, as is any link-local or cloud
        /// metadata address whatever this says: the cluster's (sentinels') answers, not the
        /// operator, would otherwise decide where the password is sent.
        pub cluster_allow: Vec<ClusterAllow>,
        /// How listing by status finds tasks, and whether this store's writes keep the
        /// status index (the WIT `options.listing`); `None`: scan, which never misses a
        /// task whoever wrote it.
        pub listing: Option<taskstore::store::ListingMode>,
    }
}

impl Options {
    /// The URL as the component reads it: [`Options::url`] with [`Options::password`]
    /// written in. Handed to the component only; never shown.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when a password is given both ways or the URL has no
    /// `scheme://`.
    pub(crate) fn guest_url(&self) -> Result<String, TaskError> {
        let url = match &self.password {
            None => self.url.clone(),
            Some(password) => taskstore::config::url_with_password(&self.url, password)
                .map_err(|e| TaskError::invalid_input(e.to_string()))?,
        };
        match &self.sentinel_password {
            None => Ok(url),
            Some(password) => taskstore::config::url_with_sentinel_password(&url, password)
                .map_err(|e| TaskError::invalid_input(e.to_string())),
        }
    }

    /// Every form of the password that a message could show, for scrubbing: the separate
    /// password, and the URL's ([`url_secrets`]).
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets = url_secrets(&self.url);
        secrets.extend(self.password.clone());
        secrets.extend(self.sentinel_password.clone());
        secrets
    }

    /// How TLS verifies the server, should the URL ask for TLS.
    pub(crate) fn tls_settings(&self) -> taskstore::config::TlsSettings {
        taskstore::config::TlsSettings {
            ca_certificates: self.tls_ca_certificates.clone(),
            danger_accept_invalid_certificates: self.danger_accept_invalid_certificates,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Options");
        self.debug_record(&mut out);
        out.field("password", &self.password.as_ref().map(|_| "***"))
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .field("cluster_allow", &self.cluster_allow)
            .field("listing", &self.listing)
            .finish()
    }
}

/// The PEM text of a file of CA certificates, for [`Options::tls_ca_certificates`] (or the
/// function's `tls-ca-certificates` setting).
///
/// # Errors
/// The file cannot be read as text; the message names the file.
pub fn read_tls_ca_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read TLS CA file {}: {e}", path.display()))
}

/// A network, and optionally a port range, where discovered cluster nodes may be:
/// `CIDR[:PORTS]`, e.g. `10.0.0.0/8`, `10.1.2.3:7000-7005`, `[fd00::/8]:7000`, `fd00::/8`.
/// An address without a prefix length is that one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAllow {
    pub network: ipnet::IpNet,
    pub ports: std::ops::RangeInclusive<u16>,
}

impl ClusterAllow {
    /// Whether `addr` is inside.
    pub fn contains(&self, addr: std::net::SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.network.contains(&ip) && self.ports.contains(&addr.port())
    }
}

impl std::str::FromStr for ClusterAllow {
    type Err = String;

    fn from_str(text: &str) -> Result<ClusterAllow, String> {
        let (network, ports) = if let Some(bracketed) = text.strip_prefix('[') {
            let (network, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(ports) => (network, Some(ports)),
                None if after.is_empty() => (network, None),
                None => return Err(format!("{text:?}: text after ']'")),
            }
        } else if text.matches(':').count() > 1 {
            // An IPv6 network without ports; with ports it must be in [brackets].
            (text, None)
        } else {
            match text.split_once(':') {
                Some((network, ports)) => (network, Some(ports)),
                None => (text, None),
            }
        };
        let network = match network.parse::<ipnet::IpNet>() {
            Ok(network) => network.trunc(),
            Err(_) => match network.parse::<IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "{text:?}: {network:?} is neither a CIDR network nor an IP address"
                    ))
                }
            },
        };
        let ports = match ports {
            None => 1..=u16::MAX,
            Some(ports) => {
                let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
                match (first.parse::<u16>(), last.parse::<u16>()) {
                    (Ok(first), Ok(last)) if 0 < first && first <= last => first..=last,
                    _ => {
                        return Err(format!(
                            "{text:?}: ports {ports:?} are not PORT or FIRST-LAST within 1-65535"
                        ))
                    }
                }
            }
        };
        Ok(ClusterAllow {
            network: match network {
                // Compared with canonical addresses: an IPv4-mapped IPv6 network is IPv4.
                ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                    Some(v4) if v6.prefix_len() >= 96 => ipnet::IpNet::V4(
                        ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                            .map_err(|e| format!("{text:?}: {e}"))?,
                    ),
                    _ => network,
                },
                ipnet::IpNet::V4(_) => network,
            },
            ports,
        })
    }
}

/// The URL with any userinfo replaced by `***`, safe to print or log.
///
/// Text that does not look like `scheme://...` is replaced whole: without the structure
/// there is no telling where a password would be.
pub fn redact_url(url: &str) -> String {
    taskstore::config::redact_url(url)
}

/// Where the URL says Redis is: host name or address, and port. (The component's own
/// `taskstore::transport::Endpoint` is what it dials; this is what the host allows.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisAddress {
    pub(crate) host: HostName,
    pub(crate) port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostName {
    Ip(IpAddr),
    /// A DNS name, to be resolved.
    Name(String),
}

impl fmt::Display for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            HostName::Ip(ip) => write!(f, "{ip}:{}", self.port),
            HostName::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl RedisAddress {
    /// Reads host and port from a `redis://` URL with the component's own parser (its
    /// native build), so the host allows exactly the address the component will dial.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] with the component's message when the URL is malformed;
    /// the message never repeats the URL, which may hold a password.
    pub(crate) fn from_url(text: &str) -> Result<RedisAddress, TaskError> {
        let url = RedisUrl::parse(text).map_err(|e| TaskError::invalid_input(e.to_string()))?;
        Ok(RedisAddress::from_parsed(url.endpoint))
    }

    /// Every server a URL names: its one host, a cluster URL's seed nodes, or a Sentinel
    /// URL's sentinels.
    ///
    /// # Errors
    /// As [`RedisAddress::from_url`].
    pub(crate) fn all_from_url(text: &str) -> Result<Vec<RedisAddress>, TaskError> {
        let url = RedisUrl::parse(text).map_err(|e| TaskError::invalid_input(e.to_string()))?;
        if let Some(target) = url.sentinel {
            Ok(target
                .sentinels
                .into_iter()
                .map(RedisAddress::from_parsed)
                .collect())
        } else if url.is_cluster() {
            Ok(url
                .cluster_seeds
                .into_iter()
                .map(RedisAddress::from_parsed)
                .collect())
        } else {
            Ok(vec![RedisAddress::from_parsed(url.endpoint)])
        }
    }

    fn from_parsed(endpoint: taskstore::transport::Endpoint) -> RedisAddress {
        let host = match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => HostName::Ip(ip),
            Err(_) => HostName::Name(endpoint.host),
        };
        RedisAddress {
            host,
            port: endpoint.port,
        }
    }
}

/// The password in a URL in the forms it may take in a message: percent-decoded, and as
/// written in the URL; also the whole userinfo as written. Split as the parser splits it
/// ([`taskstore::config::split_url`]), so also for a URL the parser rejects: its messages
/// never quote the authority, and this is the second line of defence.
pub(crate) fn url_secrets(text: &str) -> Vec<String> {
    let Some((_, parts)) = taskstore::config::split_url(text) else {
        return Vec::new();
    };
    let mut secrets = Vec::new();
    if let Ok(url) = RedisUrl::parse(text) {
        if let Some(credentials) = url.credentials {
            secrets.push(credentials.password.expose().to_owned());
        }
        if let Some(credentials) = url.sentinel.and_then(|target| target.credentials) {
            secrets.push(credentials.password.expose().to_owned());
        }
    }
    let sentinel_raw = taskstore::config::raw_sentinel_password(parts.tail);
    for raw in [parts.raw_password(), parts.userinfo, sentinel_raw]
        .into_iter()
        .flatten()
    {
        if !raw.is_empty() && !secrets.iter().any(|known| known == raw) {
            secrets.push(raw.to_owned());
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn address(url: &str) -> RedisAddress {
        RedisAddress::from_url(url).unwrap()
    }

    #[test]
    fn ipv4_literal_is_an_ip_not_a_name() {
        assert_eq!(
            address("redis://127.0.0.1:7000/2"),
            RedisAddress {
                host: HostName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: 7000
            }
        );
    }

    #[test]
    fn bracketed_ipv6_literal_is_an_ip() {
        let e = address("redis://:pw@[::1]:6390");
        assert_eq!(e.host, HostName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(e.to_string(), "[::1]:6390");
    }

    #[test]
    fn name_keeps_default_port() {
        let e = address("redis://user:pw@localhost");
        assert_eq!(e.host, HostName::Name("localhost".into()));
        assert_eq!(e.port, 6379);
        assert_eq!(e.to_string(), "localhost:6379");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(address("REDIS://h:1").port, 1);
    }

    #[test]
    fn unbracketed_ipv4_with_db_and_password() {
        let e = address("redis://:s3cret@10.1.2.3/4");
        assert_eq!(e.host, HostName::Ip("10.1.2.3".parse().unwrap()));
        assert_eq!(e.port, 6379);
    }

    #[test]
    fn bad_urls_are_invalid_input_without_the_password() {
        for text in [
            "localhost:6379",
            "redis://",
            "redis://hunter2@localhost",
            "redis://:hunter2%zz@localhost",
            "redis://:hunter2@",
            "redis://:hunter2@h:99999",
            "redis://:hunter2@h:0",
            "http://:hunter2@localhost",
            "rediss://:hunter2@",
            "rediss://:hunter2@h:0",
            "redis://:hunter2@[::1",
            "",
        ] {
            match RedisAddress::from_url(text) {
                Err(error) if error.kind() == ErrorKind::InvalidInput => {
                    let message = error.message();
                    assert!(!message.contains("hunter2"), "{text}: {message}");
                    assert!(!message.is_empty(), "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn separate_password_reaches_only_the_guest_url() {
        let options = Options {
            password: Some("Xk9Q/Zp2@Tail".into()),
            ..Options::new("redis://worker@127.0.0.1:6379/2")
        };
        let guest = RedisUrl::parse(&options.guest_url().unwrap()).unwrap();
        let credentials = guest.credentials.unwrap();
        assert_eq!(credentials.password.expose(), "Xk9Q/Zp2@Tail");
        assert_eq!(credentials.username.as_deref(), Some("worker"));
        assert_eq!(guest.database, 2);
        assert!(options.secrets().contains(&"Xk9Q/Zp2@Tail".to_owned()));
        let shown = format!("{options:?}");
        assert!(!shown.contains("Xk9Q"), "{shown}");

        let twice = Options {
            password: Some("second".into()),
            ..Options::new("redis://:first@h")
        };
        match twice.guest_url() {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                let m = error.message();
                assert!(!m.contains("first") && !m.contains("second"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_allow_parses_networks_hosts_and_port_ranges() {
        let parse = |text: &str| text.parse::<ClusterAllow>().unwrap();
        let addr = |text: &str| text.parse::<std::net::SocketAddr>().unwrap();
        let net = parse("10.0.0.0/8");
        assert!(net.contains(addr("10.9.8.7:1")) && net.contains(addr("10.0.0.1:65535")));
        assert!(!net.contains(addr("11.0.0.1:6379")));
        assert!(net.contains(addr("[::ffff:10.1.1.1]:6379")), "IPv4-mapped");
        let host = parse("127.0.0.2:7000-7005");
        assert!(host.contains(addr("127.0.0.2:7000")) && host.contains(addr("127.0.0.2:7005")));
        assert!(!host.contains(addr("127.0.0.2:7006")) && !host.contains(addr("127.0.0.3:7000")));
        assert!(parse("[fd00::/8]:6379").contains(addr("[fd12::1]:6379")));
        assert!(!parse("[fd00::/8]:6379").contains(addr("[fd12::1]:6380")));
        assert!(parse("fd00::/8").contains(addr("[fd12::1]:1")));
        assert!(parse("[::1]").contains(addr("[::1]:7")));
        assert_eq!(parse("10.1.2.3/8"), parse("10.0.0.0/8"));
        for bad in [
            "",
            "x",
            "10.0.0.0/33",
            "10.0.0.1:0",
            "10.0.0.1:9-8",
            "10.0.0.1:x",
            "[::1",
            "[::1]x",
            "::1:7000-7001x",
        ] {
            assert!(bad.parse::<ClusterAllow>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tls_ca_file_is_read_whole_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&path, pem).unwrap();
        assert_eq!(read_tls_ca_file(&path).unwrap(), pem);
        let missing = dir.path().join("missing.pem");
        let error = read_tls_ca_file(&missing).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
    }

    #[test]
    fn debug_hides_credentials() {
        let options = Options::new("redis://admin:hunter2@localhost:6379/1");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://***@localhost:6379/1"), "{shown}");
    }

    #[test]
    fn redact_url_only_touches_userinfo() {
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://:p@ss@h"), "redis://***@h");
        assert_eq!(redact_url("redis://u:p@h:1/0"), "redis://***@h:1/0");
        // An '@' after a '/' ends a userinfo too: a password may hold '/', a database
        // never holds '@'.
        assert_eq!(redact_url("redis://h/a@b"), "redis://***@b");
        assert_eq!(
            redact_url("redis://:Xk9Q/Zp2SecretTail@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(redact_url("hunter2"), "***");
    }

    #[test]
    fn secrets_include_raw_and_decoded_password() {
        assert_eq!(
            url_secrets("redis://u:p%40ssword@h"),
            vec![
                "p@ssword".to_owned(),
                "p%40ssword".to_owned(),
                "u:p%40ssword".to_owned()
            ]
        );
        assert_eq!(
            url_secrets("redis://:plain@h:1/0"),
            vec!["plain".to_owned(), ":plain".to_owned()]
        );
        assert_eq!(
            url_secrets("redis://:Xk9Q/Zp2SecretTail@127.0.0.1:6379"),
            vec![
                "Xk9Q/Zp2SecretTail".to_owned(),
                ":Xk9Q/Zp2SecretTail".to_owned()
            ]
        );
        // Found even where the URL does not parse.
        assert!(url_secrets("redis://:Xk9Q/Zp2%zz@h:0").contains(&"Xk9Q/Zp2%zz".to_owned()));
        assert!(url_secrets("redis://h").is_empty());
        assert!(url_secrets("not a url").is_empty());
    }

    #[test]
    fn a_sentinel_url_names_its_sentinels_and_both_passwords_are_secrets() {
        let url =
            "redis+sentinel://:d4ta@127.0.0.1:26379,10.0.0.2:26380/svc?sentinel-password=s%2Fp";
        let servers = RedisAddress::all_from_url(url).unwrap();
        let shown: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(shown, ["127.0.0.1:26379", "10.0.0.2:26380"]);
        let secrets = url_secrets(url);
        for secret in ["d4ta", "s/p", "s%2Fp"] {
            assert!(
                secrets.contains(&secret.to_owned()),
                "{secret}: {secrets:?}"
            );
        }

        let options = Options {
            sentinel_password: Some("Zp2&x".into()),
            password: Some("d4ta".into()),
            ..Options::new("redis+sentinel://127.0.0.1:26379/svc")
        };
        let guest = RedisUrl::parse(&options.guest_url().unwrap()).unwrap();
        assert_eq!(guest.credentials.unwrap().password.expose(), "d4ta");
        let sentinel = guest.sentinel.unwrap().credentials.unwrap();
        assert_eq!(sentinel.password.expose(), "Zp2&x");
        assert!(options.secrets().contains(&"Zp2&x".to_owned()));
        assert!(!format!("{options:?}").contains("Zp2"));
        let not_sentinel = Options {
            sentinel_password: Some("Zp2".into()),
            ..Options::new("redis://h")
        };
        let err = not_sentinel.guest_url().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(!err.to_string().contains("Zp2"));
    }
}
