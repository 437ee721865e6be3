//! A Redis Cluster client: one [`Client`] per node it uses (each connected lazily, with the
//! URL's credentials), commands routed to the master of their key's hash slot, `MOVED`
//! followed (and the slot map refreshed) and `ASK` followed with `ASKING` (without touching
//! the map), a bounded number of times.
//!
//! Work is handed in as closures over the node's [`Client`] ([`ClusterClient::on_key`]), so
//! a multi-command exchange such as `update`'s `WATCH`/`GET` … `MULTI`/`SET`/`EXEC` runs
//! whole on one node's connection, and is run again whole on the node a redirect names.
//! That is safe because a redirect is an answer *instead of* executing: a closure that stops
//! at the first redirect has changed nothing.

use std::time::Duration;

use crate::client::{reply_kind, server_error, Client, Retry, ScanBatch};
use crate::cluster::{
    key_slot, parse_cluster_slots, parse_redirect, stable_own_slots, Redirect, RedirectKind,
    SlotSet, SLOT_COUNT,
};
use crate::config::RedisUrl;
use crate::resp::{RedisErrorCode, Reply};
use crate::transport::{Connector, Endpoint};
use crate::{ErrorKind, TaskError};

/// Redirects followed for one operation before giving up: a slot moves at most once or
/// twice while an operation runs, so more means the cluster is confused.
pub const MAX_REDIRECTS: usize = 5;
/// Most nodes one client keeps a connection to (masters it routed to and redirect targets).
const MAX_NODES: usize = 1024;
const NO_NODE: u16 = u16::MAX;

pub struct ClusterClient<C: Connector + Clone> {
    connector: C,
    /// The cluster URL: seeds and credentials.
    url: RedisUrl,
    timeout: Duration,
    max_value_bytes: usize,
    /// Every node used so far, in discovery order; slot owners are indexes into it.
    nodes: Vec<Client<C>>,
    /// The node serving each slot, or `NO_NODE`.
    slots: Vec<u16>,
    /// The masters of the current map, sorted by address.
    masters: Vec<usize>,
}

impl<C: Connector + Clone> ClusterClient<C> {
    /// A client for the cluster `url` names; nothing is sent until [`ClusterClient::connect`]
    /// or the first command.
    pub fn new(connector: C, url: RedisUrl, timeout: Duration, max_value_bytes: usize) -> Self {
        ClusterClient {
            connector,
            url,
            timeout,
            max_value_bytes,
            nodes: Vec::new(),
            slots: vec![NO_NODE; SLOT_COUNT],
            masters: Vec::new(),
        }
    }

    /// Connects to a seed (authenticating) and loads the slot map.
    ///
    /// # Errors
    /// As [`ClusterClient::refresh`].
    pub fn connect(&mut self) -> Result<(), TaskError> {
        self.refresh()
    }

    /// Reloads the slot map with `CLUSTER SLOTS`, asking the known masters first, then the
    /// URL's seeds, until one answers.
    ///
    /// # Errors
    /// The last node's error when none answers; an authentication error at once (the same
    /// credentials go to every node).
    pub fn refresh(&mut self) -> Result<(), TaskError> {
        let mut candidates: Vec<Endpoint> = self
            .masters
            .iter()
            .map(|&index| self.nodes[index].endpoint_ref().clone())
            .collect();
        for seed in &self.url.cluster_seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        let mut last = TaskError::connection("the Redis cluster URL names no node");
        for endpoint in candidates {
            let index = self.node_index(&endpoint)?;
            let node = &mut self.nodes[index];
            let reply = match node.command(&[b"CLUSTER", b"SLOTS"], Retry::Idempotent) {
                Ok(reply) => reply,
                Err(err) if err.kind() == ErrorKind::Authentication => return Err(err),
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            match parse_cluster_slots(&reply, &endpoint.host) {
                Ok(ranges) if !ranges.is_empty() => {
                    self.slots.fill(NO_NODE);
                    let mut masters = Vec::new();
                    for range in ranges {
                        let index = self.node_index(&range.master)?;
                        self.slots[usize::from(range.first)..=usize::from(range.last)]
                            .fill(index as u16);
                        if !masters.contains(&index) {
                            masters.push(index);
                        }
                    }
                    masters.sort_by(|&a, &b| {
                        let (a, b) = (self.nodes[a].endpoint_ref(), self.nodes[b].endpoint_ref());
                        (&a.host, a.port).cmp(&(&b.host, b.port))
                    });
                    self.masters = masters;
                    return Ok(());
                }
                Ok(_) => {
                    last = TaskError::server(format!(
                        "CLUSTERDOWN the Redis node at {endpoint} serves no hash slots"
                    ))
                }
                Err(why) => {
                    last = TaskError::protocol(format!(
                        "bad CLUSTER SLOTS reply from Redis at {endpoint}: {why}"
                    ))
                }
            }
        }
        Err(last)
    }

    /// Runs `op` on the connection of the master serving `key`'s slot, following redirects:
    /// after `MOVED` the map is refreshed and `op` runs again on the new owner; after `ASK`
    /// it runs again on the target in `ASKING` mode (see [`Client::set_asking`]).
    ///
    /// # Errors
    /// `op`'s error; a `server` error when no node serves the slot or after
    /// [`MAX_REDIRECTS`] redirects.
    pub fn on_key<T>(
        &mut self,
        key: &[u8],
        op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        let slot = key_slot(key);
        let node = self.route(slot)?;
        self.run_from(slot, node, false, op)
    }

    /// Runs `op` on node `node` (in `ASKING` mode if `asking`), then wherever redirects
    /// point, at most [`MAX_REDIRECTS`] times.
    fn run_from<T>(
        &mut self,
        slot: u16,
        mut node: usize,
        mut asking: bool,
        mut op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        for _ in 0..=MAX_REDIRECTS {
            let client = &mut self.nodes[node];
            client.set_asking(asking);
            let outcome = op(client);
            client.set_asking(false);
            let host = client.endpoint_ref().host.clone();
            let redirect = match &outcome {
                Err(err) if err.kind() == ErrorKind::Server => parse_redirect(err.message(), &host),
                _ => None,
            };
            let Some(redirect) = redirect else {
                return outcome;
            };
            (node, asking) = self.follow(&redirect)?;
        }
        Err(TaskError::server(format!(
            "gave up after {MAX_REDIRECTS} Redis cluster redirects for hash slot {slot}"
        )))
    }

    /// Sends `commands[i]` (about `keys[i]`) grouped per node, one pipeline per node, and
    /// returns the replies in input order. Error replies stay per item; items a node
    /// redirected are sent again, one by one, where the redirect points.
    ///
    /// # Errors
    /// A failure of a whole exchange (connection, timeout, protocol).
    pub fn batch(
        &mut self,
        keys: &[&[u8]],
        commands: &[&[&[u8]]],
        retry: Retry,
    ) -> Result<Vec<Reply>, TaskError> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (item, key) in keys.iter().enumerate() {
            let node = self.route(key_slot(key))?;
            match groups.iter_mut().find(|(n, _)| *n == node) {
                Some((_, items)) => items.push(item),
                None => groups.push((node, vec![item])),
            }
        }
        let mut results: Vec<Option<Reply>> = vec![None; keys.len()];
        // The host of the node that answered each item, for a redirect naming no host.
        let mut answered_by: Vec<String> = vec![String::new(); keys.len()];
        for (node, items) in groups {
            let pipeline: Vec<&[&[u8]]> = items.iter().map(|&item| commands[item]).collect();
            let replies = self.nodes[node].pipeline(&pipeline, retry)?;
            for (item, reply) in items.into_iter().zip(replies) {
                results[item] = Some(reply);
                answered_by[item].clone_from(&self.nodes[node].endpoint_ref().host);
            }
        }
        for item in 0..keys.len() {
            let (slot, answering) = (key_slot(keys[item]), &answered_by[item]);
            let redirect = match &results[item] {
                Some(Reply::Error(message)) => parse_redirect(message, answering),
                _ => None,
            };
            let Some(redirect) = redirect else {
                continue;
            };
            let (node, asking) = self.follow(&redirect)?;
            let resent = self.run_from(slot, node, asking, |client| {
                match client.pipeline(&[commands[item]], retry)?.pop() {
                    Some(Reply::Error(message)) if RedisErrorCode::of(&message).is_redirect() => {
                        Err(TaskError::server(message))
                    }
                    Some(reply) => Ok(reply),
                    None => Err(TaskError::protocol("no reply")),
                }
            });
            results[item] = Some(match resent {
                Ok(reply) => reply,
                Err(err) if err.kind() == ErrorKind::Server => Reply::Error(err.into_message()),
                Err(err) => return Err(err),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Reply::Null))
            .collect())
    }

    /// The number of masters in the current slot map.
    pub fn master_count(&self) -> usize {
        self.masters.len()
    }

    /// After reloading the slot map: the master serving the lowest slot not in `covered`,
    /// or `None` when every served slot is covered.
    ///
    /// # Errors
    /// As [`ClusterClient::refresh`].
    pub fn next_uncovered_master(
        &mut self,
        covered: &SlotSet,
    ) -> Result<Option<Endpoint>, TaskError> {
        self.refresh()?;
        let owner = (0..SLOT_COUNT as u16)
            .find(|&slot| !covered.contains(slot) && self.slots[usize::from(slot)] != NO_NODE)
            .map(|slot| usize::from(self.slots[usize::from(slot)]));
        Ok(owner.map(|node| self.nodes[node].endpoint_ref().clone()))
    }

    /// The slots master `node` serves and is not migrating away, in its own view
    /// (`CLUSTER NODES`); `None` if `node` is not a master of the current slot map.
    ///
    /// # Errors
    /// The node cannot be reached or answers something else than `CLUSTER NODES` text.
    pub fn stable_slots(&mut self, node: &Endpoint) -> Result<Option<SlotSet>, TaskError> {
        let Some(index) = self.master_index(node) else {
            return Ok(None);
        };
        let client = &mut self.nodes[index];
        let reply = client.command(&[b"CLUSTER", b"NODES"], Retry::Idempotent)?;
        let text = match &reply {
            Reply::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
            Reply::Error(message) => return Err(server_error(message.clone(), &self.url)),
            _ => None,
        };
        let Some(text) = text else {
            return Err(client.unexpected_reply("CLUSTER NODES", &reply));
        };
        stable_own_slots(text).map(Some).map_err(|why| {
            TaskError::protocol(format!(
                "bad CLUSTER NODES reply from Redis at {node}: {why}"
            ))
        })
    }

    /// `SCAN` on master `node`; `None` if it is no longer a master of the current slot map
    /// (a listing never dials an address that only a cursor names).
    ///
    /// # Errors
    /// As [`Client::scan`].
    pub fn scan_node(
        &mut self,
        node: &Endpoint,
        cursor: u64,
        pattern: &[u8],
        count: u32,
    ) -> Result<Option<ScanBatch>, TaskError> {
        match self.master_index(node) {
            Some(index) => self.nodes[index].scan(cursor, pattern, count).map(Some),
            None => Ok(None),
        }
    }

    fn master_index(&self, node: &Endpoint) -> Option<usize> {
        self.masters
            .iter()
            .copied()
            .find(|&index| self.nodes[index].endpoint_ref() == node)
    }

    /// The error an error reply stands for.
    pub fn reply_error(&self, message: String) -> TaskError {
        server_error(message, &self.url)
    }

    /// A reply of the wrong shape for `command`, as a protocol error.
    pub fn unexpected_reply(&self, command: &str, reply: &Reply) -> TaskError {
        TaskError::protocol(format!(
            "unexpected {} reply to {command} from the Redis cluster at {}",
            reply_kind(reply),
            self.url.endpoint
        ))
    }

    /// The addresses of the nodes currently serving slots, sorted.
    pub fn master_endpoints(&self) -> Vec<Endpoint> {
        self.masters
            .iter()
            .map(|&index| self.nodes[index].endpoint_ref().clone())
            .collect()
    }

    /// Where `redirect` sends the next attempt, and whether in `ASKING` mode. `MOVED` also
    /// refreshes the map, which is likely stale as a whole (slots move in batches); should
    /// no node answer, the redirect alone still fixes its slot.
    fn follow(&mut self, redirect: &Redirect) -> Result<(usize, bool), TaskError> {
        let target = self.node_index(&redirect.target)?;
        match redirect.kind {
            RedirectKind::Moved => {
                let _ = self.refresh();
                self.slots[usize::from(redirect.slot)] = target as u16;
                Ok((target, false))
            }
            RedirectKind::Ask => Ok((target, true)),
        }
    }

    /// The node serving `slot`, loading the map if the slot is unknown.
    fn route(&mut self, slot: u16) -> Result<usize, TaskError> {
        if self.slots[usize::from(slot)] == NO_NODE {
            self.refresh()?;
        }
        match self.slots[usize::from(slot)] {
            NO_NODE => Err(TaskError::server(format!(
                "CLUSTERDOWN no node of the Redis cluster serves hash slot {slot}"
            ))),
            node => Ok(usize::from(node)),
        }
    }

    /// The index of the node at `endpoint`, adding a (not yet connected) client for it.
    fn node_index(&mut self, endpoint: &Endpoint) -> Result<usize, TaskError> {
        if let Some(index) = self.nodes.iter().position(|n| n.endpoint_ref() == endpoint) {
            return Ok(index);
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(TaskError::protocol(format!(
                "the Redis cluster named more than {MAX_NODES} nodes"
            )));
        }
        self.nodes.push(Client::new(
            self.connector.clone(),
            self.url.for_node(endpoint.clone()),
            self.timeout,
            self.max_value_bytes,
        ));
        Ok(self.nodes.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{FakeConnector, Step};
    use crate::transport::IoError;

    /// A scripted cluster where every connection, to whichever node, follows one shared
    /// script; tests check which endpoints were dialled through `connects`.
    fn cluster(
        connections: Vec<Result<Vec<Step>, IoError>>,
    ) -> (ClusterClient<FakeConnector>, FakeConnector) {
        let connector = FakeConnector::default();
        connector.0.borrow_mut().connections = connections.into();
        let url = RedisUrl::parse("redis+cluster://127.0.0.1:7000").unwrap();
        (
            ClusterClient::new(connector.clone(), url, Duration::from_secs(1), 1024),
            connector,
        )
    }

    /// `CLUSTER SLOTS`: slots 0-8000 on :7000, 8001-16383 on :7001.
    const SLOTS: &[u8] = b"*2\r\n*3\r\n:0\r\n:8000\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n*3\r\n:8001\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n";
    const PONG: Step = Step::Reply(b"+PONG\r\n");

    #[test]
    fn loads_the_map_and_sorts_masters() {
        let (mut client, _) = cluster(vec![Ok(vec![PONG, Step::Reply(SLOTS)])]);
        client.connect().unwrap();
        assert_eq!(client.master_count(), 2);
        assert_eq!(client.master_endpoints()[1].port, 7001);
        // "foo" is slot 12182: the second master.
        assert_eq!(client.route(key_slot(b"foo")).unwrap(), client.masters[1]);
    }

    #[test]
    fn moved_refreshes_and_runs_again_on_the_new_owner() {
        let (mut client, connector) = cluster(vec![
            // The seed (:7000): map, then MOVED for "bar" (slot 5061), then the refresh.
            Ok(vec![
                PONG,
                Step::Reply(SLOTS),
                Step::Reply(b"-MOVED 5061 127.0.0.1:7001\r\n"),
                Step::Reply(SLOTS),
            ]),
            // :7001, dialled for the retry.
            Ok(vec![PONG, Step::Reply(b"$2\r\n{}\r\n")]),
        ]);
        client.connect().unwrap();
        let value = client.on_key(b"bar", |c| c.get(b"bar")).unwrap();
        assert_eq!(value, Some(b"{}".to_vec()));
        assert_eq!(connector.0.borrow().connects, 2);
        assert_eq!(client.route(5061).unwrap(), client.masters[1]);
    }

    #[test]
    fn ask_sends_asking_on_the_target_and_keeps_the_map() {
        let (mut client, connector) = cluster(vec![
            Ok(vec![
                PONG,
                Step::Reply(SLOTS),
                Step::Reply(b"-ASK 5061 127.0.0.1:7001\r\n"),
            ]),
            Ok(vec![PONG, Step::Reply(b"+OK\r\n$-1\r\n")]),
        ]);
        client.connect().unwrap();
        assert_eq!(client.on_key(b"bar", |c| c.get(b"bar")).unwrap(), None);
        let sent = connector.0.borrow().sent.clone();
        assert!(sent.last().unwrap().starts_with(b"*1\r\n$6\r\nASKING\r\n"));
        assert_eq!(client.route(5061).unwrap(), client.masters[0]);
    }

    #[test]
    fn endless_redirects_end_in_an_error() {
        let mut steps = vec![
            PONG,
            Step::Reply(SLOTS),
            Step::Reply(b"-ASK 5061 127.0.0.1:7000\r\n"),
        ];
        for _ in 0..MAX_REDIRECTS {
            steps.push(Step::Reply(b"+OK\r\n-ASK 5061 127.0.0.1:7000\r\n"));
        }
        let (mut client, _) = cluster(vec![Ok(steps)]);
        client.connect().unwrap();
        let err = client.on_key(b"bar", |c| c.get(b"bar")).unwrap_err();
        assert!(
            err.kind() == ErrorKind::Server && err.message().contains("redirects"),
            "{err:?}"
        );
    }

    #[test]
    fn batch_reassembles_in_input_order_and_resends_redirected_items() {
        let (mut client, _) = cluster(vec![
            Ok(vec![
                PONG,
                Step::Reply(SLOTS),
                // :7000 gets "bar" (5061) and "baz" (4813): one is redirected by ASK.
                Step::Reply(b"$1\r\nb\r\n-ASK 4813 127.0.0.1:7001\r\n"),
            ]),
            // :7001: "foo" (12182), then the ASKING'd "baz".
            Ok(vec![
                PONG,
                Step::Reply(b"$1\r\nf\r\n"),
                Step::Reply(b"+OK\r\n$1\r\nz\r\n"),
            ]),
        ]);
        client.connect().unwrap();
        assert_eq!(key_slot(b"baz"), 4813);
        let keys: [&[u8]; 3] = [b"foo", b"bar", b"baz"];
        let commands: Vec<[&[u8]; 2]> = keys.iter().map(|k| [b"GET" as &[u8], k]).collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        let replies = client.batch(&keys, &commands, Retry::Idempotent).unwrap();
        let bulk = |s: &[u8]| Reply::BulkString(s.to_vec());
        assert_eq!(replies, vec![bulk(b"f"), bulk(b"b"), bulk(b"z")]);
    }

    #[test]
    fn a_listing_never_scans_a_node_that_is_not_a_master() {
        let (mut client, connector) = cluster(vec![Ok(vec![PONG, Step::Reply(SLOTS)])]);
        client.connect().unwrap();
        let stranger = Endpoint {
            host: "10.9.9.9".into(),
            port: 7000,
        };
        assert_eq!(client.scan_node(&stranger, 0, b"*", 10).unwrap(), None);
        assert_eq!(client.stable_slots(&stranger).unwrap(), None);
        assert_eq!(connector.0.borrow().connects, 1);
    }

    #[test]
    fn wrong_password_stops_the_refresh_at_once() {
        let (mut client, _) = cluster(vec![Ok(vec![Step::Reply(
            b"-WRONGPASS invalid username-password pair\r\n",
        )])]);
        let url = RedisUrl::parse("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001").unwrap();
        client.url = url;
        assert_eq!(
            client.connect().unwrap_err().kind(),
            ErrorKind::Authentication
        );
    }
}
