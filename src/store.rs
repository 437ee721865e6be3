//! Task semantics on top of the client: ids, keys, documents and TTLs.
//!
//! Everything a caller can get wrong is checked here, before a byte is sent, so invalid
//! input never reaches Redis and never half-writes anything.

use crate::backend::Backend;
use crate::client::{Client, Retry};
use crate::cluster::{ListCursor, NodeScan, MAX_PENDING_CURSOR_BYTES};
use crate::config::{check_ttl, ConfigError, StoreOptions, StoreSettings};
use crate::document::{merge_patch, top_level_status, validate_document, validate_patch};
use crate::resp::Reply;
use crate::transport::Connector;
use crate::TaskError;

pub use taskstore_model::{validate_id, MAX_ID_BYTES};

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
/// On a cluster, a listing scans at most this many masters per master in the slot map
/// before giving up on slots that keep migrating.
const MAX_SCAN_ROUNDS: u32 = 4;

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
        })
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
        self.redis.on_key(&key, |client| {
            client.set_with_ttl(&key, ttl, document.as_bytes())
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
        // A redirect is an answer instead of executing, so following it never sends the
        // write twice.
        self.redis.on_key(&key, |client| {
            client.set_if_absent(&key, ttl, document.as_bytes())
        })
    }

    /// Sets task `id`'s TTL without rewriting it; whether the task exists.
    pub fn expire(&mut self, id: &str, ttl_seconds: u64) -> Result<bool, TaskError> {
        let key = self.key(id)?;
        let ttl = self.checked_ttl(Some(ttl_seconds))?;
        self.redis.on_key(&key, |client| client.expire(&key, ttl))
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
        let replies = self.redis.batch(&key_refs, &commands, Retry::Idempotent)?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                Reply::SimpleString(ok) if ok == b"OK" => Ok(()),
                Reply::Error(message) => Err(self.redis.reply_error(message)),
                other => Err(self.redis.unexpected_reply("SETEX", &other)),
            })
            .collect())
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
                if !self.scan_step(&mut cursor, &pattern, count)? {
                    return Ok(Page {
                        tasks: page.tasks,
                        cursor: None,
                    });
                }
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

    /// One `SCAN` call where `cursor` points, its keys' ids appended to `cursor.pending`
    /// and `cursor` moved past it; on a cluster, starting or finishing a master's scan as
    /// needed. `false` once the listing is over.
    fn scan_step(
        &mut self,
        cursor: &mut ListCursor,
        pattern: &[u8],
        count: u32,
    ) -> Result<bool, TaskError> {
        let Some(cluster) = self.redis.cluster() else {
            let Some(position) = cursor.position else {
                return Ok(false);
            };
            let (next, keys) = self
                .redis
                .scan(None, position, pattern, count)?
                .unwrap_or_default();
            cursor.position = (next != 0).then_some(next);
            self.add_pending(cursor, keys);
            return Ok(true);
        };
        if cursor.node_scan.is_none() {
            let limit = MAX_SCAN_ROUNDS * cluster.master_count().max(1) as u32;
            if cursor.node_scans >= limit {
                return Err(TaskError::server(format!(
                    "TRYAGAIN hash slots kept migrating: the listing scanned {limit} masters without seeing every slot settled; list again from the start"
                )));
            }
            let Some(node) = cluster.next_uncovered_master(&cursor.covered)? else {
                return Ok(false);
            };
            cursor.node_scans += 1;
            if let Some(owned_before) = cluster.stable_slots(&node)? {
                cursor.node_scan = Some(NodeScan {
                    node,
                    position: 0,
                    owned_before,
                });
            }
            return Ok(true);
        }
        let Some(scan) = cursor.node_scan.as_mut() else {
            return Ok(true);
        };
        let Some((next, keys)) =
            self.redis
                .scan(Some(&scan.node), scan.position, pattern, count)?
        else {
            // No longer a master (failed over, removed): its slots stay uncovered and are
            // scanned again where they live now.
            cursor.node_scan = None;
            return Ok(true);
        };
        scan.position = next;
        if next == 0 {
            let owned_after = match self.redis.cluster() {
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
        self.add_pending(cursor, keys);
        Ok(true)
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
    // Never resent: if the connection dies here the write may have happened.
    let mut replies = client.pipeline(&[&[b"MULTI"], &set, &[b"EXEC"]], Retry::Never)?;
    let exec = replies.pop();
    let queued = replies.pop();
    let multi = replies.pop();
    expect_ok(client, multi, "MULTI")?;
    // A queued command refused (on a cluster: redirected) aborts the EXEC: nothing written.
    if let Some(Reply::Error(message)) = queued {
        return Err(client.reply_error(message));
    }
    match exec {
        // Someone wrote the key after our WATCH: start over from their version.
        Some(Reply::Null) => Ok(None),
        Some(Reply::Array(results)) => match results.into_iter().next() {
            Some(Reply::SimpleString(ok)) if ok == b"OK" => Ok(Some(Some(merged))),
            Some(Reply::Error(message)) => Err(client.reply_error(message)),
            other => Err(protocol_error(client, "EXEC", other)),
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

fn expect_ok<C: Connector>(
    client: &Client<C>,
    reply: Option<Reply>,
    command: &str,
) -> Result<(), TaskError> {
    match reply {
        Some(Reply::SimpleString(ok)) if ok == b"OK" => Ok(()),
        Some(Reply::Error(message)) => Err(client.reply_error(message)),
        other => Err(protocol_error(client, command, other)),
    }
}

fn protocol_error<C: Connector>(
    client: &Client<C>,
    command: &str,
    reply: Option<Reply>,
) -> TaskError {
    match reply {
        Some(reply) => client.unexpected_reply(command, &reply),
        None => TaskError::protocol(format!("no reply to {command}")),
    }
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

    proptest! {
        #[test]
        fn validate_document_accepts_exactly_json_objects(text in "[{}\\[\\]\":,a-c0-9 ]{0,24}") {
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            let is_object = matches!(parsed, Ok(serde_json::Value::Object(_)));
            prop_assert_eq!(validate_document(&text, 1 << 20).is_ok(), is_object);
        }
    }
}
