//! What the store talks to: one Redis server, a Redis Cluster, or the master Redis
//! Sentinel names, behind one small surface, so task semantics are written once.
//!
//! A component built without the `topologies` feature (the plain `taskstore.wasm`) has no
//! cluster or Sentinel client: their variants hold the uninhabited stand-ins of [`absent`],
//! so every arm that reaches them compiles to nothing and the clients' code is not linked.
//! Such URLs never get here: `StoreSettings::from_options` refuses them in that build.

use std::time::Duration;

use crate::client::{Client, Retry, ScanBatch};
use crate::cluster::{ListCursor, NodeScan, MAX_SCAN_ROUNDS};
#[cfg(any(feature = "topologies", not(target_arch = "wasm32")))]
use crate::cluster_client::ClusterClient;
use crate::config::RedisUrl;
use crate::resp::Reply;
#[cfg(any(feature = "topologies", not(target_arch = "wasm32")))]
use crate::sentinel::SentinelClient;
use crate::transport::{Connector, Endpoint};
use crate::TaskError;
#[cfg(not(any(feature = "topologies", not(target_arch = "wasm32"))))]
use absent::{ClusterClient, SentinelClient};

pub enum Backend<C: Connector + Clone> {
    Single(Client<C>),
    Cluster(ClusterClient<C>),
    Sentinel(SentinelClient<C>),
}

impl<C: Connector + Clone> Backend<C> {
    /// A cluster client for a `redis+cluster://` URL, a Sentinel client for
    /// `redis+sentinel://`, a single-server client otherwise.
    pub fn new(connector: C, url: RedisUrl, timeout: Duration, max_value_bytes: usize) -> Self {
        #[cfg(any(feature = "topologies", not(target_arch = "wasm32")))]
        {
            if url.is_sentinel() {
                return Backend::Sentinel(SentinelClient::new(
                    connector,
                    url,
                    timeout,
                    max_value_bytes,
                ));
            }
            if url.is_cluster() {
                return Backend::Cluster(ClusterClient::new(
                    connector,
                    url,
                    timeout,
                    max_value_bytes,
                ));
            }
        }
        Backend::Single(Client::new(connector, url, timeout, max_value_bytes))
    }

    /// Connects and authenticates now (for a cluster: to a seed, loading the slot map).
    pub fn connect(&mut self) -> Result<(), TaskError> {
        match self {
            Backend::Single(client) => client.connect(),
            Backend::Cluster(cluster) => cluster.connect(),
            Backend::Sentinel(sentinel) => sentinel.connect(),
        }
    }

    /// Runs `op` on the connection that serves `key` (see [`ClusterClient::on_key`]).
    pub fn on_key<T>(
        &mut self,
        key: &[u8],
        op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        match self {
            Backend::Single(client) => {
                let mut op = op;
                op(client)
            }
            Backend::Cluster(cluster) => cluster.on_key(key, op),
            Backend::Sentinel(sentinel) => sentinel.on_key(op),
        }
    }

    /// `commands[i]` is about `keys[i]`; all are sent pipelined (one round trip per node),
    /// replies in input order, error replies per item.
    pub fn batch(
        &mut self,
        keys: &[&[u8]],
        commands: &[&[&[u8]]],
        retry: Retry,
    ) -> Result<Vec<Reply>, TaskError> {
        match self {
            Backend::Single(client) => client.pipeline(commands, retry),
            Backend::Cluster(cluster) => cluster.batch(keys, commands, retry),
            Backend::Sentinel(sentinel) => {
                sentinel.on_key(|client| client.pipeline(commands, retry))
            }
        }
    }

    /// The values of `keys` (`None` where absent): one `MGET` on a single server; on a
    /// cluster, whose `MGET` cannot span slots, pipelined `GET`s per node.
    pub fn get_many(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TaskError> {
        let cluster = match self {
            Backend::Single(client) => return client.get_many(keys),
            Backend::Sentinel(sentinel) => return sentinel.on_key(|client| client.get_many(keys)),
            Backend::Cluster(cluster) => cluster,
        };
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let commands: Vec<[&[u8]; 2]> = key_refs.iter().map(|key| [b"GET" as &[u8], key]).collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        cluster
            .batch(&key_refs, &commands, Retry::Idempotent)?
            .into_iter()
            .map(|reply| match reply {
                Reply::BulkString(bytes) => Ok(Some(bytes)),
                Reply::Null => Ok(None),
                Reply::Error(message) => Err(cluster.reply_error(message)),
                other => Err(cluster.unexpected_reply("GET", &other)),
            })
            .collect()
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// The cluster client, for what only a cluster has (slot ownership); `None` for one
    /// server.
    pub fn cluster(&mut self) -> Option<&mut ClusterClient<C>> {
        match self {
            Backend::Single(_) | Backend::Sentinel(_) => None,
            Backend::Cluster(cluster) => Some(cluster),
        }
    }

    /// `SCAN` on the server, or on cluster master `node` (see [`ClusterClient::scan_node`]);
    /// `None` when there is no such master (or no `node` on a cluster).
    pub fn scan(
        &mut self,
        node: Option<&Endpoint>,
        cursor: u64,
        pattern: &[u8],
        count: u32,
    ) -> Result<Option<ScanBatch>, TaskError> {
        match (self, node) {
            (Backend::Single(client), _) => client.scan(cursor, pattern, count).map(Some),
            (Backend::Sentinel(sentinel), _) => sentinel
                .on_key(|client| client.scan(cursor, pattern, count))
                .map(Some),
            (Backend::Cluster(cluster), Some(node)) => {
                cluster.scan_node(node, cursor, pattern, count)
            }
            (Backend::Cluster(_), None) => Ok(None),
        }
    }

    /// One step of a listing's uninterrupted `SCAN` iteration, where `cursor` points: one
    /// `SCAN` call, its keys returned (`Some`, possibly empty), and `cursor` moved past it;
    /// on a cluster, starting or finishing a master's scan as needed (the rule is
    /// [`ListCursor`]'s). `None` once the listing is over. The task listing and the
    /// key-value listing both walk their keyspace with it.
    pub fn scan_step(
        &mut self,
        cursor: &mut ListCursor,
        pattern: &[u8],
        count: u32,
    ) -> Result<Option<Vec<Vec<u8>>>, TaskError> {
        let Some(cluster) = self.cluster() else {
            let Some(position) = cursor.position else {
                return Ok(None);
            };
            let (next, keys) = self
                .scan(None, position, pattern, count)?
                .unwrap_or_default();
            cursor.position = (next != 0).then_some(next);
            return Ok(Some(keys));
        };
        if cursor.node_scan.is_none() {
            let limit = MAX_SCAN_ROUNDS * cluster.master_count().max(1) as u32;
            if cursor.node_scans >= limit {
                return Err(TaskError::server(format!(
                    "TRYAGAIN hash slots kept migrating: the listing scanned {limit} masters without seeing every slot settled; list again from the start"
                )));
            }
            let Some(node) = cluster.next_uncovered_master(&cursor.covered)? else {
                return Ok(None);
            };
            cursor.node_scans += 1;
            if let Some(owned_before) = cluster.stable_slots(&node)? {
                cursor.node_scan = Some(NodeScan {
                    node,
                    position: 0,
                    owned_before,
                });
            }
            return Ok(Some(Vec::new()));
        }
        let Some(scan) = cursor.node_scan.as_mut() else {
            return Ok(Some(Vec::new()));
        };
        let Some((next, keys)) = self.scan(Some(&scan.node), scan.position, pattern, count)? else {
            // No longer a master (failed over, removed): its slots stay uncovered and are
            // scanned again where they live now.
            cursor.node_scan = None;
            return Ok(Some(Vec::new()));
        };
        scan.position = next;
        if next == 0 {
            let owned_after = match self.cluster() {
                Some(cluster) => cluster.stable_slots(&scan.node)?,
                None => None,
            };
            if let Some(owned_after) = owned_after {
                cursor
                    .covered
                    .add_intersection(&scan.owned_before, &owned_after);
            }
            cursor.node_scan = None;
        }
        Ok(Some(keys))
    }

    /// The length of each of `keys`' values (`STRLEN`, pipelined; per node on a cluster):
    /// 0 where absent or not a string.
    pub fn string_lengths(&mut self, keys: &[Vec<u8>]) -> Result<Vec<usize>, TaskError> {
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let commands: Vec<[&[u8]; 2]> = key_refs
            .iter()
            .map(|key| [b"STRLEN" as &[u8], key])
            .collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        self.batch(&key_refs, &commands, Retry::Idempotent)?
            .into_iter()
            .map(|reply| match reply {
                Reply::Integer(length) => Ok(usize::try_from(length).unwrap_or(0)),
                // WRONGTYPE: a key that changed type since SCAN; MGET will read it as absent.
                Reply::Error(_) => Ok(0),
                other => Err(self.unexpected_reply("STRLEN", &other)),
            })
            .collect()
    }

    /// The error an error reply stands for.
    pub fn reply_error(&self, message: String) -> TaskError {
        match self {
            Backend::Single(client) => client.reply_error(message),
            Backend::Cluster(cluster) => cluster.reply_error(message),
            Backend::Sentinel(sentinel) => sentinel.reply_error(message),
        }
    }

    /// A reply of the wrong shape for `command`, as a protocol error.
    pub fn unexpected_reply(&self, command: &str, reply: &Reply) -> TaskError {
        match self {
            Backend::Single(client) => client.unexpected_reply(command, reply),
            Backend::Cluster(cluster) => cluster.unexpected_reply(command, reply),
            Backend::Sentinel(sentinel) => sentinel.unexpected_reply(command, reply),
        }
    }
}

/// The cluster and Sentinel clients of a build without them: types with no values, with the
/// methods [`Backend`] calls, so it is written once for every build.
#[cfg(not(any(feature = "topologies", not(target_arch = "wasm32"))))]
mod absent {
    use std::convert::Infallible;
    use std::marker::PhantomData;

    use crate::client::{Client, Retry, ScanBatch};
    use crate::cluster::SlotSet;
    use crate::resp::Reply;
    use crate::transport::Endpoint;
    use crate::TaskError;

    pub struct ClusterClient<C>(Infallible, PhantomData<C>);

    impl<C> ClusterClient<C> {
        pub fn connect(&mut self) -> Result<(), TaskError> {
            match self.0 {}
        }

        pub fn on_key<T>(
            &mut self,
            _key: &[u8],
            _op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
        ) -> Result<T, TaskError> {
            match self.0 {}
        }

        pub fn batch(
            &mut self,
            _keys: &[&[u8]],
            _commands: &[&[&[u8]]],
            _retry: Retry,
        ) -> Result<Vec<Reply>, TaskError> {
            match self.0 {}
        }

        pub fn master_count(&self) -> usize {
            match self.0 {}
        }

        pub fn next_uncovered_master(
            &mut self,
            _covered: &SlotSet,
        ) -> Result<Option<Endpoint>, TaskError> {
            match self.0 {}
        }

        pub fn stable_slots(&mut self, _node: &Endpoint) -> Result<Option<SlotSet>, TaskError> {
            match self.0 {}
        }

        pub fn scan_node(
            &mut self,
            _node: &Endpoint,
            _cursor: u64,
            _pattern: &[u8],
            _count: u32,
        ) -> Result<Option<ScanBatch>, TaskError> {
            match self.0 {}
        }

        pub fn reply_error(&self, _message: String) -> TaskError {
            match self.0 {}
        }

        pub fn unexpected_reply(&self, _command: &str, _reply: &Reply) -> TaskError {
            match self.0 {}
        }
    }

    pub struct SentinelClient<C>(Infallible, PhantomData<C>);

    impl<C> SentinelClient<C> {
        pub fn connect(&mut self) -> Result<(), TaskError> {
            match self.0 {}
        }

        pub fn on_key<T>(
            &mut self,
            _op: impl FnMut(&mut Client<C>) -> Result<T, TaskError>,
        ) -> Result<T, TaskError> {
            match self.0 {}
        }

        pub fn reply_error(&self, _message: String) -> TaskError {
            match self.0 {}
        }

        pub fn unexpected_reply(&self, _command: &str, _reply: &Reply) -> TaskError {
            match self.0 {}
        }
    }
}
