//! Task semantics on top of the client: ids, keys, documents and TTLs.
//!
//! Everything a caller can get wrong is checked here, before a byte is sent, so invalid
//! input never reaches Redis and never half-writes anything.

use crate::backend::Backend;
use crate::client::{exec_watched_write, expect_ok, protocol_error, Client, Retry};
use crate::cluster::{ListCursor, MAX_PENDING_CURSOR_BYTES};
use crate::config::{check_ttl, ConfigError, StoreOptions, StoreSettings};
use crate::document::{merge_patch, top_level_status, validate_document, validate_patch};
use crate::resp::Reply;
use crate::transport::Connector;
use crate::TaskError;

pub use status_index::ListingMode;
pub use taskstore_model::{validate_id, MAX_ID_BYTES};

mod status_index;

use status_index::{
    add_and_write_command, add_command, as_args, index_key, is_provisional, prune_expired_command,
    remove_if_score_command, Entry, EntryTtl, Fractions, IndexCursor, MAX_INDEX_PENDING_BYTES,
};

impl From<ConfigError> for TaskError {
    fn from(err: ConfigError) -> TaskError {
        TaskError::invalid_input(err.0)
    }
}

/// Time left before a task expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeToLive {
    /// The task expires in this many seconds (0: within the second).
    ExpiresIn(u64),
    /// The task never expires.
    Persistent,
}

/// What `update` does to the task's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlPolicy {
    /// Keep the remaining TTL (`SET … KEEPTTL`).
    #[default]
    Keep,
    /// Give the task this many seconds from now.
    Set(u64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateOptions {
    /// Apply only while the document's top-level `"status"` equals this.
    pub expect_status: Option<String>,
    pub ttl: TtlPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only tasks whose top-level `"status"` equals this.
    pub status: Option<String>,
    /// Most tasks in one page; default [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`].
    pub limit: Option<u32>,
    /// Where to continue: the `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One task as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id (the key without the prefix).
    pub id: String,
    /// The task's JSON document, exactly as stored.
    pub document: String,
}

/// One page of `reindex`: how many tasks it read and entered in the status index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexPage {
    /// Tasks read (every task under the prefix, with a status or not).
    pub visited: u32,
    /// Tasks entered in their status's index (those with an indexable status).
    pub indexed: u32,
    /// Where to continue; `None` once every task has been visited.
    pub cursor: Option<String>,
}

/// A page of a listing; `cursor` is `None` once every task has been visited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub cursor: Option<String>,
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// Most ids in one batch call.
pub const MAX_BATCH: usize = 10_000;
/// Optimistic-transaction attempts before `update` gives up under contention.
const UPDATE_ATTEMPTS: usize = 100;
/// SCAN round trips one `list` call makes at most before returning a (possibly short) page,
/// so that a sparse status filter over a large keyspace cannot hold the call for long.
const MAX_SCANS_PER_PAGE: usize = 64;
/// A page ends early, its cursor continuing, once its documents reach this many bytes
/// (at least one task per page, whatever its size): pages must fit an instance's memory.
pub const PAGE_BYTE_BUDGET: usize = 4 * 1024 * 1024;
/// Most keys one `SCAN` asks for, or one `MGET` reads.
const MAX_KEYS_PER_CALL: u32 = 1000;

/// A page being filled, and what sizes its next `SCAN` and `MGET`.
/// Where a page stood before one of its SCAN calls (see [`PageFill::mark`]).
struct PageMark {
    cursor: ListCursor,
    tasks: usize,
    bytes: usize,
    read: usize,
    /// The call's `COUNT`.
    count: u32,
}

struct PageFill<'a> {
    tasks: Vec<Task>,
    limit: usize,
    status: Option<&'a str>,
    /// Bytes of the documents in `tasks`.
    bytes: usize,
    /// Keys read so far, listed or not.
    read: usize,
}

impl<'a> PageFill<'a> {
    fn new(limit: usize, status: Option<&'a str>) -> PageFill<'a> {
        PageFill {
            tasks: Vec::new(),
            limit,
            status,
            bytes: 0,
            read: 0,
        }
    }

    /// Keys to ask `SCAN` for, or to read in one `MGET`: what the page still has room for,
    /// scaled by how many keys it took per listed task so far (a status filter), so that
    /// few keys are left over for the cursor to carry.
    /// The page's state and the cursor before a SCAN call of `count` keys.
    fn mark(&self, cursor: &ListCursor, count: u32) -> PageMark {
        PageMark {
            cursor: cursor.clone(),
            tasks: self.tasks.len(),
            bytes: self.bytes,
            read: self.read,
            count,
        }
    }

    /// Takes off the tasks listed since `mark`.
    fn rewind(&mut self, mark: &PageMark) {
        self.tasks.truncate(mark.tasks);
        self.bytes = mark.bytes;
        self.read = mark.read;
    }

    fn keys_per_call(&self) -> u32 {
        let room = self.limit - self.tasks.len();
        let per_task = (self.read + 1) / (self.tasks.len() + 1);
        (room.max(1) * per_task.clamp(1, 16)).min(MAX_KEYS_PER_CALL as usize) as u32
    }
}

/// Research tasks stored as JSON documents under `<prefix><id>`, on one Redis server or a
/// Redis Cluster (a `redis+cluster://` URL).
pub struct Store<C: Connector + Clone> {
    redis: Backend<C>,
    key_prefix: String,
    default_ttl_seconds: u64,
    max_document_bytes: usize,
    listing: ListingMode,
    fractions: Fractions,
}

impl<C: Connector + Clone> Store<C> {
    /// Validates `options`, then connects and authenticates (see the WIT `open`).
    pub fn open(options: &StoreOptions, connector: C) -> Result<Store<C>, TaskError> {
        let settings = StoreSettings::from_options(options)?;
        Store::open_with_settings(settings, connector)
    }

    /// As [`Store::open`], for options already validated (the caller needed them to
    /// build `connector`, e.g. with TLS).
    pub fn open_with_settings(
        settings: StoreSettings,
        connector: C,
    ) -> Result<Store<C>, TaskError> {
        let mut redis = Backend::new(
            connector,
            settings.redis,
            settings.timeout,
            settings.max_document_bytes,
        );
        redis.connect()?;
        Ok(Store {
            redis,
            key_prefix: settings.key_prefix,
            default_ttl_seconds: settings.default_ttl_seconds,
            max_document_bytes: settings.max_document_bytes,
            listing: ListingMode::default(),
            fractions: Fractions::new(),
        })
    }

    /// Selects how `list` with a status finds tasks, and whether this store's writes keep
    /// the status index (see [`ListingMode`]).
    pub fn set_listing_mode(&mut self, mode: ListingMode) {
        self.listing = mode;
    }

    pub fn listing_mode(&self) -> ListingMode {
        self.listing
    }

    /// The document of task `id`, exactly as stored, or `None` if absent or expired.
    pub fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        let key = self.key(id)?;
        match self.redis.on_key(&key, |client| client.get(&key))? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                TaskError::corrupt_data(format!("the value of task \"{id}\" is not UTF-8 text"))
            }),
        }
    }

    /// Stores `document` (a JSON object) as task `id` with `ttl_seconds` or the default TTL.
    pub fn set(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(), TaskError> {
        let key = self.key(id)?;
        let ttl = self.checked_ttl(ttl_seconds)?;
        validate_document(document, self.max_document_bytes)?;
        let Some(index) = self.index_for(document) else {
            return self.redis.on_key(&key, |client| {
                client.set_with_ttl(&key, ttl, document.as_bytes())
            });
        };
        let entry_ttl = EntryTtl::seconds(ttl);
        if self.redis.is_cluster() {
            // The entry lives in another slot: first a provisional one, then the document.
            self.index_add(&index, id, entry_ttl, Entry::Provisional, true)?;
            self.redis.on_key(&key, |client| {
                client.set_with_ttl(&key, ttl, document.as_bytes())
            })?;
            self.index_finish(&index, id, entry_ttl);
            return Ok(());
        }
        // One script: the entry, then the document, atomically, in one command.
        let mut ttl_text = Vec::with_capacity(20);
        crate::resp::push_decimal(&mut ttl_text, ttl);
        let setex: [&[u8]; 4] = [b"SETEX", &key, &ttl_text, document.as_bytes()];
        let command = add_and_write_command(
            &mut self.fractions,
            &index,
            id,
            entry_ttl,
            false,
            &key,
            &setex,
        );
        let args = as_args(&command);
        self.redis.on_key(&key, |client| {
            match client.command(&args, Retry::Idempotent)? {
                Reply::SimpleString(ok) if ok == b"OK" => Ok(()),
                other => Err(client.unexpected_reply("SETEX", &other)),
            }
        })
    }

    /// Removes task `id`; whether one was there.
    pub fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        let key = self.key(id)?;
        self.redis.on_key(&key, |client| client.delete(&key))
    }

    /// Time left before task `id` expires, or `None` if there is no such task.
    pub fn ttl(&mut self, id: &str) -> Result<Option<TimeToLive>, TaskError> {
        let key = self.key(id)?;
        match self.redis.on_key(&key, |client| client.ttl(&key))? {
            -2 => Ok(None),
            -1 => Ok(Some(TimeToLive::Persistent)),
            seconds if seconds >= 0 => Ok(Some(TimeToLive::ExpiresIn(seconds as u64))),
            other => Err(TaskError::protocol(format!(
                "TTL answered {other}, which Redis never does"
            ))),
        }
    }

    /// Whether task `id` exists.
    pub fn exists(&mut self, id: &str) -> Result<bool, TaskError> {
        let key = self.key(id)?;
        self.redis.on_key(&key, |client| client.exists(&key))
    }

    /// One `PING`: whether the server answers (see the WIT `ping`). On a cluster, the master
    /// serving the key prefix's slot answers.
    pub fn ping(&mut self) -> Result<(), TaskError> {
        let key = self.key_prefix.as_bytes().to_vec();
        self.redis.on_key(&key, |client| {
            match client.command(&[b"PING"], Retry::Idempotent)? {
                Reply::SimpleString(pong) if pong == b"PONG" => Ok(()),
                other => Err(client.unexpected_reply("PING", &other)),
            }
        })
    }

    /// Stores `document` as task `id` only if there is no such task (`SET … NX EX`);
    /// whether it was created.
    pub fn create(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<bool, TaskError> {
        let key = self.key(id)?;
        let ttl = self.checked_ttl(ttl_seconds)?;
        validate_document(document, self.max_document_bytes)?;
        let Some(index) = self.index_for(document) else {
            // A redirect is an answer instead of executing, so following it never sends the
            // write twice.
            return self.redis.on_key(&key, |client| {
                client.set_if_absent(&key, ttl, document.as_bytes())
            });
        };
        let entry_ttl = EntryTtl::seconds(ttl);
        if self.redis.is_cluster() {
            // Never lowering the expiry: should the task exist, its entry stays valid.
            self.index_add(&index, id, entry_ttl, Entry::Provisional, true)?;
            let created = self.redis.on_key(&key, |client| {
                client.set_if_absent(&key, ttl, document.as_bytes())
            })?;
            if created {
                self.index_finish(&index, id, entry_ttl);
            }
            return Ok(created);
        }
        // One script: the entry (never lowering an existing one's expiry, should the task
        // exist), then `SET … NX`, atomically.
        let mut ttl_text = Vec::with_capacity(20);
        crate::resp::push_decimal(&mut ttl_text, ttl);
        let set: [&[u8]; 6] = [b"SET", &key, document.as_bytes(), b"NX", b"EX", &ttl_text];
        let command =
            add_and_write_command(&mut self.fractions, &index, id, entry_ttl, true, &key, &set);
        let args = as_args(&command);
        self.redis.on_key(&key, |client| {
            match client.command(&args, Retry::Never)? {
                Reply::SimpleString(ok) if ok == b"OK" => Ok(true),
                Reply::Null => Ok(false),
                other => Err(client.unexpected_reply("SET NX", &other)),
            }
        })
    }

    /// Sets task `id`'s TTL without rewriting it; whether the task exists.
    pub fn expire(&mut self, id: &str, ttl_seconds: u64) -> Result<bool, TaskError> {
        let key = self.key(id)?;
        let ttl = self.checked_ttl(Some(ttl_seconds))?;
        if self.listing == ListingMode::Scan {
            return self.redis.on_key(&key, |client| client.expire(&key, ttl));
        }
        // The entry's score is the task's expiry: read the status under `WATCH`, so the
        // entry re-scored is the one of the status the task has when the expiry changes.
        let cluster = self.redis.is_cluster();
        let entry_ttl = EntryTtl::seconds(ttl);
        let mut ttl_text = Vec::with_capacity(20);
        crate::resp::push_decimal(&mut ttl_text, ttl);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some((current, _)) = self.redis.on_key(&key, |client| watch_read(client, &key))?
            else {
                return Ok(false);
            };
            let index = std::str::from_utf8(&current)
                .ok()
                .and_then(top_level_status)
                .and_then(|status| index_key(&self.key_prefix, &status));
            let expire: Vec<&[u8]> = vec![b"EXPIRE", &key, &ttl_text];
            // One server: one script re-scores the entry and sets the expiry, inside the
            // transaction.
            let mut combined = None;
            if let Some(index) = &index {
                if cluster {
                    if let Err(err) = self.index_add(index, id, entry_ttl, Entry::Provisional, true)
                    {
                        let _ = self.redis.on_key(&key, |client| unwatch(client));
                        return Err(err);
                    }
                } else {
                    combined = Some(add_and_write_command(
                        &mut self.fractions,
                        index,
                        id,
                        entry_ttl,
                        false,
                        &key,
                        &expire,
                    ));
                }
            }
            let combined = combined.as_deref().map(as_args);
            let write = combined.as_deref().unwrap_or(&expire);
            let done = self
                .redis
                .on_key(&key, |client| exec_watched(client, &[], write, "EXPIRE"))?;
            let Some(reply) = done else {
                continue;
            };
            if let (true, Some(index)) = (cluster, &index) {
                self.index_finish(index, id, entry_ttl);
            }
            return match reply {
                Reply::Integer(set) => Ok(set > 0),
                other => Err(self.redis.unexpected_reply("EXPIRE", &other)),
            };
        }
        Err(TaskError::contended(format!(
            "gave up setting the expiry of task \"{id}\" after {UPDATE_ATTEMPTS} concurrent modifications"
        )))
    }

    /// Applies the JSON merge patch `patch` to task `id` atomically; the new document, or
    /// `None` if there is no such task.
    ///
    /// An optimistic transaction: `WATCH` + `GET`, merge here, then `MULTI` / `SET` /
    /// `EXEC`, which Redis aborts if anyone — this store, another process, a plain client —
    /// wrote the key in between; then it starts over. The merge runs here rather than in a
    /// Lua script because Lua's cjson rewrites numbers and key order.
    pub fn update(
        &mut self,
        id: &str,
        patch: &str,
        options: &UpdateOptions,
    ) -> Result<Option<String>, TaskError> {
        let key = self.key(id)?;
        validate_patch(patch, self.max_document_bytes)?;
        if let TtlPolicy::Set(ttl) = options.ttl {
            self.checked_ttl(Some(ttl))?;
        }
        let max_document_bytes = self.max_document_bytes;
        if self.listing == ListingMode::Index {
            return self.update_indexed(&key, id, patch, options);
        }
        for _ in 0..UPDATE_ATTEMPTS {
            // One whole optimistic transaction on the connection serving the key; on a
            // cluster, a redirect anywhere in it (nothing was written) runs it again whole
            // where the redirect points.
            let attempt = self.redis.on_key(&key, |client| {
                update_attempt(client, &key, id, patch, options, max_document_bytes)
            })?;
            if let Some(outcome) = attempt {
                return Ok(outcome);
            }
        }
        Err(TaskError::contended(format!(
            "gave up updating task \"{id}\" after {UPDATE_ATTEMPTS} concurrent modifications"
        )))
    }

    /// `update` keeping the status index: `WATCH` + `GET` + `PTTL`, merge here, then `MULTI`
    /// with the entry for the new status, the removal of the old one (one server) and the
    /// `SET`, `EXEC`. On a cluster the entries are in other slots: a provisional entry
    /// before the `MULTI`, the final one after; the old entry is left for listings to prune
    /// (a removal there could not check, atomically, that no concurrent write restored
    /// that status).
    fn update_indexed(
        &mut self,
        key: &[u8],
        id: &str,
        patch: &str,
        options: &UpdateOptions,
    ) -> Result<Option<String>, TaskError> {
        let cluster = self.redis.is_cluster();
        for _ in 0..UPDATE_ATTEMPTS {
            let Some((current, pttl)) = self.redis.on_key(key, |client| watch_read(client, key))?
            else {
                return Ok(None);
            };
            let merged = match merge_checked(id, &current, patch, options, self.max_document_bytes)
            {
                Ok(merged) => merged,
                Err(err) => {
                    self.redis.on_key(key, |client| unwatch(client))?;
                    return Err(err);
                }
            };
            let new_index = self.index_for(&merged);
            let old_index = std::str::from_utf8(&current)
                .ok()
                .and_then(top_level_status)
                .and_then(|status| index_key(&self.key_prefix, &status))
                .filter(|old| Some(old) != new_index.as_ref());
            let entry_ttl = match options.ttl {
                TtlPolicy::Keep => EntryTtl::from_pttl(pttl),
                TtlPolicy::Set(seconds) => EntryTtl::seconds(seconds),
            };
            let mut ttl_text = Vec::new();
            let set: Vec<&[u8]> = match options.ttl {
                TtlPolicy::Keep => vec![b"SET", key, merged.as_bytes(), b"KEEPTTL"],
                TtlPolicy::Set(ttl) => {
                    crate::resp::push_decimal(&mut ttl_text, ttl);
                    vec![b"SET", key, merged.as_bytes(), b"EX", &ttl_text]
                }
            };
            // One server: the old entry's removal, then one script adding the new entry and
            // writing the document, inside the transaction.
            let mut queued: Vec<Vec<Vec<u8>>> = Vec::new();
            if let (false, Some(old)) = (cluster, &old_index) {
                queued.push(vec![b"ZREM".to_vec(), old.clone(), id.as_bytes().to_vec()]);
            }
            let mut combined = None;
            if let Some(index) = &new_index {
                if cluster {
                    if let Err(err) = self.index_add(index, id, entry_ttl, Entry::Provisional, true)
                    {
                        let _ = self.redis.on_key(key, |client| unwatch(client));
                        return Err(err);
                    }
                } else {
                    combined = Some(add_and_write_command(
                        &mut self.fractions,
                        index,
                        id,
                        entry_ttl,
                        false,
                        key,
                        &set,
                    ));
                }
            }
            let combined = combined.as_deref().map(as_args);
            let write = combined.as_deref().unwrap_or(&set);
            let done = self
                .redis
                .on_key(key, |client| exec_watched(client, &queued, write, "SET"))?;
            if done.is_none() {
                continue;
            }
            if let (true, Some(index)) = (cluster, &new_index) {
                self.index_finish(index, id, entry_ttl);
            }
            return Ok(Some(merged));
        }
        Err(TaskError::contended(format!(
            "gave up updating task \"{id}\" after {UPDATE_ATTEMPTS} concurrent modifications"
        )))
    }

    /// The index key of `document`'s status, when this store keeps the index and the
    /// status is indexable.
    fn index_for(&self, document: &str) -> Option<Vec<u8>> {
        if self.listing != ListingMode::Index {
            return None;
        }
        index_key(&self.key_prefix, &top_level_status(document)?)
    }

    /// Adds (re-scores) `id`'s entry in `index`, on the index key's own connection.
    fn index_add(
        &mut self,
        index: &[u8],
        id: &str,
        ttl: EntryTtl,
        entry: Entry,
        never_lower: bool,
    ) -> Result<(), TaskError> {
        let command = add_command(&mut self.fractions, index, id, ttl, entry, never_lower);
        let args = as_args(&command);
        self.redis.on_key(index, |client| {
            client.command(&args, Retry::Idempotent).map(|_| ())
        })
    }

    /// After a cluster write: the provisional entry made final. Should this fail, the
    /// provisional entry keeps the task listed, and goes when its expiry passes.
    fn index_finish(&mut self, index: &[u8], id: &str, ttl: EntryTtl) {
        let _ = self.index_add(index, id, ttl, Entry::Final, false);
    }

    /// The documents of `ids`, in order (`None` where absent), in one round trip (`MGET`).
    pub fn get_many(&mut self, ids: &[String]) -> Result<Vec<Option<String>>, TaskError> {
        let keys = self.keys(ids)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.redis.get_many(&keys)?;
        ids.iter()
            .zip(values)
            .map(|(id, value)| match value {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                    TaskError::corrupt_data(format!("the value of task \"{id}\" is not UTF-8 text"))
                }),
            })
            .collect()
    }

    /// Stores every `(id, document)` with one TTL, pipelined in one round trip. All input is
    /// validated first: one bad item rejects the batch and nothing is written. The result
    /// has one entry per item: Redis may refuse single writes (e.g. `OOM`).
    pub fn set_many(
        &mut self,
        tasks: &[Task],
        ttl_seconds: Option<u64>,
    ) -> Result<Vec<Result<(), TaskError>>, TaskError> {
        let ttl = self.checked_ttl(ttl_seconds)?;
        check_batch_size(tasks.len())?;
        let mut keys = Vec::with_capacity(tasks.len());
        for task in tasks {
            keys.push(self.key(&task.id)?);
            validate_document(&task.document, self.max_document_bytes).map_err(|err| {
                TaskError::invalid_input(format!("task \"{}\": {}", task.id, err.0))
            })?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut ttl_text = Vec::with_capacity(20);
        crate::resp::push_decimal(&mut ttl_text, ttl);
        let commands: Vec<[&[u8]; 4]> = keys
            .iter()
            .zip(tasks)
            .map(|(key, task)| [b"SETEX" as &[u8], key, &ttl_text, task.document.as_bytes()])
            .collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let replies = self.set_many_indexed(tasks, ttl, &key_refs, &commands)?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                Reply::SimpleString(ok) if ok == b"OK" => Ok(()),
                Reply::Error(message) => Err(self.redis.reply_error(message)),
                other => Err(self.redis.unexpected_reply("SETEX", &other)),
            })
            .collect())
    }

    /// The `SETEX` batch of `set_many`, with the status index kept: provisional entries
    /// first, then the documents, then the entries made final — in one pipeline on one
    /// server (ordered, not atomic, hence provisional), in three batches on a cluster.
    fn set_many_indexed(
        &mut self,
        tasks: &[Task],
        ttl: u64,
        keys: &[&[u8]],
        writes: &[&[&[u8]]],
    ) -> Result<Vec<Reply>, TaskError> {
        let indexed: Vec<(Vec<u8>, &str)> = tasks
            .iter()
            .filter_map(|task| Some((self.index_for(&task.document)?, task.id.as_str())))
            .collect();
        if indexed.is_empty() {
            return self.redis.batch(keys, writes, Retry::Idempotent);
        }
        let entry_ttl = EntryTtl::seconds(ttl);
        let mut adds = |entry: Entry, never_lower: bool| -> Vec<Vec<Vec<u8>>> {
            indexed
                .iter()
                .map(|(index, id)| {
                    add_command(
                        &mut self.fractions,
                        index,
                        id,
                        entry_ttl,
                        entry,
                        never_lower,
                    )
                })
                .collect()
        };
        let provisional = adds(Entry::Provisional, true);
        let finals = adds(Entry::Final, false);
        let provisional: Vec<Vec<&[u8]>> = provisional.iter().map(|c| as_args(c)).collect();
        let finals: Vec<Vec<&[u8]>> = finals.iter().map(|c| as_args(c)).collect();
        let index_keys: Vec<&[u8]> = indexed.iter().map(|(index, _)| index.as_slice()).collect();
        let check_adds = |store: &Self, replies: &[Reply]| -> Result<(), TaskError> {
            match replies
                .iter()
                .find(|reply| matches!(reply, Reply::Error(_)))
            {
                Some(Reply::Error(message)) => Err(store.redis.reply_error(message.clone())),
                _ => Ok(()),
            }
        };
        if !self.redis.is_cluster() {
            let mut all_keys: Vec<&[u8]> = index_keys.clone();
            all_keys.extend_from_slice(keys);
            all_keys.extend_from_slice(&index_keys);
            let mut commands: Vec<&[&[u8]]> = provisional.iter().map(Vec::as_slice).collect();
            commands.extend_from_slice(writes);
            commands.extend(finals.iter().map(Vec::as_slice));
            let mut replies = self.redis.batch(&all_keys, &commands, Retry::Idempotent)?;
            let rest = replies.split_off(index_keys.len());
            check_adds(self, &replies)?;
            let mut rest = rest;
            rest.truncate(keys.len());
            return Ok(rest);
        }
        let commands: Vec<&[&[u8]]> = provisional.iter().map(Vec::as_slice).collect();
        let replies = self
            .redis
            .batch(&index_keys, &commands, Retry::Idempotent)?;
        check_adds(self, &replies)?;
        let replies = self.redis.batch(keys, writes, Retry::Idempotent)?;
        let commands: Vec<&[&[u8]]> = finals.iter().map(Vec::as_slice).collect();
        // Should this fail, the provisional entries keep the tasks listed.
        let _ = self.redis.batch(&index_keys, &commands, Retry::Idempotent);
        Ok(replies)
    }

    /// Removes every task in `ids`, pipelined in one round trip; per id, whether it was there.
    pub fn delete_many(&mut self, ids: &[String]) -> Result<Vec<bool>, TaskError> {
        let keys = self.keys(ids)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let commands: Vec<[&[u8]; 2]> = keys.iter().map(|key| [b"DEL" as &[u8], key]).collect();
        let commands: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let replies = self.redis.batch(&key_refs, &commands, Retry::Idempotent)?;
        replies
            .into_iter()
            .map(|reply| match reply {
                Reply::Integer(removed) => Ok(removed > 0),
                Reply::Error(message) => Err(self.redis.reply_error(message)),
                other => Err(self.redis.unexpected_reply("DEL", &other)),
            })
            .collect()
    }

    /// One page of tasks, optionally only those with a given status (see [`ListOptions`]).
    ///
    /// Keys are enumerated with `SCAN … MATCH <prefix>* TYPE string` (never `KEYS`) and
    /// read with `MGET`, so tasks written by any client are found, and a task deleted or
    /// expired in between is skipped. Keys whose id is not a valid id, and values that are
    /// not UTF-8, are skipped.
    ///
    /// A task that exists for the whole listing is returned at least once, whatever is added,
    /// deleted or expires meanwhile: no `SCAN` call is ever repeated (see [`ListCursor`]),
    /// so the listing is one `SCAN` iteration per server and inherits its guarantee. A page
    /// holds at most `limit` tasks and ends early once its documents reach
    /// [`PAGE_BYTE_BUDGET`]; documents are read in `MGET`s sized by `STRLEN` to stay within
    /// what is left of it.
    pub fn list(&mut self, options: &ListOptions) -> Result<Page, TaskError> {
        let limit = options.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(TaskError::invalid_input(format!(
                "page size {limit} is out of range: it must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        if let (ListingMode::Index, Some(status)) = (self.listing, options.status.as_deref()) {
            if let Some(index) = index_key(&self.key_prefix, status) {
                return self.list_by_index(
                    &index,
                    status,
                    limit as usize,
                    options.cursor.as_deref(),
                );
            }
        }
        self.list_scan(options, limit)
    }

    /// `list` by enumerating keys (see [`Store::list`]).
    fn list_scan(&mut self, options: &ListOptions, limit: u32) -> Result<Page, TaskError> {
        if options
            .cursor
            .as_deref()
            .is_some_and(|text| text.starts_with('i'))
        {
            return Err(TaskError::invalid_input(
                "cursor is from a listing by the status index; this listing scans (listing mode \
                 scan, no status, or a status that is not indexed): list again without a cursor",
            ));
        }
        let cluster = self.redis.is_cluster();
        let mut cursor = match &options.cursor {
            None => ListCursor::start(),
            Some(text) => ListCursor::parse(text, cluster)
                .filter(|cursor| cursor.pending.iter().all(|id| validate_id(id).is_ok()))
                .ok_or_else(|| {
                    TaskError::invalid_input(
                        "cursor is malformed: pass the cursor of the previous page, or none to start over",
                    )
                })?,
        };
        let pattern = glob_escape(&self.key_prefix);
        let mut page = PageFill::new(limit as usize, options.status.as_deref());
        let start = cursor.clone();
        // The `COUNT` of this page's SCAN calls is at most this; halved when one call's
        // leftover keys are too many to carry and going back would make no progress.
        let mut count_cap = MAX_KEYS_PER_CALL;
        let mut scans = 0;
        let next = loop {
            // Where the page stood before its last SCAN call, to go back to should that
            // call's leftover keys be too many to carry in the cursor.
            let mut before_last_scan: Option<PageMark> = None;
            loop {
                if !cursor.pending.is_empty() {
                    if self.read_pending(&mut cursor.pending, &mut page)? {
                        break;
                    }
                    continue;
                }
                if scans == MAX_SCANS_PER_PAGE || page.tasks.len() == page.limit {
                    break;
                }
                let count = page.keys_per_call().min(count_cap);
                before_last_scan = Some(page.mark(&cursor, count));
                scans += 1;
                let Some(keys) = self.redis.scan_step(&mut cursor, &pattern, count)? else {
                    return Ok(Page {
                        tasks: page.tasks,
                        cursor: None,
                    });
                };
                self.add_pending(&mut cursor, keys);
            }
            let overflow =
                ListCursor::pending_text_bytes(&cursor.pending) > MAX_PENDING_CURSOR_BYTES;
            let Some(mark) = before_last_scan.filter(|_| overflow) else {
                break cursor;
            };
            // Going back to before the last SCAN call, with the tasks it listed taken off
            // the page, lets the next page make that call again and list each of them once
            // (Redis answers the same cursor with the same keys while nothing changes).
            let progress = mark.tasks > 0 || mark.cursor != start;
            if progress {
                page.rewind(&mark);
                break mark.cursor;
            }
            // Nothing listed before that call: going back would hand out the same cursor
            // again. Make the call again, asking for fewer keys, while calls are left.
            if mark.count > 1 && scans < MAX_SCANS_PER_PAGE {
                page.rewind(&mark);
                cursor = mark.cursor;
                count_cap = mark.count / 2;
                continue;
            }
            // A single bucket of Redis's table holding more keys than a cursor carries
            // (hundreds of long ids): the page keeps what it listed and the next one starts
            // before that call, so a few tasks may come twice rather than be missed.
            break mark.cursor;
        };
        // A full page that used up the last keys of a single server's scan is the last page.
        let finished = !cluster && next.position.is_none() && next.pending.is_empty();
        Ok(Page {
            tasks: page.tasks,
            cursor: (!finished).then(|| next.format(cluster)),
        })
    }

    /// `list` by the status index: `ZSCAN` of `index` (after removing entries whose expiry
    /// has passed), the documents read and their status checked, entries whose document is
    /// missing or has another status removed (conditionally; see `status_index`).
    ///
    /// A task whose entry is present for the whole listing is returned at least once:
    /// `ZSCAN` returns every member present throughout, and no `ZSCAN` call is repeated
    /// (members of a call that do not fit in the page travel in the cursor, as with `SCAN`).
    fn list_by_index(
        &mut self,
        index: &[u8],
        status: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, TaskError> {
        let mut cursor = match cursor {
            None => IndexCursor::start(),
            Some(text) if !text.starts_with('i') => {
                return Err(TaskError::invalid_input(
                    "cursor is from a scan listing; this listing reads the status index \
                     (listing mode index): list again without a cursor",
                ))
            }
            Some(text) => IndexCursor::parse(text).ok_or_else(|| {
                TaskError::invalid_input(
                    "cursor is malformed: pass the cursor of the previous page, or none to start over",
                )
            })?,
        };
        let mut page = PageFill::new(limit, Some(status));
        let mut scans = 0;
        loop {
            if !cursor.pending.is_empty() {
                if self.read_index_entries(index, &mut cursor.pending, &mut page)? {
                    break;
                }
                continue;
            }
            if page.tasks.len() >= limit || scans == MAX_SCANS_PER_PAGE {
                break;
            }
            let Some(position) = cursor.position else {
                break;
            };
            let count = (limit - page.tasks.len()).clamp(10, MAX_KEYS_PER_CALL as usize);
            // Every page first removes the entries that expired: one script in the same
            // round trip as its first ZSCAN.
            let (next, entries) = self.zscan(index, position, count, scans == 0)?;
            scans += 1;
            cursor.position = (next != 0).then_some(next);
            cursor.pending.extend(entries);
        }
        let finished = cursor.position.is_none() && cursor.pending.is_empty();
        Ok(Page {
            tasks: page.tasks,
            cursor: (!finished).then(|| cursor.format()),
        })
    }

    /// One `ZSCAN` call of `index` (after a [`status_index::PRUNE_EXPIRED`] script, when
    /// `prune`): the next cursor and the entries, scores as Redis printed them.
    fn zscan(
        &mut self,
        index: &[u8],
        position: u64,
        count: usize,
        prune: bool,
    ) -> Result<(u64, Vec<(String, String)>), TaskError> {
        let prune_command = prune_expired_command(index);
        let prune_args = as_args(&prune_command);
        let position = position.to_string();
        let count = count.to_string();
        let zscan: [&[u8]; 5] = [
            b"ZSCAN",
            index,
            position.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ];
        let reply = self.redis.on_key(index, |client| {
            let mut commands: Vec<&[&[u8]]> = Vec::with_capacity(2);
            if prune {
                commands.push(&prune_args);
            }
            commands.push(&zscan);
            let mut replies = client.pipeline(&commands, Retry::Idempotent)?;
            for reply in &replies {
                if let Reply::Error(message) = reply {
                    return Err(client.reply_error(message.clone()));
                }
            }
            replies
                .pop()
                .ok_or_else(|| TaskError::protocol("no reply to ZSCAN"))
        })?;
        let malformed = || TaskError::protocol("malformed ZSCAN reply");
        let Reply::Array(mut parts) = reply else {
            return Err(malformed());
        };
        let (Some(Reply::Array(flat)), Some(Reply::BulkString(next)), None) =
            (parts.pop(), parts.pop(), parts.pop())
        else {
            return Err(malformed());
        };
        let next: u64 = std::str::from_utf8(&next)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(malformed)?;
        let mut entries = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(member), Some(score)) = (flat.next(), flat.next()) {
            let (Reply::BulkString(member), Reply::BulkString(score)) = (member, score) else {
                return Err(malformed());
            };
            // A member that is not an id is no task of this store: never listed.
            let (Ok(id), Ok(score)) = (String::from_utf8(member), String::from_utf8(score)) else {
                continue;
            };
            if validate_id(&id).is_ok() {
                entries.push((id, score));
            }
        }
        Ok((next, entries))
    }

    /// Reads pending index entries into `page`, front first, until none is pending
    /// (`false`) or the page is full (`true`), and removes the entries it found stale.
    fn read_index_entries(
        &mut self,
        index: &[u8],
        pending: &mut Vec<(String, String)>,
        page: &mut PageFill<'_>,
    ) -> Result<bool, TaskError> {
        while !pending.is_empty() {
            // Only with Redis configured to keep sorted sets of many long members compact
            // (listpack) does a ZSCAN call return more than a cursor carries: the page then
            // takes them all, beyond its limit, rather than miss any.
            let fits = IndexCursor::pending_text_bytes(pending) <= MAX_INDEX_PENDING_BYTES;
            let room = match page.limit.checked_sub(page.tasks.len()) {
                Some(0) | None if fits => return Ok(true),
                Some(0) | None => pending.len(),
                Some(room) => room,
            };
            let chunk = room.min(pending.len()).min(MAX_KEYS_PER_CALL as usize);
            let ids: Vec<String> = pending[..chunk].iter().map(|(id, _)| id.clone()).collect();
            let keys = self.keys(&ids)?;
            let lengths = self.redis.string_lengths(&keys)?;
            let (mut take, mut planned) = (0, page.bytes);
            for length in lengths {
                let first_of_page = page.tasks.is_empty() && take == 0;
                if !first_of_page && planned + length > PAGE_BYTE_BUDGET {
                    break;
                }
                planned += length;
                take += 1;
            }
            if take == 0 {
                if fits {
                    return Ok(true);
                }
                take = 1;
            }
            let values = self.redis.get_many(&keys[..take])?;
            let mut stale: Vec<Vec<Vec<u8>>> = Vec::new();
            for ((id, score), value) in pending[..take].iter().zip(values) {
                page.read += 1;
                match self.listed_task(id, value, page.status) {
                    Some(task) => {
                        page.bytes += task.document.len();
                        page.tasks.push(task);
                    }
                    // Missing, or another status: stale, unless a cluster writer is between
                    // its provisional entry and its document.
                    None if !is_provisional(score) => {
                        stale.push(remove_if_score_command(index, id, score))
                    }
                    None => {}
                }
            }
            pending.drain(..take);
            if !stale.is_empty() {
                let commands: Vec<Vec<&[u8]>> = stale.iter().map(|c| as_args(c)).collect();
                let commands: Vec<&[&[u8]]> = commands.iter().map(Vec::as_slice).collect();
                let keys = vec![index; commands.len()];
                for reply in self.redis.batch(&keys, &commands, Retry::Idempotent)? {
                    if let Reply::Error(message) = reply {
                        return Err(self.redis.reply_error(message));
                    }
                }
            }
            if take < chunk && fits {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One step of `reindex`: one page of a scan listing of every task (`limit` tasks at
    /// most, default 1000), each entered in its status's index, scored by its `PTTL`.
    /// Never lowers an entry's expiry (a concurrent writer's stays valid).
    pub fn reindex(
        &mut self,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<ReindexPage, TaskError> {
        let limit = limit.unwrap_or(1000);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(TaskError::invalid_input(format!(
                "page size {limit} is out of range: it must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let options = ListOptions {
            status: None,
            limit: Some(limit),
            cursor,
        };
        let page = self.list_scan(&options, limit)?;
        let entries: Vec<(Vec<u8>, &str)> = page
            .tasks
            .iter()
            .filter_map(|task| {
                let status = top_level_status(&task.document)?;
                Some((index_key(&self.key_prefix, &status)?, task.id.as_str()))
            })
            .collect();
        let mut indexed = 0;
        if !entries.is_empty() {
            let ids: Vec<String> = entries.iter().map(|(_, id)| (*id).to_owned()).collect();
            let keys = self.keys(&ids)?;
            let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let pttl: Vec<[&[u8]; 2]> =
                key_refs.iter().map(|key| [b"PTTL" as &[u8], key]).collect();
            let pttl: Vec<&[&[u8]]> = pttl.iter().map(|c| c.as_slice()).collect();
            let pttls = self.redis.batch(&key_refs, &pttl, Retry::Idempotent)?;
            let mut adds = Vec::new();
            let mut index_keys: Vec<&[u8]> = Vec::new();
            for ((index, id), pttl) in entries.iter().zip(pttls) {
                let ttl = match pttl {
                    // Gone since it was read.
                    Reply::Integer(-2) => continue,
                    Reply::Integer(pttl) => EntryTtl::from_pttl(pttl),
                    Reply::Error(message) => return Err(self.redis.reply_error(message)),
                    other => return Err(self.redis.unexpected_reply("PTTL", &other)),
                };
                adds.push(add_command(
                    &mut self.fractions,
                    index,
                    id,
                    ttl,
                    Entry::Final,
                    true,
                ));
                index_keys.push(index);
            }
            let commands: Vec<Vec<&[u8]>> = adds.iter().map(|c| as_args(c)).collect();
            let commands: Vec<&[&[u8]]> = commands.iter().map(Vec::as_slice).collect();
            for reply in self
                .redis
                .batch(&index_keys, &commands, Retry::Idempotent)?
            {
                match reply {
                    Reply::Error(message) => return Err(self.redis.reply_error(message)),
                    _ => indexed += 1,
                }
            }
        }
        Ok(ReindexPage {
            visited: page.tasks.len() as u32,
            indexed,
            cursor: page.cursor,
        })
    }

    fn add_pending(&self, cursor: &mut ListCursor, keys: Vec<Vec<u8>>) {
        let ids = keys.into_iter().filter_map(|key| {
            let id =
                String::from_utf8(key.strip_prefix(self.key_prefix.as_bytes())?.to_vec()).ok()?;
            validate_id(&id).is_ok().then_some(id)
        });
        cursor.pending.extend(ids);
    }

    /// Reads pending tasks into `page`, front first, until none is pending (`false`) or the
    /// page is full (`true`): `limit` tasks, or documents worth [`PAGE_BYTE_BUDGET`] —
    /// unless the ids left would not fit in a cursor, then the budget gives way.
    fn read_pending(
        &mut self,
        pending: &mut Vec<String>,
        page: &mut PageFill<'_>,
    ) -> Result<bool, TaskError> {
        while !pending.is_empty() {
            if page.tasks.len() == page.limit {
                return Ok(true);
            }
            let chunk = page.keys_per_call().min(pending.len() as u32) as usize;
            let keys = self.keys(&pending[..chunk])?;
            let lengths = self.redis.string_lengths(&keys)?;
            let (mut take, mut planned) = (0, page.bytes);
            for length in lengths {
                let first_of_page = page.tasks.is_empty() && take == 0;
                if !first_of_page && planned + length > PAGE_BYTE_BUDGET {
                    break;
                }
                planned += length;
                take += 1;
            }
            let budget_reached = take < chunk;
            if take == 0 {
                if ListCursor::pending_text_bytes(pending) <= MAX_PENDING_CURSOR_BYTES {
                    return Ok(true);
                }
                take = 1;
            }
            let values = self.redis.get_many(&keys[..take])?;
            // Read ahead of a status filter, a chunk may hold more matches than the page has
            // room for: those stay pending and are read again by the next page.
            let mut consumed = 0;
            for (id, value) in pending[..take].iter().zip(values) {
                if page.tasks.len() == page.limit {
                    break;
                }
                consumed += 1;
                page.read += 1;
                if let Some(task) = self.listed_task(id, value, page.status) {
                    page.bytes += task.document.len();
                    page.tasks.push(task);
                }
            }
            pending.drain(..consumed);
            if budget_reached && ListCursor::pending_text_bytes(pending) <= MAX_PENDING_CURSOR_BYTES
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn listed_task(&self, id: &str, value: Option<Vec<u8>>, status: Option<&str>) -> Option<Task> {
        let document = String::from_utf8(value?).ok()?;
        if let Some(status) = status {
            if top_level_status(&document).as_deref() != Some(status) {
                return None;
            }
        }
        Some(Task {
            id: id.to_owned(),
            document,
        })
    }

    fn checked_ttl(&self, ttl_seconds: Option<u64>) -> Result<u64, TaskError> {
        let ttl = ttl_seconds.unwrap_or(self.default_ttl_seconds);
        check_ttl(ttl).map_err(|why| TaskError::invalid_input(format!("TTL {why}")))?;
        Ok(ttl)
    }

    fn keys(&self, ids: &[String]) -> Result<Vec<Vec<u8>>, TaskError> {
        check_batch_size(ids.len())?;
        ids.iter().map(|id| self.key(id)).collect()
    }

    fn key(&self, id: &str) -> Result<Vec<u8>, TaskError> {
        validate_id(id)?;
        let mut key = Vec::with_capacity(self.key_prefix.len() + id.len());
        key.extend_from_slice(self.key_prefix.as_bytes());
        key.extend_from_slice(id.as_bytes());
        Ok(key)
    }
}

/// One optimistic transaction of `update` on `client`: `WATCH` + `GET`, merge, then
/// `MULTI` / `SET` / `EXEC`. `Some(outcome)` when done, `None` when someone wrote the key in
/// between (`EXEC` aborted) and it must start over.
fn update_attempt<C: Connector>(
    client: &mut Client<C>,
    key: &[u8],
    id: &str,
    patch: &str,
    options: &UpdateOptions,
    max_document_bytes: usize,
) -> Result<Option<Option<String>>, TaskError> {
    let current = {
        // Retrying WATCH + GET together on a fresh connection is safe: no write yet.
        let mut replies =
            client.pipeline(&[&[b"WATCH", key], &[b"GET", key]], Retry::Idempotent)?;
        let get = replies.pop();
        let watch = replies.pop();
        expect_ok(client, watch, "WATCH")?;
        match get {
            Some(Reply::Null) => {
                unwatch(client)?;
                return Ok(Some(None));
            }
            Some(Reply::BulkString(bytes)) => bytes,
            Some(Reply::Error(message)) => {
                unwatch(client)?;
                return Err(client.reply_error(message));
            }
            other => return Err(protocol_error(client, "GET", other)),
        }
    };
    let merged = match merge_checked(id, &current, patch, options, max_document_bytes) {
        Ok(merged) => merged,
        Err(err) => {
            unwatch(client)?;
            return Err(err);
        }
    };
    let mut ttl_text = Vec::new();
    let set: Vec<&[u8]> = match options.ttl {
        TtlPolicy::Keep => vec![b"SET", key, merged.as_bytes(), b"KEEPTTL"],
        TtlPolicy::Set(ttl) => {
            crate::resp::push_decimal(&mut ttl_text, ttl);
            vec![b"SET", key, merged.as_bytes(), b"EX", &ttl_text]
        }
    };
    if exec_watched_write(client, &set)? {
        Ok(Some(Some(merged)))
    } else {
        // Someone wrote the key after our WATCH: start over from their version.
        Ok(None)
    }
}

/// `WATCH` + `GET` + `PTTL` of `key`: the value and its `PTTL`, the watch left on; `None`
/// (and no watch) when there is no such key.
fn watch_read<C: Connector>(
    client: &mut Client<C>,
    key: &[u8],
) -> Result<Option<(Vec<u8>, i64)>, TaskError> {
    // Retrying all three together on a fresh connection is safe: no write yet.
    let mut replies = client.pipeline(
        &[&[b"WATCH", key], &[b"GET", key], &[b"PTTL", key]],
        Retry::Idempotent,
    )?;
    let pttl = replies.pop();
    let get = replies.pop();
    let watch = replies.pop();
    expect_ok(client, watch, "WATCH")?;
    let pttl = match pttl {
        Some(Reply::Integer(pttl)) => pttl,
        Some(Reply::Error(message)) => {
            unwatch(client)?;
            return Err(client.reply_error(message));
        }
        other => return Err(protocol_error(client, "PTTL", other)),
    };
    match get {
        Some(Reply::Null) => {
            unwatch(client)?;
            Ok(None)
        }
        Some(Reply::BulkString(bytes)) => Ok(Some((bytes, pttl))),
        Some(Reply::Error(message)) => {
            unwatch(client)?;
            Err(client.reply_error(message))
        }
        other => Err(protocol_error(client, "GET", other)),
    }
}

/// `MULTI`, `queued`, `write`, `EXEC` on a connection holding a `WATCH`: the reply of
/// `write`, or `None` when the transaction did not run (the key changed, or on a cluster a
/// redirect: run again from the `WATCH`, never elsewhere without it). The status index's
/// transactions, which queue its scripts before the write; a lone write uses
/// [`exec_watched_write`].
fn exec_watched<C: Connector>(
    client: &mut Client<C>,
    queued: &[Vec<Vec<u8>>],
    write: &[&[u8]],
    command: &str,
) -> Result<Option<Reply>, TaskError> {
    let queued: Vec<Vec<&[u8]>> = queued.iter().map(|c| as_args(c)).collect();
    let mut commands: Vec<&[&[u8]]> = vec![&[b"MULTI"]];
    commands.extend(queued.iter().map(Vec::as_slice));
    commands.push(write);
    commands.push(&[b"EXEC"]);
    // Never resent: if the connection dies here the write may have happened.
    let mut replies = client.pipeline(&commands, Retry::Never)?;
    let exec = replies.pop();
    for reply in replies {
        if let Reply::Error(message) = reply {
            if crate::RedisErrorCode::of(&message).is_redirect() {
                return Ok(None);
            }
            return Err(client.reply_error(message));
        }
    }
    match exec {
        Some(Reply::Null) => Ok(None),
        Some(Reply::Array(results)) => match results.into_iter().last() {
            Some(Reply::Error(message)) => Err(client.reply_error(message)),
            Some(reply) => Ok(Some(reply)),
            None => Err(protocol_error(client, command, None)),
        },
        Some(Reply::Error(message)) => Err(client.reply_error(message)),
        other => Err(protocol_error(client, "EXEC", other)),
    }
}

fn merge_checked(
    id: &str,
    current: &[u8],
    patch: &str,
    options: &UpdateOptions,
    max_document_bytes: usize,
) -> Result<String, TaskError> {
    let current = std::str::from_utf8(current).map_err(|_| {
        TaskError::corrupt_data(format!("the value of task \"{id}\" is not UTF-8 text"))
    })?;
    if let Some(expected) = &options.expect_status {
        if top_level_status(current).as_deref() != Some(expected.as_str()) {
            return Err(TaskError::conflict(current.to_owned()));
        }
    }
    let merged = merge_patch(current, patch).map_err(|err| match err.0 {
        message if message.starts_with("stored document") => {
            TaskError::corrupt_data(format!("task \"{id}\" cannot be patched: {message}"))
        }
        message => TaskError::invalid_input(message),
    })?;
    if merged.len() > max_document_bytes {
        return Err(TaskError::invalid_input(format!(
            "patched document would be {} bytes; the limit is {}",
            merged.len(),
            max_document_bytes
        )));
    }
    Ok(merged)
}

fn unwatch<C: Connector>(client: &mut Client<C>) -> Result<(), TaskError> {
    client.command(&[b"UNWATCH"], Retry::Never)?;
    Ok(())
}

fn check_batch_size(len: usize) -> Result<(), TaskError> {
    if len > MAX_BATCH {
        return Err(TaskError::invalid_input(format!(
            "batch of {len} tasks is too large; the limit is {MAX_BATCH}"
        )));
    }
    Ok(())
}

/// `prefix*` as a SCAN pattern, with the prefix's glob characters taken literally.
fn glob_escape(prefix: &str) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &byte in prefix.as_bytes() {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::{FakeConnector, Step};
    use crate::ErrorKind;
    use proptest::prelude::*;

    fn open_store(steps: Vec<Step>) -> (Store<FakeConnector>, FakeConnector) {
        let connector = FakeConnector::default();
        let mut all = vec![Step::Reply(b"+PONG\r\n")];
        all.extend(steps);
        connector.0.borrow_mut().connections = vec![Ok(all)].into();
        let store =
            Store::open(&StoreOptions::new("redis://127.0.0.1"), connector.clone()).unwrap();
        (store, connector)
    }

    fn sent(connector: &FakeConnector) -> Vec<Vec<u8>> {
        connector.0.borrow().sent.clone()
    }

    #[test]
    fn set_sends_setex_with_default_ttl_and_the_document_verbatim() {
        let (mut store, connector) = open_store(vec![Step::Reply(b"+OK\r\n")]);
        store.set("t1", "{\"a\": 1 }", None).unwrap();
        assert_eq!(
            sent(&connector)[1],
            b"*4\r\n$5\r\nSETEX\r\n$16\r\nresearch_task:t1\r\n$6\r\n604800\r\n$9\r\n{\"a\": 1 }\r\n"
        );
    }

    #[test]
    fn invalid_input_sends_nothing() {
        let (mut store, connector) = open_store(vec![]);
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let cases: Vec<(&str, &str, Option<u64>)> = vec![
            ("", "{}", None),
            (&long_id, "{}", None),
            ("a\nb", "{}", None),
            ("a\u{7f}", "{}", None),
            ("ok", "[]", None),
            ("ok", "\"x\"", None),
            ("ok", "{", None),
            ("ok", "", None),
            ("ok", "{} {}", None),
            ("ok", "{}", Some(0)),
        ];
        for (id, document, ttl) in cases {
            let err = store.set(id, document, ttl).unwrap_err();
            assert!(
                err.kind() == ErrorKind::InvalidInput,
                "{id:?} {document:?}: {err:?}"
            );
        }
        assert_eq!(store.get("").unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(
            store.delete("\t").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(sent(&connector).len(), 1, "only the handshake went out");
    }

    #[test]
    fn ids_may_hold_unicode_spaces_and_glob_characters() {
        for id in ["café 1", "a*b?c[d]\\e", "🚀", &"x".repeat(MAX_ID_BYTES)] {
            validate_id(id).unwrap();
        }
    }

    #[test]
    fn ping_sends_one_ping_and_maps_its_reply() {
        let (mut store, connector) = open_store(vec![
            Step::Reply(b"+PONG\r\n"),
            Step::Reply(b"-LOADING Redis is loading the dataset in memory\r\n"),
            Step::Reply(b":1\r\n"),
        ]);
        store.ping().unwrap();
        assert_eq!(sent(&connector)[1], b"*1\r\n$4\r\nPING\r\n");
        let loading = store.ping().unwrap_err();
        assert_eq!(loading.kind(), ErrorKind::Server);
        assert!(loading.is_retryable(), "{loading:?}");
        assert_eq!(store.ping().unwrap_err().kind(), ErrorKind::Protocol);
    }

    #[test]
    fn non_utf8_value_is_corrupt_data() {
        let (mut store, _) = open_store(vec![Step::Reply(b"$2\r\n\xff\xfe\r\n")]);
        assert_eq!(store.get("t").unwrap_err().kind(), ErrorKind::CorruptData);
    }

    #[test]
    fn ttl_maps_redis_sentinels() {
        let (mut store, _) = open_store(vec![
            Step::Reply(b":-2\r\n"),
            Step::Reply(b":-1\r\n"),
            Step::Reply(b":604799\r\n"),
        ]);
        assert_eq!(store.ttl("t").unwrap(), None);
        assert_eq!(store.ttl("t").unwrap(), Some(TimeToLive::Persistent));
        assert_eq!(
            store.ttl("t").unwrap(),
            Some(TimeToLive::ExpiresIn(604_799))
        );
    }

    /// The command name and first argument of each command sent after the handshake.
    fn commands(connector: &FakeConnector) -> Vec<String> {
        sent(connector)[1..]
            .iter()
            .map(|bytes| {
                let text = String::from_utf8_lossy(bytes);
                let parts: Vec<&str> = text.split("\r\n").collect();
                format!("{} {}", parts[2], parts.get(4).unwrap_or(&""))
            })
            .collect()
    }

    #[test]
    fn keys_of_a_scan_call_that_do_not_fit_the_page_travel_in_the_cursor() {
        let (mut store, connector) = open_store(vec![
            // Asked for 2, SCAN answers 3 keys: the third waits in the cursor.
            Step::Reply(b"*2\r\n$1\r\n7\r\n*3\r\n$15\r\nresearch_task:a\r\n$15\r\nresearch_task:b\r\n$15\r\nresearch_task:c\r\n"),
            Step::Reply(b":2\r\n:2\r\n"),
            Step::Reply(b"*2\r\n$2\r\n{}\r\n$2\r\n{}\r\n"),
            // The next page reads it first, then continues SCAN from 7, never from 0 again.
            Step::Reply(b":2\r\n"),
            Step::Reply(b"*1\r\n$2\r\n{}\r\n"),
            Step::Reply(b"*2\r\n$1\r\n0\r\n*0\r\n"),
        ]);
        let first = store
            .list(&ListOptions {
                limit: Some(2),
                ..ListOptions::default()
            })
            .unwrap();
        let ids: Vec<&str> = first.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(first.cursor.as_deref(), Some("s7.p63"));
        let second = store
            .list(&ListOptions {
                limit: Some(2),
                cursor: first.cursor,
                ..ListOptions::default()
            })
            .unwrap();
        let ids: Vec<&str> = second.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert_eq!(second.cursor, None);
        assert_eq!(
            commands(&connector),
            [
                "SCAN 0",
                "STRLEN research_task:a",
                "MGET research_task:a",
                "STRLEN research_task:c",
                "MGET research_task:c",
                "SCAN 7"
            ]
        );
    }

    #[test]
    fn a_full_page_that_ends_the_scan_is_the_last_page() {
        let (mut store, _) = open_store(vec![
            Step::Reply(b"*2\r\n$1\r\n0\r\n*1\r\n$15\r\nresearch_task:a\r\n"),
            Step::Reply(b":2\r\n"),
            Step::Reply(b"*1\r\n$2\r\n{}\r\n"),
        ]);
        let page = store
            .list(&ListOptions {
                limit: Some(1),
                ..ListOptions::default()
            })
            .unwrap();
        assert_eq!(page.tasks.len(), 1);
        assert_eq!(page.cursor, None);
    }

    #[test]
    fn a_cluster_listing_gives_up_after_four_scans_per_master() {
        let connector = FakeConnector::default();
        // The handshake and CLUSTER SLOTS: two masters.
        connector.0.borrow_mut().connections = vec![Ok(vec![
            Step::Reply(b"+PONG\r\n"),
            Step::Reply(b"*2\r\n*3\r\n:0\r\n:8000\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n*3\r\n:8001\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n"),
        ])]
        .into();
        let options = StoreOptions::new("redis+cluster://127.0.0.1:7000");
        let mut store = Store::open(&options, connector.clone()).unwrap();
        let listing = |cursor: &str| ListOptions {
            cursor: Some(cursor.into()),
            ..ListOptions::default()
        };
        match store.list(&listing("cr.k8")) {
            Err(err) if err.kind() == ErrorKind::Server => {
                assert!(err.message().starts_with("TRYAGAIN"), "{err}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            store.list(&listing("s1.p61")).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(sent(&connector).len(), 2, "nothing sent for either cursor");
    }

    #[test]
    fn a_page_ends_at_the_byte_budget_before_reading_more() {
        let (mut store, connector) = open_store(vec![
            Step::Reply(b"*2\r\n$1\r\n0\r\n*3\r\n$15\r\nresearch_task:a\r\n$15\r\nresearch_task:b\r\n$15\r\nresearch_task:c\r\n"),
            // a fits, b would pass 4 MiB: only a is read.
            Step::Reply(b":2\r\n:4194304\r\n:2\r\n"),
            Step::Reply(b"*1\r\n$2\r\n{}\r\n"),
        ]);
        let page = store.list(&ListOptions::default()).unwrap();
        assert_eq!(page.tasks.len(), 1);
        assert_eq!(page.cursor.as_deref(), Some("p62.p63"));
        assert_eq!(commands(&connector).len(), 3);
    }

    #[test]
    fn index_mode_set_is_one_script_writing_the_entry_then_the_document() {
        let (mut store, connector) = open_store(vec![
            Step::Reply(b"+OK\r\n"),
            Step::Reply(b"+OK\r\n"),
            Step::Reply(b"+OK\r\n"),
        ]);
        let document = r#"{"status": "pending"}"#;
        store.set("t1", document, None).unwrap();
        store.set_listing_mode(ListingMode::Index);
        store.set("t1", document, None).unwrap();
        // A document without a status has no entry to write.
        store.set("t2", "{}", None).unwrap();
        let sent = sent(&connector);
        assert!(sent[1].starts_with(b"*4\r\n$5\r\nSETEX\r\n"));
        let script = String::from_utf8_lossy(&sent[2]);
        // EVAL <script> 2 <index> <key> <ttl ms> <id> <fraction> set <margin> SETEX …
        assert!(script.starts_with("*14\r\n$4\r\nEVAL\r\n"), "{script}");
        assert!(
            script.contains("\r\n$1\r\n2\r\n$28\r\nresearch_task_status:pending\r\n$16\r\nresearch_task:t1\r\n$9\r\n604800000\r\n$2\r\nt1\r\n"),
            "{script}"
        );
        assert!(
            script.ends_with("$5\r\nSETEX\r\n$16\r\nresearch_task:t1\r\n$6\r\n604800\r\n$21\r\n{\"status\": \"pending\"}\r\n"),
            "{script}"
        );
        assert!(sent[3].starts_with(b"*4\r\n$5\r\nSETEX\r\n$16\r\nresearch_task:t2"));
    }

    proptest! {
        #[test]
        fn validate_document_accepts_exactly_json_objects(text in "[{}\\[\\]\":,a-c0-9 ]{0,24}") {
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            let is_object = matches!(parsed, Ok(serde_json::Value::Object(_)));
            prop_assert_eq!(validate_document(&text, 1 << 20).is_ok(), is_object);
        }
    }
}
