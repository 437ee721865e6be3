//! A private Redis Sentinel deployment: a master, a replica and three sentinels
//! (`redis-server --sentinel`), all on free loopback ports with their own temporary
//! directories, killed and reaped when dropped.
//!
//! The sentinels run with fast settings ([`DOWN_AFTER`], [`FAILOVER_TIMEOUT`]) so a killed
//! master is replaced within a few seconds. [`RedisSentinel::start`] returns only once every
//! sentinel knows the replica and the other two sentinels, so a failover can be started at
//! once. Every wait is bounded.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::redis_server::{command, find_program, free_loopback_port, RedisServer, TlsFiles};
use crate::PLAIN_TIMEOUT;

/// The service name the sentinels monitor the master under.
pub const SERVICE: &str = "taskstore-master";
/// How long a master may be silent before a sentinel thinks it down.
pub const DOWN_AFTER: Duration = Duration::from_millis(800);
/// Sentinel's `failover-timeout`: also how soon a failed failover may be tried again.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// How long the deployment may take to be ready (sentinels aware of each other).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a failover may take to be reported.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
const SENTINELS: usize = 3;

/// Passwords of a deployment: of the data nodes (`requirepass`/`masterauth`) and of the
/// sentinels (their own `requirepass`).
#[derive(Debug, Clone, Default)]
pub struct SentinelPasswords {
    pub data: Option<String>,
    pub sentinel: Option<String>,
}

/// A master, a replica and three sentinels monitoring the master as [`SERVICE`].
#[derive(Debug)]
pub struct RedisSentinel {
    /// The data nodes, in start order: index 0 is the first master.
    nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    passwords: SentinelPasswords,
    /// The address the sentinels monitor the first master at.
    master_ip: Ipv4Addr,
    /// With TLS: every node and sentinel also listens for TLS, and the sentinels monitor
    /// and report the data nodes' TLS ports.
    tls: Option<TlsFiles>,
}

/// One `redis-server --sentinel` process.
#[derive(Debug)]
struct SentinelProcess {
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisSentinel {
    /// Starts the deployment without passwords.
    ///
    /// # Errors
    /// As [`RedisSentinel::start_with`].
    pub fn start() -> anyhow::Result<RedisSentinel> {
        Self::start_with(SentinelPasswords::default())
    }

    /// Starts the master, the replica and three sentinels, and waits until every sentinel
    /// sees the replica and the two other sentinels.
    ///
    /// # Errors
    /// `redis-server` is missing or a process does not start or get ready in time.
    pub fn start_with(passwords: SentinelPasswords) -> anyhow::Result<RedisSentinel> {
        Self::start_monitoring(passwords, Ipv4Addr::LOCALHOST)
    }

    /// As [`RedisSentinel::start_with`], with the master also listening on `master_ip` (a
    /// loopback address such as 127.0.0.2) and the sentinels monitoring it there, so they
    /// report it at that address, as any sentinel may report any address.
    ///
    /// # Errors
    /// As [`RedisSentinel::start_with`].
    pub fn start_monitoring(
        passwords: SentinelPasswords,
        master_ip: Ipv4Addr,
    ) -> anyhow::Result<RedisSentinel> {
        Self::start_inner(passwords, master_ip, None)
    }

    /// As [`RedisSentinel::start`], with every data node and sentinel also listening for
    /// TLS with `files`, replication over TLS, and the sentinels monitoring (and reporting)
    /// the data nodes' TLS ports; [`RedisSentinel::tls_url`] names the sentinels' TLS ports.
    ///
    /// # Errors
    /// As [`RedisSentinel::start_with`].
    pub fn start_tls(files: TlsFiles) -> anyhow::Result<RedisSentinel> {
        Self::start_inner(
            SentinelPasswords::default(),
            Ipv4Addr::LOCALHOST,
            Some(files),
        )
    }

    fn start_inner(
        passwords: SentinelPasswords,
        master_ip: Ipv4Addr,
        tls: Option<TlsFiles>,
    ) -> anyhow::Result<RedisSentinel> {
        // Without the default 5 s delay before a full sync, the replica holds the data
        // moments after it starts.
        let mut data_args: Vec<String> = vec!["--repl-diskless-sync-delay".into(), "0".into()];
        if let Some(password) = &passwords.data {
            data_args.extend(["--requirepass".into(), password.clone()]);
            data_args.extend(["--masterauth".into(), password.clone()]);
        }
        let mut master_args = data_args.clone();
        if master_ip != Ipv4Addr::LOCALHOST {
            master_args.extend(["--bind".into(), format!("127.0.0.1 {master_ip}")]);
        }
        let builder = || match &tls {
            Some(files) => RedisServer::builder()
                .tls(files.clone())
                .args(["--tls-replication", "yes"]),
            None => RedisServer::builder(),
        };
        let master = builder().args(&master_args).start()?;
        let master_port = master.tls_port().unwrap_or(master.port());
        let replica = builder()
            .args(&data_args)
            .args(["--replicaof", "127.0.0.1", &master_port.to_string()])
            .start()?;
        let mut deployment = RedisSentinel {
            nodes: vec![master, replica],
            sentinels: Vec::new(),
            passwords,
            master_ip,
            tls,
        };
        for _ in 0..SENTINELS {
            let sentinel = deployment.spawn_sentinel()?;
            deployment.sentinels.push(sentinel);
        }
        deployment.wait_ready()?;
        Ok(deployment)
    }

    /// The data nodes: index 0 started as the master, 1 as its replica.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Data node `index`, to kill or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The sentinels' addresses.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels
            .iter()
            .map(|s| SocketAddr::from((Ipv4Addr::LOCALHOST, s.port)))
            .collect()
    }

    /// `redis+sentinel://127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>/<SERVICE>`, without
    /// any password.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_addrs()
            .iter()
            .map(SocketAddr::to_string)
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// `rediss+sentinel://…/<SERVICE>` naming the sentinels' TLS ports, when started with
    /// [`RedisSentinel::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        let hosts: Option<Vec<String>> = self
            .sentinels
            .iter()
            .map(|s| s.tls_port.map(|port| format!("127.0.0.1:{port}")))
            .collect();
        hosts.map(|hosts| format!("rediss+sentinel://{}/{SERVICE}", hosts.join(",")))
    }

    /// The master's address as sentinel `index` reports it now.
    ///
    /// # Errors
    /// The sentinel does not answer or knows no master.
    pub fn reported_master(&self, index: usize) -> anyhow::Result<SocketAddr> {
        let reply = self.sentinel_command(
            index,
            &[b"SENTINEL", b"get-master-addr-by-name", SERVICE.as_bytes()],
        )?;
        let parts = bulk_strings(&reply);
        match parts.as_slice() {
            [host, port] => Ok(format!("{host}:{port}").parse()?),
            _ => bail!("no master reported: {}", String::from_utf8_lossy(&reply)),
        }
    }

    /// The password of the data nodes, if any.
    pub fn data_password(&self) -> Option<&str> {
        self.passwords.data.as_deref()
    }

    /// Index of the data node that is master now, by the address sentinel 0 reports.
    ///
    /// # Errors
    /// As [`RedisSentinel::reported_master`]; or it reports an address of no node here.
    pub fn master_index(&self) -> anyhow::Result<usize> {
        let addr = self.reported_master(0)?;
        self.nodes
            .iter()
            .position(|node| serves_at(node, addr))
            .ok_or_else(|| anyhow!("the sentinels report {addr}, no node of this deployment"))
    }

    /// Asks sentinel 0 for a failover now (`SENTINEL FAILOVER`), without agreement.
    ///
    /// # Errors
    /// The sentinel refuses (no replica known, a failover already under way).
    pub fn force_failover(&self) -> anyhow::Result<()> {
        let reply = self.sentinel_command(0, &[b"SENTINEL", b"FAILOVER", SERVICE.as_bytes()])?;
        if !reply.starts_with(b"+OK") {
            bail!("SENTINEL FAILOVER: {}", String::from_utf8_lossy(&reply));
        }
        Ok(())
    }

    /// Waits until every sentinel reports node `index` as the master and the node says
    /// `ROLE` master.
    ///
    /// # Errors
    /// Not so within [`FAILOVER_WAIT`].
    pub fn wait_for_master(&self, index: usize) -> anyhow::Result<()> {
        let want = self.nodes[index].addr();
        let deadline = Instant::now() + FAILOVER_WAIT;
        loop {
            let reported = (0..self.sentinels.len()).all(|s| {
                self.reported_master(s)
                    .is_ok_and(|addr| serves_at(&self.nodes[index], addr))
            });
            if reported && self.role(index).is_ok_and(|role| role == "master") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {index} ({want}) is not the master after {FAILOVER_WAIT:?}");
            }
            thread::sleep(POLL);
        }
    }

    /// Node `index`'s `ROLE`: `master` or `slave`.
    ///
    /// # Errors
    /// The node does not answer.
    pub fn role(&self, index: usize) -> anyhow::Result<String> {
        let addr = self.nodes[index].addr();
        let deadline = Instant::now() + PLAIN_TIMEOUT;
        let reply = match &self.passwords.data {
            Some(password) => authenticated(addr, password.as_bytes(), &[b"ROLE"], deadline)?,
            None => command(addr, &[b"ROLE"], deadline)?,
        };
        bulk_strings(&reply)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("bad ROLE reply: {}", String::from_utf8_lossy(&reply)))
    }

    fn sentinel_command(&self, index: usize, args: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.sentinels[index].port));
        let deadline = Instant::now() + PLAIN_TIMEOUT;
        match &self.passwords.sentinel {
            Some(password) => authenticated(addr, password.as_bytes(), args, deadline),
            None => command(addr, args, deadline),
        }
    }

    fn spawn_sentinel(&self) -> anyhow::Result<SentinelProcess> {
        let program = find_program(
            "redis-server",
            &std::env::var_os("PATH").unwrap_or_default(),
        )
        .ok_or_else(|| anyhow!("redis-server not found on PATH; run scripts/setup.sh"))?;
        let dir = tempfile::Builder::new()
            .prefix("taskstore-sentinel-")
            .tempdir()
            .context("cannot create a temporary directory for a sentinel")?;
        let port = free_loopback_port()?;
        let master = self.nodes[0].tls_port().unwrap_or(self.nodes[0].port());
        let mut config = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {SERVICE} {master_ip} {master} 2\n\
             sentinel down-after-milliseconds {SERVICE} {down}\n\
             sentinel failover-timeout {SERVICE} {failover}\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            dir = dir.path().display(),
            master_ip = self.master_ip,
            down = DOWN_AFTER.as_millis(),
            failover = FAILOVER_TIMEOUT.as_millis(),
        );
        if let Some(password) = &self.passwords.data {
            config.push_str(&format!("sentinel auth-pass {SERVICE} {password}\n"));
        }
        if let Some(password) = &self.passwords.sentinel {
            // The sentinels' own password, which they also use with each other.
            config.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        let mut tls_port = None;
        if let Some(files) = &self.tls {
            let port = free_loopback_port()?;
            tls_port = Some(port);
            for (name, pem, directive) in [
                ("server.crt", &files.certificate, "tls-cert-file"),
                ("server.key", &files.private_key, "tls-key-file"),
                ("ca.crt", &files.ca_certificate, "tls-ca-cert-file"),
            ] {
                let file = dir.path().join(name);
                fs::write(&file, pem).with_context(|| format!("cannot write {name}"))?;
                config.push_str(&format!("{directive} {}\n", file.display()));
            }
            config.push_str(&format!(
                "tls-port {port}\ntls-auth-clients no\ntls-replication yes\n"
            ));
        }
        let path: PathBuf = dir.path().join("sentinel.conf");
        fs::write(&path, config).context("cannot write sentinel.conf")?;
        let stdio = fs::File::create(dir.path().join("sentinel.stdio"))?;
        let child = Command::new(program)
            .arg(&path)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdio.try_clone()?))
            .stderr(Stdio::from(stdio))
            .spawn()
            .context("cannot run redis-server --sentinel")?;
        Ok(SentinelProcess {
            port,
            tls_port,
            dir,
            child: Some(child),
        })
    }

    /// Waits until the replica is in sync and each sentinel knows it and the two other
    /// sentinels.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let addr = self.nodes[1].addr();
            let role_deadline = Instant::now() + PLAIN_TIMEOUT;
            let reply = match &self.passwords.data {
                Some(password) => {
                    authenticated(addr, password.as_bytes(), &[b"ROLE"], role_deadline)
                }
                None => command(addr, &[b"ROLE"], role_deadline),
            }
            .map(|reply| bulk_strings(&reply))
            .unwrap_or_default();
            // `slave <host> <port> connected <offset>`: the replica has synced.
            if reply.get(2).map(String::as_str) == Some("connected") {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the replica did not sync within {READY_TIMEOUT:?} (ROLE {reply:?}): {}",
                    self.nodes[1].log_tail()
                );
            }
            thread::sleep(POLL);
        }
        for index in 0..self.sentinels.len() {
            loop {
                if let Some(Ok(Some(status))) =
                    self.sentinels[index].child.as_mut().map(Child::try_wait)
                {
                    bail!(
                        "sentinel {index} exited ({status}): {}",
                        self.sentinels[index].log_tail()
                    );
                }
                let info = self
                    .sentinel_command(index, &[b"SENTINEL", b"MASTER", SERVICE.as_bytes()])
                    .map(|reply| bulk_strings(&reply))
                    .unwrap_or_default();
                let field = |name: &str| {
                    info.chunks(2)
                        .find(|pair| pair[0] == name)
                        .and_then(|pair| pair.get(1).cloned())
                };
                if field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "sentinel {index} not ready within {READY_TIMEOUT:?} (knows {:?} \
                         replicas, {:?} other sentinels): {}",
                        field("num-slaves"),
                        field("num-other-sentinels"),
                        self.sentinels[index].log_tail()
                    );
                }
                thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

impl SentinelProcess {
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Whether `node` listens at `addr` (its plaintext or its TLS port).
fn serves_at(node: &RedisServer, addr: SocketAddr) -> bool {
    addr.ip() == node.addr().ip()
        && (addr.port() == node.port() || node.tls_port() == Some(addr.port()))
}

/// `AUTH password` then `args` on one connection, the second reply's raw bytes.
fn authenticated(
    addr: SocketAddr,
    password: &[u8],
    args: &[&[u8]],
    deadline: Instant,
) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("deadline passed"))
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, remaining()?)?;
    let mut request = Vec::new();
    for command in [&[b"AUTH" as &[u8], password][..], args] {
        request.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
        for arg in command {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&request)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(first) = crate::redis_server::frame_len(&reply) {
            if !reply.starts_with(b"+OK") {
                bail!("AUTH refused: {}", String::from_utf8_lossy(&reply[..first]));
            }
            if let Some(second) = crate::redis_server::frame_len(&reply[first..]) {
                return Ok(reply[first..first + second].to_vec());
            }
        }
        stream.set_read_timeout(Some(remaining()?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before a complete reply");
        }
        reply.extend_from_slice(&buf[..n]);
    }
}

/// The bulk strings of a RESP reply, in order, at any depth (enough for the flat replies
/// read here).
fn bulk_strings(reply: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = reply;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..line_end];
        rest = &rest[line_end + 2..];
        if let Some(len) = line.strip_prefix(b"$") {
            let Some(len) = std::str::from_utf8(len)
                .ok()
                .and_then(|len| len.parse::<usize>().ok())
            else {
                continue;
            };
            if rest.len() >= len + 2 {
                out.push(String::from_utf8_lossy(&rest[..len]).into_owned());
                rest = &rest[len + 2..];
            }
        }
    }
    out
}
