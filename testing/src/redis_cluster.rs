//! A private Redis Cluster for tests: several `redis-server --cluster-enabled yes` masters on
//! free loopback ports (no replicas), joined with `redis-cli --cluster create`; optionally
//! with TLS on every node ([`RedisCluster::start_tls`]).
//!
//! [`RedisCluster`] is a guard like [`RedisServer`]: each node has its own port, cluster-bus
//! port and temporary directory (with its `nodes.conf`), nothing is persisted, and every node
//! is killed and reaped when the guard is dropped. Every wait is bounded.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::redis_server::{command, find_program, free_loopback_port, RedisServer, TlsFiles};

/// How long creating the cluster (and waiting for `cluster_state:ok`) may take.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `redis-cli --cluster reshard` may take.
pub const RESHARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at starting a node whose cluster-bus port another process took meanwhile.
const NODE_ATTEMPTS: usize = 5;
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running Redis Cluster of masters on 127.0.0.1, killed and reaped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    redis_cli: PathBuf,
    /// Whether the nodes also listen for TLS, and their URLs name the TLS ports.
    tls: bool,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 3, as `redis-cli --cluster create` requires), joins
    /// them with the slots spread evenly, and waits until every node reports
    /// `cluster_state:ok`.
    ///
    /// # Errors
    /// `redis-server` or `redis-cli` is missing, a node does not start, or the cluster is not
    /// ready within [`CLUSTER_READY_TIMEOUT`]; the error carries `redis-cli`'s output.
    pub fn start(masters: usize) -> anyhow::Result<RedisCluster> {
        RedisCluster::start_with(masters, None)
    }

    /// [`RedisCluster::start`], every node also listening for TLS with `files`
    /// ([`crate::redis_server::RedisServerBuilder::tls`]) and `--tls-cluster yes`: the
    /// cluster bus runs over TLS, and a client connected over TLS is told the nodes' TLS
    /// ports (in `CLUSTER SLOTS` and redirects), a plaintext client their plaintext ports.
    /// [`RedisCluster::url`] then is `rediss+cluster://` with the TLS ports; the cluster is
    /// still created, inspected and resharded over the plaintext ports.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn start_tls(masters: usize, files: TlsFiles) -> anyhow::Result<RedisCluster> {
        RedisCluster::start_with(masters, Some(files))
    }

    fn start_with(masters: usize, tls: Option<TlsFiles>) -> anyhow::Result<RedisCluster> {
        let redis_cli = find_program("redis-cli", &std::env::var_os("PATH").unwrap_or_default())
            .ok_or_else(|| {
                anyhow!("redis-cli not found on PATH; run scripts/setup.sh to install it")
            })?;
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(start_node(tls.as_ref(), &[])?);
        }
        let cluster = RedisCluster {
            nodes,
            redis_cli,
            tls: tls.is_some(),
        };
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(cluster.nodes.iter().map(|n| n.addr().to_string()));
        create.push("--cluster-yes".to_owned());
        cluster.redis_cli(&create, deadline)?;
        cluster.wait_until_ok(deadline)?;
        Ok(cluster)
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis+cluster://` with every node as a seed (`rediss+cluster://` with the TLS ports
    /// for a cluster started with [`RedisCluster::start_tls`]).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = (0..self.nodes.len()).map(|i| self.client_addr(i)).collect();
        format!("{}://{}", self.scheme(), seeds.join(","))
    }

    /// As [`RedisCluster::url`], naming only node `index`: the others must be discovered.
    pub fn seed_url(&self, index: usize) -> String {
        format!("{}://{}", self.scheme(), self.client_addr(index))
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "rediss+cluster"
        } else {
            "redis+cluster"
        }
    }

    /// Node `index`'s address as clients of the URL dial it: its TLS port on a TLS cluster.
    fn client_addr(&self, index: usize) -> String {
        let node = &self.nodes[index];
        match node.tls_port() {
            Some(port) if self.tls => format!("127.0.0.1:{port}"),
            _ => node.addr().to_string(),
        }
    }

    /// Sends one command to node `index` and returns the raw RESP reply.
    ///
    /// # Errors
    /// The node cannot be reached or does not answer within 5 s.
    pub fn command(&self, index: usize, args: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
        command(
            self.nodes[index].addr(),
            args,
            Instant::now() + Duration::from_secs(5),
        )
    }

    /// `CLUSTER SETSLOT <slot> <state> <node id of node other>` on node `index`, for moving a
    /// slot by hand: `IMPORTING` (on the target, `other` the source), `MIGRATING` (on the
    /// source, `other` the target), `NODE` (on every node, `other` the new owner).
    ///
    /// # Errors
    /// As [`RedisCluster::command`], or the node does not answer `+OK`.
    pub fn set_slot(
        &self,
        index: usize,
        slot: impl std::fmt::Display,
        state: &str,
        other: usize,
    ) -> anyhow::Result<()> {
        let (slot, other_id) = (slot.to_string(), self.node_id(other)?);
        let args: [&[u8]; 5] = [
            b"CLUSTER",
            b"SETSLOT",
            slot.as_bytes(),
            state.as_bytes(),
            other_id.as_bytes(),
        ];
        let reply = self.command(index, &args)?;
        anyhow::ensure!(
            reply.starts_with(b"+OK"),
            "CLUSTER SETSLOT {slot} {state} on node {index}: {}",
            String::from_utf8_lossy(&reply).trim_end()
        );
        Ok(())
    }

    /// Moves `key` from node `from` to node `to` (`MIGRATE`, database 0, 5 s), as a slot
    /// migration by hand does key by key between `set_slot` calls.
    ///
    /// # Errors
    /// As [`RedisCluster::command`], or the node does not answer `+OK` (`+NOKEY` included).
    pub fn migrate_key(&self, from: usize, to: usize, key: &str) -> anyhow::Result<()> {
        let port = self.nodes[to].port().to_string();
        let args: [&[u8]; 6] = [
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            key.as_bytes(),
            b"0",
            b"5000",
        ];
        let reply = self.command(from, &args)?;
        anyhow::ensure!(
            reply.starts_with(b"+OK"),
            "MIGRATE {key} from node {from} to node {to}: {}",
            String::from_utf8_lossy(&reply).trim_end()
        );
        Ok(())
    }

    /// Node `index`'s cluster node id (`CLUSTER MYID`).
    ///
    /// # Errors
    /// As [`RedisCluster::command`].
    pub fn node_id(&self, index: usize) -> anyhow::Result<String> {
        let reply = self.command(index, &[b"CLUSTER", b"MYID"])?;
        bulk_text(&reply).ok_or_else(|| anyhow!("bad CLUSTER MYID reply"))
    }

    /// The index of the node that owns each slot, as node 0 sees it (`CLUSTER SLOTS`);
    /// `None` for a slot no node owns.
    ///
    /// # Errors
    /// As [`RedisCluster::command`].
    pub fn slot_owners(&self) -> anyhow::Result<Vec<Option<usize>>> {
        let mut owners = vec![None; taskstore::cluster::SLOT_COUNT];
        let ranges = self.slot_ranges()?;
        for range in ranges {
            let owner = self
                .nodes
                .iter()
                .position(|n| n.port() == range.master.port);
            owners[usize::from(range.first)..=usize::from(range.last)].fill(owner);
        }
        Ok(owners)
    }

    fn slot_ranges(&self) -> anyhow::Result<Vec<taskstore::cluster::SlotRange>> {
        let reply = self.command(0, &[b"CLUSTER", b"SLOTS"])?;
        let limits = taskstore::resp::ReplyLimits {
            max_bulk_bytes: 1 << 16,
            max_array_len: 1 << 16,
            max_reply_bytes: usize::MAX,
        };
        let (reply, _) = taskstore::resp::decode_reply(&reply, &limits)
            .map_err(|e| anyhow!("{}", e.0))?
            .ok_or_else(|| anyhow!("incomplete CLUSTER SLOTS reply"))?;
        taskstore::cluster::parse_cluster_slots(&reply, "127.0.0.1").map_err(|e| anyhow!(e))
    }

    /// The index of the node that owns `slot`, as node 0 sees it (`CLUSTER SLOTS`).
    ///
    /// # Errors
    /// As [`RedisCluster::command`]; no node owns the slot.
    pub fn owner_of_slot(&self, slot: u16) -> anyhow::Result<usize> {
        let ranges = self.slot_ranges()?;
        let range = ranges
            .iter()
            .find(|r| (r.first..=r.last).contains(&slot))
            .ok_or_else(|| anyhow!("no node owns slot {slot}"))?;
        self.nodes
            .iter()
            .position(|n| n.port() == range.master.port)
            .ok_or_else(|| anyhow!("slot {slot} is owned by a node outside the cluster"))
    }

    /// Moves `slots` slots from node `from` to node `to` with
    /// `redis-cli --cluster reshard`, keys included (`MIGRATE`), within [`RESHARD_TIMEOUT`].
    ///
    /// # Errors
    /// `redis-cli` fails or takes too long; the error carries its output.
    pub fn reshard(&self, from: usize, to: usize, slots: usize) -> anyhow::Result<()> {
        let args = [
            "--cluster".to_owned(),
            "reshard".to_owned(),
            self.nodes[0].addr().to_string(),
            "--cluster-from".to_owned(),
            self.node_id(from)?,
            "--cluster-to".to_owned(),
            self.node_id(to)?,
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ];
        self.redis_cli(&args, Instant::now() + RESHARD_TIMEOUT)?;
        Ok(())
    }

    /// Runs `redis-cli` with `args`, killing it at `deadline`; returns its output.
    fn redis_cli(&self, args: &[String], deadline: Instant) -> anyhow::Result<String> {
        // A file, not a pipe: a reshard prints a line per slot, more than a pipe holds, and
        // redis-cli would block on a full pipe while we wait for it to exit.
        let mut output = tempfile::tempfile().context("cannot create redis-cli's output file")?;
        let mut child = Command::new(&self.redis_cli)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output.try_clone()?))
            .stderr(Stdio::from(output.try_clone()?))
            .spawn()
            .with_context(|| format!("cannot run {}", self.redis_cli.display()))?;
        let what = args.get(1).map(String::as_str).unwrap_or("").to_owned();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                bail!(
                    "redis-cli {what} did not finish in time:\n{}",
                    tail(read_all(&mut output))
                );
            }
            thread::sleep(POLL_INTERVAL);
        };
        let text = read_all(&mut output);
        if !status.success() {
            bail!("redis-cli {what} failed ({status}):\n{}", tail(text));
        }
        Ok(text)
    }

    /// Waits until every node says `cluster_state:ok` and knows every other node.
    fn wait_until_ok(&self, deadline: Instant) -> anyhow::Result<()> {
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut last = String::new();
            let all_ok = self.nodes.iter().all(|node| {
                match command(node.addr(), &[b"CLUSTER", b"INFO"], deadline) {
                    Ok(reply) => {
                        let text = String::from_utf8_lossy(&reply).into_owned();
                        let ok = text.contains("cluster_state:ok") && text.contains(&want);
                        if !ok {
                            last = text;
                        }
                        ok
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                }
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the Redis cluster did not become ready in time; last CLUSTER INFO: {last}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The nodes' (plaintext) addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// The nodes' TLS addresses, for a cluster started with [`RedisCluster::start_tls`].
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter_map(|n| n.tls_port())
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect()
    }
}

/// Starts one cluster-enabled node, in no cluster yet, with its own free cluster-bus port
/// (Redis's default, port + 10000, may be past 65535 for an ephemeral port) and `args`
/// after the cluster's own.
///
/// # Errors
/// As [`RedisServer::start`].
pub fn start_node(tls: Option<&TlsFiles>, args: &[&str]) -> anyhow::Result<RedisServer> {
    let mut last = None;
    for _ in 0..NODE_ATTEMPTS {
        let bus_port = free_loopback_port()?;
        let mut builder = RedisServer::builder()
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "5000"])
            .arg("--cluster-port")
            .arg(bus_port.to_string());
        if let Some(files) = tls {
            builder = builder.tls(files.clone()).args(["--tls-cluster", "yes"]);
        }
        let started = builder.args(args).start();
        match started {
            Ok(server) => return Ok(server),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
}

/// A one-node cluster owning every slot that tells its clients it is at `announce_ip`
/// (`cluster-announce-ip`), as any seed may claim any address. It listens on 127.0.0.1 and
/// on `announce_ip` (a loopback address), so a client that follows the announcement
/// reaches it. With `password`, it requires that password once the slots are assigned.
///
/// # Errors
/// As [`start_node`]; or the node does not take the slots or become ready within 10 s.
pub fn start_node_announcing(
    announce_ip: &str,
    password: Option<&str>,
) -> anyhow::Result<RedisServer> {
    let bind = format!("127.0.0.1 {announce_ip}");
    let node = start_node(
        None,
        &["--bind", &bind, "--cluster-announce-ip", announce_ip],
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    command(
        node.addr(),
        &[b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383"],
        deadline,
    )?;
    loop {
        let info = command(node.addr(), &[b"CLUSTER", b"INFO"], deadline)?;
        if String::from_utf8_lossy(&info).contains("cluster_state:ok") {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the one-node cluster did not become ready in time");
        }
        thread::sleep(POLL_INTERVAL);
    }
    if let Some(password) = password {
        command(
            node.addr(),
            &[b"CONFIG", b"SET", b"requirepass", password.as_bytes()],
            deadline,
        )?;
    }
    Ok(node)
}

fn read_all(file: &mut std::fs::File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last lines of a long output, for an error message.
fn tail(text: String) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The text of a RESP bulk-string reply.
fn bulk_text(reply: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(reply).ok()?;
    let (_, rest) = text.strip_prefix('$')?.split_once("\r\n")?;
    Some(rest.trim_end_matches("\r\n").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_masters_cover_every_slot_and_drop_reaps_them() {
        let cluster = RedisCluster::start(3).unwrap();
        let owners: Vec<usize> = [0u16, 8000, 16383]
            .iter()
            .map(|&slot| cluster.owner_of_slot(slot).unwrap())
            .collect();
        assert_eq!(owners, vec![0, 1, 2]);
        assert_eq!(cluster.node_id(0).unwrap().len(), 40);
        let addrs = cluster.addrs();
        drop(cluster);
        for addr in addrs {
            assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
        }
    }
}
