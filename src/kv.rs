//! `wasi:keyvalue` semantics on Redis, written once for both WIT versions the key-value
//! component (`kv/`) exports (`@0.2.0-draft2` and `@0.2.0-draft`), over the same
//! [`Backend`] the task store uses: one server, a cluster or a Sentinel master, with or
//! without TLS. Pure of bindings, so every rule here is unit-tested natively.
//!
//! - A bucket is a key namespace: every key of bucket `b` is stored as `<prefix><key>`, the
//!   prefix coming from [`BucketMap`] (by default `<identifier>:`).
//! - Values are bytes, stored as Redis strings verbatim; `get`/`set`/`delete`/`exists` are one
//!   command each.
//! - `increment` is `INCRBY`; overflow and a value that is no decimal integer are
//!   `invalid-input` errors that leave the value unchanged (Redis refuses both).
//! - `swap` is an optimistic transaction: `WATCH` + `GET`, compare with what the CAS handle
//!   read, then `MULTI` / `SET` / `EXEC`. Any write to the key between the `WATCH` and the
//!   `EXEC` aborts the `EXEC` ([`CasOutcome::Failed`]): a failed swap never overwrites a
//!   concurrent write.
//! - `list-keys` is `SCAN … MATCH <prefix>*`, every key of each `SCAN` call returned in the
//!   same page, so a listing is one uninterrupted `SCAN` iteration per server (per master on a
//!   cluster, with [`ListCursor`]'s slot bookkeeping): a key present for the whole listing
//!   is listed (at least once).
//! - `get-many` / `set-many` / `delete-many` are pipelined: one round trip, per node on a
//!   cluster.

use std::collections::VecDeque;

use crate::backend::Backend;
use crate::client::{exec_watched_write, expect_ok, protocol_error, Client, Retry};
use crate::cluster::ListCursor;
use crate::config::{Credentials, Secret, StoreOptions, StoreSettings};
use crate::resp::Reply;
use crate::transport::Connector;
use crate::{RedisErrorCode, TaskError};

/// `wasi:config` key: the Redis URL (as the task store's `url`; required).
pub const REDIS_URL: &str = "redis-url";
/// `wasi:config` key: the password, kept apart from the URL (optional).
pub const REDIS_PASSWORD: &str = "redis-password";
/// `wasi:config` key: the ACL user name, with `redis-password` (optional).
pub const REDIS_USERNAME: &str = "redis-username";
/// `wasi:config` key: PEM CA certificate(s) for `rediss://`.
pub const TLS_CA_CERTIFICATES: &str = "tls-ca-certificates";
/// `wasi:config` key: `true` to skip certificate verification (development only).
pub const DANGER_ACCEPT_INVALID_CERTIFICATES: &str = "danger-accept-invalid-certificates";
/// `wasi:config` key: deadline of each connect and command, in milliseconds.
pub const TIMEOUT_MS: &str = "timeout-ms";
/// `wasi:config` key: largest value accepted and returned, in bytes.
pub const MAX_VALUE_BYTES: &str = "max-value-bytes";
/// `wasi:config` key: which buckets `open` accepts (see [`BucketMap::parse`]).
pub const BUCKETS: &str = "buckets";

/// The bucket a component may open when `buckets` is not configured.
pub const DEFAULT_BUCKET: &str = "default";

/// Most keys one `SCAN` call asks for.
const KEYS_PER_SCAN: u32 = 1000;
/// `SCAN` calls one `list-keys` makes at most while they find no key, so a sparse bucket in
/// a large keyspace answers with an empty page (and a cursor) rather than holding the call.
const MAX_SCANS_PER_PAGE: usize = 64;
/// Most keys of one batch call.
pub const MAX_BATCH: usize = 10_000;
/// Draft (`u64`) cursors of a cluster listing remembered per instance.
const MAX_DRAFT_CURSORS: usize = 256;

/// Which bucket identifiers `open` accepts and the key prefix of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketMap {
    entries: Vec<(String, String)>,
    /// `*` was listed: any other identifier opens with the prefix `<identifier>:`.
    any: bool,
}

impl BucketMap {
    /// Parses `buckets`: comma-separated entries, each `name` (prefix `name:`),
    /// `name=prefix` (that prefix verbatim, possibly empty), or `*` (any identifier, prefix
    /// `<identifier>:`). Unset: [`DEFAULT_BUCKET`] only.
    pub fn parse(text: Option<&str>) -> Result<BucketMap, String> {
        let Some(text) = text else {
            return Ok(BucketMap {
                entries: vec![(DEFAULT_BUCKET.to_owned(), format!("{DEFAULT_BUCKET}:"))],
                any: false,
            });
        };
        let mut map = BucketMap {
            entries: Vec::new(),
            any: false,
        };
        for entry in text.split(',').map(str::trim) {
            if entry == "*" {
                map.any = true;
                continue;
            }
            let (name, prefix) = match entry.split_once('=') {
                Some((name, prefix)) => (name.trim(), prefix.to_owned()),
                None => (entry, format!("{entry}:")),
            };
            if name.is_empty() {
                return Err(format!(
                    "{BUCKETS} has an empty bucket name (entries are name, name=prefix or *)"
                ));
            }
            if map.entries.iter().any(|(known, _)| known == name) {
                return Err(format!("{BUCKETS} names bucket \"{name}\" twice"));
            }
            map.entries.push((name.to_owned(), prefix));
        }
        Ok(map)
    }

    /// The key prefix of bucket `identifier`, or `None` if it may not be opened.
    pub fn prefix(&self, identifier: &str) -> Option<Vec<u8>> {
        if let Some((_, prefix)) = self.entries.iter().find(|(name, _)| name == identifier) {
            return Some(prefix.as_bytes().to_vec());
        }
        (self.any && !identifier.is_empty()).then(|| format!("{identifier}:").into_bytes())
    }
}

/// The key-value component's configuration, read from `wasi:config/store`.
#[derive(Debug, Clone)]
pub struct KvConfig {
    pub settings: StoreSettings,
    pub buckets: BucketMap,
}

impl KvConfig {
    /// Reads the keys above through `lookup`. Messages name keys, never values: the URL or
    /// the password may be a secret.
    pub fn load(
        lookup: impl Fn(&str) -> Result<Option<String>, String>,
    ) -> Result<KvConfig, TaskError> {
        let get = |key: &str| lookup(key).map_err(TaskError::invalid_input);
        let url = get(REDIS_URL)?.ok_or_else(|| {
            TaskError::invalid_input(format!("no {REDIS_URL} is configured (wasi:config)"))
        })?;
        let number =
            |key: &str| -> Result<Option<u32>, TaskError> {
                match get(key)? {
                    None => Ok(None),
                    Some(text) => text.trim().parse().map(Some).map_err(|_| {
                        TaskError::invalid_input(format!("{key} is not a whole number"))
                    }),
                }
            };
        let danger = match get(DANGER_ACCEPT_INVALID_CERTIFICATES)?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(TaskError::invalid_input(format!(
                    "{DANGER_ACCEPT_INVALID_CERTIFICATES} must be true or false"
                )))
            }
        };
        let options = StoreOptions {
            url,
            timeout_ms: number(TIMEOUT_MS)?,
            max_document_bytes: number(MAX_VALUE_BYTES)?,
            tls_ca_certificates: get(TLS_CA_CERTIFICATES)?,
            danger_accept_invalid_certificates: danger,
            ..StoreOptions::default()
        };
        let mut settings = StoreSettings::from_options(&options).map_err(|e| {
            TaskError::invalid_input(e.0.replace("maximum document size", MAX_VALUE_BYTES))
        })?;
        let username = get(REDIS_USERNAME)?.filter(|name| !name.is_empty());
        let password = get(REDIS_PASSWORD)?.filter(|password| !password.is_empty());
        if username.is_some() || password.is_some() {
            if settings.redis.credentials.is_some() {
                return Err(TaskError::invalid_input(format!(
                    "credentials are given twice, in {REDIS_URL} and in {REDIS_USERNAME} / \
                     {REDIS_PASSWORD}; give them in one place"
                )));
            }
            let password = password.ok_or_else(|| {
                TaskError::invalid_input(format!("{REDIS_USERNAME} needs {REDIS_PASSWORD}"))
            })?;
            settings.redis.credentials = Some(Credentials {
                username,
                password: Secret::new(password),
            });
        }
        let buckets =
            BucketMap::parse(get(BUCKETS)?.as_deref()).map_err(TaskError::invalid_input)?;
        Ok(KvConfig { settings, buckets })
    }

    /// Texts no message may show: the password (in the URL or apart from it).
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        if let Some(credentials) = &self.settings.redis.credentials {
            secrets.push(credentials.password.expose().to_owned());
        }
        if let Some(sentinel) = &self.settings.redis.sentinel {
            if let Some(credentials) = &sentinel.credentials {
                secrets.push(credentials.password.expose().to_owned());
            }
        }
        secrets
    }
}

/// What a `swap` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was still the one the handle read; the new one is written.
    Swapped,
    /// The key changed since the handle read it (or during the swap): nothing was written.
    /// Its value now (`None`: absent), for the handle of a retry.
    Failed(Option<Vec<u8>>),
}

/// One page of `list-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys without the bucket's prefix. Keys that are not UTF-8 (no `wasi:keyvalue` client
    /// could have written them) are left out.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` once the listing is over.
    pub cursor: Option<String>,
}

/// A Redis connection with key-value semantics; buckets are prefixes passed per call.
pub struct KvStore<C: Connector + Clone> {
    redis: Backend<C>,
    max_value_bytes: usize,
}

impl<C: Connector + Clone> KvStore<C> {
    /// Connects and authenticates now, so a wrong URL or password shows at `open`.
    pub fn open(settings: StoreSettings, connector: C) -> Result<KvStore<C>, TaskError> {
        let mut redis = Backend::new(
            connector,
            settings.redis,
            settings.timeout,
            settings.max_document_bytes,
        );
        redis.connect()?;
        Ok(KvStore {
            redis,
            max_value_bytes: settings.max_document_bytes,
        })
    }

    /// Whether this is a Redis Cluster (draft cursors depend on it).
    pub fn is_cluster(&self) -> bool {
        self.redis.is_cluster()
    }

    /// `GET`.
    pub fn get(&mut self, prefix: &[u8], key: &str) -> Result<Option<Vec<u8>>, TaskError> {
        let key = full_key(prefix, key);
        self.redis.on_key(&key, |client| client.get(&key))
    }

    /// `SET` (no expiry).
    pub fn set(&mut self, prefix: &[u8], key: &str, value: &[u8]) -> Result<(), TaskError> {
        self.check_value(value)?;
        let key = full_key(prefix, key);
        self.redis.on_key(&key, |client| {
            match client.command(&[b"SET", &key, value], Retry::Idempotent)? {
                Reply::SimpleString(ok) if ok == b"OK" => Ok(()),
                other => Err(client.unexpected_reply("SET", &other)),
            }
        })
    }

    /// `DEL`; deleting an absent key is no error.
    pub fn delete(&mut self, prefix: &[u8], key: &str) -> Result<(), TaskError> {
        let key = full_key(prefix, key);
        self.redis.on_key(&key, |client| client.delete(&key))?;
        Ok(())
    }

    /// `EXISTS`.
    pub fn exists(&mut self, prefix: &[u8], key: &str) -> Result<bool, TaskError> {
        let key = full_key(prefix, key);
        self.redis.on_key(&key, |client| client.exists(&key))
    }

    /// `INCRBY key delta`: the new value. An absent key counts as 0. Never resent after a
    /// connection failure (a second application would count twice).
    pub fn increment(&mut self, prefix: &[u8], key: &str, delta: i64) -> Result<i64, TaskError> {
        let key = full_key(prefix, key);
        let mut delta_text = Vec::with_capacity(20);
        delta_text.extend_from_slice(delta.to_string().as_bytes());
        let reply = self.redis.on_key(&key, |client| {
            client.command(&[b"INCRBY", &key, &delta_text], Retry::Never)
        });
        match reply {
            Ok(Reply::Integer(value)) => Ok(value),
            Ok(other) => Err(self.redis.unexpected_reply("INCRBY", &other)),
            Err(err) => Err(increment_error(err, delta)),
        }
    }

    /// The `@0.2.0-draft` increment: an unsigned delta and result. A delta over `i64::MAX`
    /// is refused before anything is sent; a result below zero (the value was negative) has
    /// been applied but cannot be returned, and says so.
    pub fn increment_unsigned(
        &mut self,
        prefix: &[u8],
        key: &str,
        delta: u64,
    ) -> Result<u64, TaskError> {
        let delta = i64::try_from(delta).map_err(|_| {
            TaskError::invalid_input(format!(
                "increment by {delta} is over the largest Redis counter step ({}); the value is unchanged",
                i64::MAX
            ))
        })?;
        let value = self.increment(prefix, key, delta)?;
        u64::try_from(value).map_err(|_| {
            TaskError::invalid_input(format!(
                "the increment applied, but the value is now {value}, below zero, which an \
                 unsigned (@0.2.0-draft) increment cannot return"
            ))
        })
    }

    /// Writes `value` if the key still holds `expected` (`None`: still absent). See the
    /// module docs for why a failed swap never loses a concurrent write.
    pub fn swap(
        &mut self,
        prefix: &[u8],
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<CasOutcome, TaskError> {
        self.check_value(value)?;
        let key = full_key(prefix, key);
        self.redis
            .on_key(&key, |client| swap_attempt(client, &key, expected, value))
    }

    /// One page of the keys of the bucket with `prefix`, from `cursor` (`None`: the start).
    pub fn list_keys(&mut self, prefix: &[u8], cursor: Option<&str>) -> Result<KeyPage, TaskError> {
        let cluster = self.redis.is_cluster();
        let mut cursor = match cursor {
            None => ListCursor::start(),
            Some(text) => ListCursor::parse(text, cluster)
                .filter(|cursor| cursor.pending.is_empty())
                .ok_or_else(|| {
                    TaskError::invalid_input(
                        "cursor is malformed: pass the cursor of the previous page, or none to start over",
                    )
                })?,
        };
        let pattern = glob_pattern(prefix);
        let mut keys = Vec::new();
        for _ in 0..MAX_SCANS_PER_PAGE {
            let Some(found) = self.redis.scan_step(&mut cursor, &pattern, KEYS_PER_SCAN)? else {
                return Ok(KeyPage {
                    keys: strip_prefix(prefix, keys),
                    cursor: None,
                });
            };
            keys.extend(found);
            if !keys.is_empty() {
                break;
            }
        }
        // A single server's scan that returned its last keys is over.
        let finished = !cluster && cursor.position.is_none();
        Ok(KeyPage {
            keys: strip_prefix(prefix, keys),
            cursor: (!finished).then(|| cursor.format(cluster)),
        })
    }

    /// The values of `keys` (`None` where absent), in order: one round trip (per node).
    pub fn get_many(
        &mut self,
        prefix: &[u8],
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, TaskError> {
        check_batch(keys.len())?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<Vec<u8>> = keys.iter().map(|key| full_key(prefix, key)).collect();
        self.redis.get_many(&full)
    }

    /// `SET` of each pair, pipelined (per node). Each `SET` is atomic; the batch is not.
    pub fn set_many(
        &mut self,
        prefix: &[u8],
        pairs: &[(String, Vec<u8>)],
    ) -> Result<(), TaskError> {
        check_batch(pairs.len())?;
        for (_, value) in pairs {
            self.check_value(value)?;
        }
        let keys: Vec<Vec<u8>> = pairs.iter().map(|(key, _)| full_key(prefix, key)).collect();
        let commands: Vec<[&[u8]; 3]> = keys
            .iter()
            .zip(pairs)
            .map(|(key, (_, value))| [b"SET" as &[u8], key, value])
            .collect();
        self.pipelined(&keys, &commands, "SET")
    }

    /// `DEL` of each key, pipelined (per node).
    pub fn delete_many(&mut self, prefix: &[u8], keys: &[String]) -> Result<(), TaskError> {
        check_batch(keys.len())?;
        let keys: Vec<Vec<u8>> = keys.iter().map(|key| full_key(prefix, key)).collect();
        let commands: Vec<[&[u8]; 2]> = keys.iter().map(|key| [b"DEL" as &[u8], key]).collect();
        self.pipelined(&keys, &commands, "DEL")
    }

    /// Sends `commands` (each about the key at the same index) pipelined; the first error
    /// reply fails the call (the other commands have applied).
    fn pipelined<const N: usize>(
        &mut self,
        keys: &[Vec<u8>],
        commands: &[[&[u8]; N]],
        name: &str,
    ) -> Result<(), TaskError> {
        if keys.is_empty() {
            return Ok(());
        }
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        for reply in self.redis.batch(&key_refs, &commands, Retry::Idempotent)? {
            match reply {
                Reply::SimpleString(_) | Reply::Integer(_) => {}
                Reply::Error(message) => return Err(self.redis.reply_error(message)),
                other => return Err(self.redis.unexpected_reply(name, &other)),
            }
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), TaskError> {
        if value.len() > self.max_value_bytes {
            return Err(TaskError::invalid_input(format!(
                "value of {} bytes is over the limit of {} ({MAX_VALUE_BYTES})",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

/// One `swap` on the connection serving `key`: `WATCH` + `GET`, compare, then `MULTI` /
/// `SET` / `EXEC`.
fn swap_attempt<C: Connector>(
    client: &mut Client<C>,
    key: &[u8],
    expected: Option<&[u8]>,
    value: &[u8],
) -> Result<CasOutcome, TaskError> {
    // Retrying WATCH + GET together on a fresh connection is safe: no write yet.
    let mut replies = client.pipeline(&[&[b"WATCH", key], &[b"GET", key]], Retry::Idempotent)?;
    let get = replies.pop();
    let watch = replies.pop();
    expect_ok(client, watch, "WATCH")?;
    let current = match get {
        Some(Reply::Null) => None,
        Some(Reply::BulkString(bytes)) => Some(bytes),
        Some(Reply::Error(message)) => {
            client.command(&[b"UNWATCH"], Retry::Never)?;
            return Err(client.reply_error(message));
        }
        other => return Err(protocol_error(client, "GET", other)),
    };
    if current.as_deref() != expected {
        client.command(&[b"UNWATCH"], Retry::Never)?;
        return Ok(CasOutcome::Failed(current));
    }
    if exec_watched_write(client, &[b"SET", key, value])? {
        Ok(CasOutcome::Swapped)
    } else {
        // Someone wrote the key after our WATCH: nothing written; the handle gets their value.
        Ok(CasOutcome::Failed(client.get(key)?))
    }
}

/// `INCRBY`'s two refusals in words a key-value caller understands; both leave the value
/// unchanged.
fn increment_error(err: TaskError, delta: i64) -> TaskError {
    if err.redis_code() != Some(RedisErrorCode::Other) {
        return err;
    }
    let message = err.message();
    if message.contains("overflow") {
        TaskError::invalid_input(format!(
            "incrementing by {delta} would overflow the signed 64-bit counter; the value is unchanged"
        ))
    } else if message.contains("not an integer") {
        TaskError::invalid_input(
            "the value is not a decimal integer (a counter is stored as its decimal text); the value is unchanged",
        )
    } else {
        err
    }
}

fn check_batch(len: usize) -> Result<(), TaskError> {
    if len > MAX_BATCH {
        return Err(TaskError::invalid_input(format!(
            "batch of {len} keys is too large; the limit is {MAX_BATCH}"
        )));
    }
    Ok(())
}

fn full_key(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut full = Vec::with_capacity(prefix.len() + key.len());
    full.extend_from_slice(prefix);
    full.extend_from_slice(key.as_bytes());
    full
}

fn strip_prefix(prefix: &[u8], keys: Vec<Vec<u8>>) -> Vec<String> {
    keys.into_iter()
        .filter_map(|key| String::from_utf8(key.strip_prefix(prefix)?.to_vec()).ok())
        .collect()
}

/// `prefix*` as a SCAN pattern, the prefix's glob characters taken literally.
fn glob_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &byte in prefix {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    pattern
}

/// `@0.2.0-draft`'s `list-keys` cursors are `u64`. On one server (or a Sentinel master) the
/// `SCAN` cursor itself is the draft cursor, valid in any instance. A cluster listing's
/// position (a master, its `SCAN` cursor and the slots done) does not fit in 64 bits: the
/// instance keeps the last [`MAX_DRAFT_CURSORS`] of them and hands out their numbers, valid
/// only in that instance (`@0.2.0-draft2`'s string cursors are valid everywhere).
#[derive(Debug, Default)]
pub struct DraftCursors {
    next: u64,
    remembered: VecDeque<(u64, String)>,
}

impl DraftCursors {
    /// The draft cursor for `cursor` (a [`KeyPage::cursor`]).
    pub fn to_draft(&mut self, cursor: Option<String>, cluster: bool) -> Option<u64> {
        let cursor = cursor?;
        if !cluster {
            // A one-server cursor of a listing under way is `s<SCAN cursor>`, never 0.
            if let Some(position) = ListCursor::parse(&cursor, false).and_then(|c| c.position) {
                return Some(position);
            }
        }
        self.next += 1;
        if self.remembered.len() == MAX_DRAFT_CURSORS {
            self.remembered.pop_front();
        }
        self.remembered.push_back((self.next, cursor));
        Some(self.next)
    }

    /// The cursor text a draft cursor stands for (`None`: the start).
    pub fn from_draft(
        &self,
        cursor: Option<u64>,
        cluster: bool,
    ) -> Result<Option<String>, TaskError> {
        // 0 starts a listing too, as in wasmtime's own implementation of the draft.
        let Some(number) = cursor.filter(|&number| number != 0) else {
            return Ok(None);
        };
        if !cluster {
            return Ok(Some(format!("s{number}")));
        }
        self.remembered
            .iter()
            .find(|(known, _)| *known == number)
            .map(|(_, text)| Some(text.clone()))
            .ok_or_else(|| {
                TaskError::invalid_input(format!(
                    "cursor {number} is unknown: on a Redis Cluster an @0.2.0-draft (u64) cursor \
                     is valid only in the instance that returned it, for its last \
                     {MAX_DRAFT_CURSORS} pages; list again, or use @0.2.0-draft2's string cursors"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{FakeConnector, Step};
    use crate::config::RedisUrl;
    use crate::transport::IoError;
    use crate::ErrorKind;
    use std::time::Duration;

    const PONG: Step = Step::Reply(b"+PONG\r\n");

    fn store_with(
        url: &str,
        connections: Vec<Result<Vec<Step>, IoError>>,
    ) -> (KvStore<FakeConnector>, FakeConnector) {
        let connector = FakeConnector::default();
        connector.0.borrow_mut().connections = connections.into();
        let settings = StoreSettings {
            redis: RedisUrl::parse(url).unwrap(),
            key_prefix: String::new(),
            default_ttl_seconds: 1,
            timeout: Duration::from_secs(1),
            max_document_bytes: 64,
            tls: None,
        };
        let store = KvStore::open(settings, connector.clone()).unwrap();
        (store, connector)
    }

    fn sent(connector: &FakeConnector, index: usize) -> String {
        String::from_utf8_lossy(&connector.0.borrow().sent[index]).into_owned()
    }

    #[test]
    fn buckets_default_named_mapped_and_any() {
        let default = BucketMap::parse(None).unwrap();
        assert_eq!(default.prefix("default"), Some(b"default:".to_vec()));
        assert_eq!(default.prefix("other"), None);
        let map = BucketMap::parse(Some("cache, app=myapp/, raw=")).unwrap();
        assert_eq!(map.prefix("cache"), Some(b"cache:".to_vec()));
        assert_eq!(map.prefix("app"), Some(b"myapp/".to_vec()));
        assert_eq!(map.prefix("raw"), Some(Vec::new()));
        assert_eq!(map.prefix("default"), None);
        let any = BucketMap::parse(Some("*,x=y")).unwrap();
        assert_eq!(any.prefix("x"), Some(b"y".to_vec()));
        assert_eq!(any.prefix("zz"), Some(b"zz:".to_vec()));
        assert_eq!(any.prefix(""), None);
        assert!(BucketMap::parse(Some("a,,b")).is_err());
        assert!(BucketMap::parse(Some("a,a=b")).is_err());
    }

    #[test]
    fn config_takes_the_password_apart_and_never_shows_it() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                Ok(pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned()))
            }
        };
        let config = KvConfig::load(vars(&[
            (REDIS_URL, "redis://127.0.0.1:6390"),
            (REDIS_USERNAME, "app"),
            (REDIS_PASSWORD, "hunter2"),
            (TIMEOUT_MS, "250"),
            (BUCKETS, "a,b=c"),
        ]))
        .unwrap();
        let credentials = config.settings.redis.credentials.as_ref().unwrap();
        assert_eq!(credentials.username.as_deref(), Some("app"));
        assert_eq!(credentials.password.expose(), "hunter2");
        assert_eq!(config.settings.timeout, Duration::from_millis(250));
        assert_eq!(config.secrets(), vec!["hunter2".to_owned()]);
        assert!(!format!("{config:?}").contains("hunter2"));

        let twice = KvConfig::load(vars(&[
            (REDIS_URL, "redis://:hunter2@127.0.0.1"),
            (REDIS_PASSWORD, "hunter2"),
        ]))
        .unwrap_err();
        assert!(twice.message().contains("twice") && !twice.message().contains("hunter2"));
        let no_password =
            KvConfig::load(vars(&[(REDIS_URL, "redis://h"), (REDIS_USERNAME, "u")])).unwrap_err();
        assert!(
            no_password.message().contains(REDIS_PASSWORD),
            "{no_password}"
        );
        let missing = KvConfig::load(vars(&[])).unwrap_err();
        assert!(missing.message().contains(REDIS_URL), "{missing}");
        let bad =
            KvConfig::load(vars(&[(REDIS_URL, "redis://h"), (MAX_VALUE_BYTES, "1")])).unwrap_err();
        assert!(bad.message().contains(MAX_VALUE_BYTES), "{bad}");
    }

    #[test]
    fn get_set_delete_exists_are_one_command_each_under_the_prefix() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(b"+OK\r\n"),
                Step::Reply(b"$3\r\n\x00\xff\r\r\n"),
                Step::Reply(b":1\r\n"),
                Step::Reply(b":0\r\n"),
                Step::Reply(b"$-1\r\n"),
            ])],
        );
        store.set(b"b:", "k", b"\x00\xff\r").unwrap();
        assert_eq!(store.get(b"b:", "k").unwrap(), Some(b"\x00\xff\r".to_vec()));
        assert!(store.exists(b"b:", "k").unwrap());
        store.delete(b"b:", "k").unwrap();
        assert_eq!(store.get(b"b:", "k").unwrap(), None);
        assert_eq!(
            connector.0.borrow().sent[1],
            b"*3\r\n$3\r\nSET\r\n$3\r\nb:k\r\n$3\r\n\x00\xff\r\r\n"
        );
        assert_eq!(sent(&connector, 3), "*2\r\n$6\r\nEXISTS\r\n$3\r\nb:k\r\n");
        assert_eq!(sent(&connector, 4), "*2\r\n$3\r\nDEL\r\n$3\r\nb:k\r\n");
    }

    #[test]
    fn a_value_over_the_limit_is_refused_before_sending() {
        let (mut store, connector) = store_with("redis://127.0.0.1", vec![Ok(vec![PONG])]);
        let err = store.set(b"b:", "k", &[0; 65]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(connector.0.borrow().sent.len(), 1);
    }

    #[test]
    fn increment_is_incrby_and_its_refusals_are_clear() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(b":-3\r\n"),
                Step::Reply(b"-ERR increment or decrement would overflow\r\n"),
                Step::Reply(b"-ERR value is not an integer or out of range\r\n"),
                Step::Reply(b":-1\r\n"),
            ])],
        );
        assert_eq!(store.increment(b"b:", "n", -3).unwrap(), -3);
        assert_eq!(
            sent(&connector, 1),
            "*3\r\n$6\r\nINCRBY\r\n$3\r\nb:n\r\n$2\r\n-3\r\n"
        );
        let overflow = store.increment(b"b:", "n", i64::MAX).unwrap_err();
        assert_eq!(overflow.kind(), ErrorKind::InvalidInput);
        assert!(overflow.message().contains("overflow"), "{overflow}");
        let text = store.increment(b"b:", "n", 1).unwrap_err();
        assert!(text.message().contains("not a decimal integer"), "{text}");
        let below_zero = store.increment_unsigned(b"b:", "n", 2).unwrap_err();
        assert!(below_zero.message().contains("below zero"), "{below_zero}");
        let too_big = store.increment_unsigned(b"b:", "n", u64::MAX).unwrap_err();
        assert_eq!(too_big.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            connector.0.borrow().sent.len(),
            5,
            "nothing sent for too_big"
        );
    }

    #[test]
    fn an_increment_is_never_resent_after_its_connection_died() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![
                Ok(vec![PONG, Step::Fail(IoError::Closed)]),
                Ok(vec![PONG, Step::Reply(b":1\r\n")]),
            ],
        );
        let err = store.increment(b"b:", "n", 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert_eq!(connector.0.borrow().connects, 1);
    }

    #[test]
    fn swap_writes_only_when_the_value_is_the_one_read() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                // Matches: WATCH + GET, then MULTI / SET / EXEC.
                Step::Reply(b"+OK\r\n$1\r\n1\r\n"),
                Step::Reply(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
                // Differs: UNWATCH, nothing written.
                Step::Reply(b"+OK\r\n$1\r\n2\r\n"),
                Step::Reply(b"+OK\r\n"),
                // Matches, but someone wrote between WATCH and EXEC: aborted, re-read.
                Step::Reply(b"+OK\r\n$-1\r\n"),
                Step::Reply(b"+OK\r\n+QUEUED\r\n*-1\r\n"),
                Step::Reply(b"$1\r\n9\r\n"),
            ])],
        );
        assert_eq!(
            store.swap(b"b:", "k", Some(b"1"), b"2").unwrap(),
            CasOutcome::Swapped
        );
        assert_eq!(
            store.swap(b"b:", "k", Some(b"1"), b"3").unwrap(),
            CasOutcome::Failed(Some(b"2".to_vec()))
        );
        assert_eq!(
            store.swap(b"b:", "k", None, b"4").unwrap(),
            CasOutcome::Failed(Some(b"9".to_vec()))
        );
        assert!(sent(&connector, 2).contains("MULTI") && sent(&connector, 2).contains("EXEC"));
        assert!(sent(&connector, 4).contains("UNWATCH"));
        assert_eq!(sent(&connector, 7), "*2\r\n$3\r\nGET\r\n$3\r\nb:k\r\n");
    }

    #[test]
    fn a_swap_whose_exec_connection_died_is_not_resent() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![
                Ok(vec![
                    PONG,
                    Step::Reply(b"+OK\r\n$1\r\n1\r\n"),
                    Step::Fail(IoError::Closed),
                ]),
                Ok(vec![PONG]),
            ],
        );
        let err = store.swap(b"b:", "k", Some(b"1"), b"2").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert_eq!(connector.0.borrow().connects, 1);
    }

    #[test]
    fn list_keys_returns_every_key_of_each_scan_call_and_escapes_the_prefix() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                // An empty call, then one with keys: the page ends after the keys.
                Step::Reply(b"*2\r\n$2\r\n17\r\n*0\r\n"),
                Step::Reply(b"*2\r\n$2\r\n33\r\n*2\r\n$3\r\nb*a\r\n$4\r\nb*\xffx\r\n"),
                Step::Reply(b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nb*c\r\n"),
            ])],
        );
        let page = store.list_keys(b"b*", None).unwrap();
        assert_eq!(page.keys, vec!["a".to_owned()], "non-UTF-8 key left out");
        assert_eq!(page.cursor.as_deref(), Some("s33"));
        assert!(
            sent(&connector, 1).contains("$4\r\nb\\**\r\n"),
            "{}",
            sent(&connector, 1)
        );
        let last = store.list_keys(b"b*", page.cursor.as_deref()).unwrap();
        assert_eq!(last.keys, vec!["c".to_owned()]);
        assert_eq!(last.cursor, None);
        assert!(sent(&connector, 3).contains("$2\r\n33\r\n"));
        let bad = store.list_keys(b"b*", Some("s1.p61")).unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn batches_are_one_round_trip_and_an_error_reply_fails_the_call() {
        let (mut store, connector) = store_with(
            "redis://127.0.0.1",
            vec![Ok(vec![
                PONG,
                Step::Reply(b"+OK\r\n+OK\r\n"),
                Step::Reply(b"*2\r\n$1\r\n1\r\n$-1\r\n"),
                Step::Reply(b":1\r\n:0\r\n"),
                Step::Reply(b"+OK\r\n-OOM command not allowed\r\n"),
            ])],
        );
        let pairs = vec![
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), Vec::new()),
        ];
        store.set_many(b"p:", &pairs).unwrap();
        let keys = vec!["a".to_owned(), "z".to_owned()];
        assert_eq!(
            store.get_many(b"p:", &keys).unwrap(),
            vec![Some(b"1".to_vec()), None]
        );
        store.delete_many(b"p:", &keys).unwrap();
        let err = store.set_many(b"p:", &pairs).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server);
        assert_eq!(connector.0.borrow().sent.len(), 5);
        assert!(sent(&connector, 2).starts_with("*3\r\n$4\r\nMGET\r\n$3\r\np:a"));
        assert!(store.get_many(b"p:", &[]).unwrap().is_empty());
        let too_many = vec![String::new(); MAX_BATCH + 1];
        assert_eq!(
            store.delete_many(b"p:", &too_many).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn draft_cursors_are_scan_cursors_on_one_server_and_remembered_on_a_cluster() {
        let mut cursors = DraftCursors::default();
        assert_eq!(cursors.to_draft(None, false), None);
        assert_eq!(cursors.to_draft(Some("s4711".into()), false), Some(4711));
        assert_eq!(
            cursors.from_draft(Some(4711), false).unwrap().as_deref(),
            Some("s4711")
        );
        assert_eq!(cursors.from_draft(None, true).unwrap(), None);
        assert_eq!(cursors.from_draft(Some(0), false).unwrap(), None);
        let first = cursors.to_draft(Some("c0.k1".into()), true).unwrap();
        assert_eq!(
            cursors.from_draft(Some(first), true).unwrap().as_deref(),
            Some("c0.k1")
        );
        for i in 0..MAX_DRAFT_CURSORS {
            cursors.to_draft(Some(format!("c0.k{i}")), true);
        }
        let forgotten = cursors.from_draft(Some(first), true).unwrap_err();
        assert!(forgotten.message().contains("unknown"), "{forgotten}");
    }
}
