//! Stores: one wasmtime `Store` and component instance each, holding one guest `store`.

use std::future::Future;
use std::time::Duration;

use wasmtime::component::ResourceAny;
use wasmtime::Store;

use crate::bindings::exports::taskstore::storage::task_storage as wit;
use crate::bindings::RedisTaskStore;
use crate::engine::deadline_ticks;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{from_guest, TaskError};
use crate::instance::InstanceState;
use crate::network::NetworkPolicy;
use crate::options::Options;
use crate::output::GuestOutput;
use crate::runtime::Runtime;

/// Bytes of the component's stdout/stderr kept for error reports.
const GUEST_OUTPUT_BYTES: usize = 16 * 1024;

// The host API's value types are the component's own (its crate builds natively too): one
// definition, documented there.
pub use taskstore::store::{
    ListOptions, ListingMode, Page, ReindexPage, Task, TimeToLive, TtlPolicy, UpdateOptions,
};

impl Runtime {
    /// Opens a store: instantiates the component and calls its `store.open`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed URL or options; [`ErrorKind::Connection`]
    /// if the host name does not resolve or Redis cannot be reached; any other error of the
    /// component's `open`; [`ErrorKind::Host`] if the component cannot be instantiated or
    /// traps.
    pub async fn open_async(&self, options: Options) -> Result<AsyncTaskStore, TaskError> {
        AsyncTaskStore::open(self.clone(), options).await
    }
}

/// A running instance with an open guest `store`.
struct Instance {
    store: Store<InstanceState>,
    guest: RedisTaskStore,
    handle: ResourceAny,
    output: GuestOutput,
    /// How long each call may run; see [`RuntimeBuilder::call_deadline`](crate::RuntimeBuilder::call_deadline).
    call_deadline: Duration,
    /// The same in epoch ticks: the bound on guest code, where the timer above bounds the
    /// host calls it waits on.
    deadline_ticks: u64,
}

/// A task store backed by one component instance; the async API.
///
/// Calls take `&mut self`: the component handles one call at a time. Run them on the thread
/// that drives the tokio runtime (a current-thread runtime, or inside a spawned task);
/// blocking on them from elsewhere costs a thread hop per socket operation.
///
/// If the component traps, or a call runs past the runtime's per-call deadline
/// ([`RuntimeBuilder::call_deadline`](crate::RuntimeBuilder::call_deadline)), the call fails with [`ErrorKind::Host`], the instance
/// is thrown away, and the next call starts a new one and opens the store again with the
/// same options. The same happens when a call's future is dropped before it completes (a
/// timeout around it, say): the instance may have sent half a command. Dropping an
/// `AsyncTaskStore` releases everything, including the Redis connection, but without
/// running the component's destructor; [`AsyncTaskStore::close`] runs it.
pub struct AsyncTaskStore {
    runtime: Runtime,
    options: Options,
    /// The password, in every form a message could show it, for scrubbing messages.
    secrets: Vec<String>,
    /// `None` during a call, after a trap or cancelled call (until the next call), and after
    /// `close`.
    instance: Option<Instance>,
}

impl std::fmt::Debug for AsyncTaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTaskStore")
            .field("options", &self.options)
            .field("instantiated", &self.instance.is_some())
            .finish_non_exhaustive()
    }
}

impl AsyncTaskStore {
    pub(crate) async fn open(runtime: Runtime, options: Options) -> Result<Self, TaskError> {
        let secrets = options.secrets();
        let runtime = runtime
            .for_url(&options.url)
            .map_err(|e| e.redact(&secrets))?;
        let instance = start(&runtime, &options)
            .await
            .map_err(|e| e.redact(&secrets))?;
        Ok(AsyncTaskStore {
            runtime,
            options,
            secrets,
            instance: Some(instance),
        })
    }

    /// The document of task `id`, or `None` if there is no such task.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed id; [`ErrorKind::CorruptData`] if the value
    /// is not UTF-8; [`ErrorKind::Server`] (e.g. the key holds a non-string);
    /// [`ErrorKind::Protocol`] if the value is too large; [`ErrorKind::Connection`],
    /// [`ErrorKind::Timeout`]; [`ErrorKind::Host`] if the component trapped.
    pub async fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        self.call(async |guest, store, handle| guest.call_get(store, handle, id).await)
            .await
    }

    /// Stores `document` as task `id`, expiring after `ttl_seconds` (or the default TTL).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed id, a document that is not one JSON object
    /// or is too large, or a TTL out of range (nothing is written); [`ErrorKind::Server`]
    /// (e.g. `OOM`, `READONLY`); [`ErrorKind::Connection`], [`ErrorKind::Timeout`] (the write
    /// may have been applied); [`ErrorKind::Host`] if the component trapped.
    pub async fn set(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(), TaskError> {
        self.call(async |guest, store, handle| {
            guest
                .call_set(store, handle, id, document, ttl_seconds)
                .await
        })
        .await
    }

    /// Removes task `id`; `true` if there was one.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed id; [`ErrorKind::Server`];
    /// [`ErrorKind::Connection`], [`ErrorKind::Timeout`]; [`ErrorKind::Host`] if the
    /// component trapped.
    pub async fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        self.call(async |guest, store, handle| guest.call_delete(store, handle, id).await)
            .await
    }

    /// Time left before task `id` expires, or `None` if there is no such task.
    ///
    /// # Errors
    /// As [`AsyncTaskStore::delete`].
    pub async fn ttl(&mut self, id: &str) -> Result<Option<TimeToLive>, TaskError> {
        let ttl = self
            .call(async |guest, store, handle| guest.call_ttl(store, handle, id).await)
            .await?;
        Ok(ttl.map(|ttl| match ttl {
            wit::TimeToLive::ExpiresIn(seconds) => TimeToLive::ExpiresIn(seconds),
            wit::TimeToLive::Persistent => TimeToLive::Persistent,
        }))
    }

    /// Whether task `id` exists.
    ///
    /// # Errors
    /// As [`AsyncTaskStore::delete`].
    pub async fn exists(&mut self, id: &str) -> Result<bool, TaskError> {
        self.call(async |guest, store, handle| guest.call_exists(store, handle, id).await)
            .await
    }

    /// Checks that Redis answers: one round trip within the store's timeout, changing
    /// nothing (see the WIT `ping`; on a cluster, the master serving the key prefix's slot).
    ///
    /// # Errors
    /// `connection`, `timeout`, `authentication`, `server` (e.g. `LOADING`), `protocol`.
    pub async fn ping(&mut self) -> Result<(), TaskError> {
        self.call(async |guest, store, handle| guest.call_ping(store, handle).await)
            .await
    }

    /// Stores `document` as task `id` only if there is no such task, expiring after
    /// `ttl_seconds` (or the default TTL); `true` if it was created, `false` if a task with
    /// this id exists (it is left unchanged).
    ///
    /// # Errors
    /// As [`AsyncTaskStore::set`]. It is never resent on a new connection, so after
    /// [`ErrorKind::Connection`] or [`ErrorKind::Timeout`] the task may or may not have been
    /// created.
    pub async fn create(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<bool, TaskError> {
        self.call(async |guest, store, handle| {
            guest
                .call_create(store, handle, id, document, ttl_seconds)
                .await
        })
        .await
    }

    /// Applies the JSON merge patch `patch` (RFC 7386, a JSON object) to task `id`
    /// atomically and returns the new document, or `None` if there is no such task (nothing
    /// is written then).
    ///
    /// Concurrent writers, whether other stores, other processes or plain Redis clients,
    /// never lose an update: the read-modify-write is retried when the task changes
    /// underneath it. Members the patch does not name keep their exact text; see the WIT
    /// `update` for the layout of what it does rewrite.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`], carrying the current document, when
    /// [`UpdateOptions::expect_status`] does not match (nothing is written);
    /// [`ErrorKind::Contended`] when it gave up after the task changed on every attempt;
    /// [`ErrorKind::InvalidInput`] for a malformed id, a patch that is not a JSON object, a
    /// result larger than the document limit, or a TTL out of range;
    /// [`ErrorKind::CorruptData`] when the stored value is not a UTF-8 JSON object;
    /// [`ErrorKind::Server`]; [`ErrorKind::Connection`], [`ErrorKind::Timeout`] (the update
    /// may or may not have been applied, never twice); [`ErrorKind::Host`] if the component
    /// trapped.
    pub async fn update(
        &mut self,
        id: &str,
        patch: &str,
        options: &UpdateOptions,
    ) -> Result<Option<String>, TaskError> {
        let options = wit::UpdateOptions {
            expect_status: options.expect_status.clone(),
            ttl: Some(match options.ttl {
                TtlPolicy::Keep => wit::TtlPolicy::Keep,
                TtlPolicy::Set(seconds) => wit::TtlPolicy::Set(seconds),
            }),
        };
        self.call(async |guest, store, handle| {
            guest.call_update(store, handle, id, patch, &options).await
        })
        .await
    }

    /// Sets task `id` to expire `ttl_seconds` from now without rewriting it; `false` if
    /// there is no such task.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a malformed id or a TTL outside 1..=3153600000;
    /// [`ErrorKind::Server`]; [`ErrorKind::Connection`], [`ErrorKind::Timeout`];
    /// [`ErrorKind::Host`] if the component trapped.
    pub async fn expire(&mut self, id: &str, ttl_seconds: u64) -> Result<bool, TaskError> {
        self.call(async |guest, store, handle| {
            guest.call_expire(store, handle, id, ttl_seconds).await
        })
        .await
    }

    /// One page of tasks, optionally only those with a given status.
    ///
    /// Tasks written by any client are found (keys are enumerated with `SCAN`, never
    /// `KEYS`); a task deleted or expired before it is read is not returned. Following the
    /// cursors from `None` to `None` returns every task that exists for the whole listing
    /// at least once, whatever is added, deleted or expires meanwhile (also on a cluster
    /// whose slots move); while nothing changes, exactly once. A page ends early once its
    /// documents reach 4 MiB. See the WIT's `list`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a limit out of range or a malformed cursor;
    /// [`ErrorKind::Server`]; [`ErrorKind::Connection`], [`ErrorKind::Timeout`];
    /// [`ErrorKind::Host`] if the component trapped.
    pub async fn list(&mut self, options: &ListOptions) -> Result<Page, TaskError> {
        let options = wit::ListOptions {
            status: options.status.clone(),
            limit: options.limit,
            cursor: options.cursor.clone(),
        };
        let page = self
            .call(async |guest, store, handle| guest.call_list(store, handle, &options).await)
            .await?;
        Ok(Page {
            tasks: page.tasks.into_iter().map(Task::from).collect(),
            cursor: page.cursor,
        })
    }

    /// Enters one page of every task (at most `limit`, default 1000) in the status index,
    /// whatever this store's listing mode; call again with the returned cursor until
    /// `None`. See the WIT's `reindex`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for a limit out of range or a malformed cursor;
    /// [`ErrorKind::Server`]; [`ErrorKind::Connection`], [`ErrorKind::Timeout`] (call again
    /// with the same cursor); [`ErrorKind::Host`] if the component trapped.
    pub async fn reindex(
        &mut self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ReindexPage, TaskError> {
        let cursor = cursor.map(str::to_owned);
        let page = self
            .call(async |guest, store, handle| {
                guest
                    .call_reindex(store, handle, cursor.as_deref(), limit)
                    .await
            })
            .await?;
        Ok(ReindexPage {
            visited: page.visited,
            indexed: page.indexed,
            cursor: page.cursor,
        })
    }

    /// The documents of `ids`, in order, `None` where there is no such task; one round trip.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if any id is malformed or there are more than 10000 ids
    /// (nothing is sent); [`ErrorKind::CorruptData`] if any value is not UTF-8;
    /// [`ErrorKind::Server`]; [`ErrorKind::Connection`], [`ErrorKind::Timeout`];
    /// [`ErrorKind::Host`] if the component trapped.
    pub async fn get_many(&mut self, ids: &[String]) -> Result<Vec<Option<String>>, TaskError> {
        self.call(async |guest, store, handle| guest.call_get_many(store, handle, ids).await)
            .await
    }

    /// Stores every task in `tasks`, each expiring after `ttl_seconds` (or the default TTL),
    /// in one round trip. The result has one entry per task, in order: `Ok`, or the
    /// [`ErrorKind::Server`] error Redis gave that write (e.g. `OOM`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if any id or document is invalid, the TTL is out of range,
    /// or there are more than 10000 tasks (nothing is written); [`ErrorKind::Connection`],
    /// [`ErrorKind::Timeout`] (some writes may have been applied); [`ErrorKind::Host`] if
    /// the component trapped.
    pub async fn set_many(
        &mut self,
        tasks: &[Task],
        ttl_seconds: Option<u64>,
    ) -> Result<Vec<Result<(), TaskError>>, TaskError> {
        let tasks: Vec<wit::Task> = tasks
            .iter()
            .map(|task| wit::Task {
                id: task.id.clone(),
                document: task.document.clone(),
            })
            .collect();
        let results = self
            .call(async |guest, store, handle| {
                guest
                    .call_set_many(store, handle, &tasks, ttl_seconds)
                    .await
            })
            .await?;
        Ok(results
            .into_iter()
            .map(|result| result.map_err(|error| from_guest(error).redact(&self.secrets)))
            .collect())
    }

    /// Removes every task in `ids` in one round trip; per id, in order, whether it was
    /// there.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] if any id is malformed or there are more than 10000 ids
    /// (nothing is sent); [`ErrorKind::Server`]; [`ErrorKind::Connection`],
    /// [`ErrorKind::Timeout`]; [`ErrorKind::Host`] if the component trapped.
    pub async fn delete_many(&mut self, ids: &[String]) -> Result<Vec<bool>, TaskError> {
        self.call(async |guest, store, handle| guest.call_delete_many(store, handle, ids).await)
            .await
    }

    /// Drops the guest `store` (closing its Redis connection) and the instance.
    ///
    /// The guest's destructor can only fail by trapping, which leaves nothing to clean up
    /// that dropping the instance does not, so there is no error to report.
    pub async fn close(mut self) {
        self.shut_down().await;
    }

    pub(crate) async fn shut_down(&mut self) {
        if let Some(Instance {
            mut store,
            handle,
            call_deadline,
            deadline_ticks,
            ..
        }) = self.instance.take()
        {
            store.set_epoch_deadline(deadline_ticks);
            let _ = handle
                .resource_drop_async(&mut store)
                .bounded(call_deadline)
                .await;
        }
    }

    /// Runs one guest `store` method on the live instance (or a new one), bounded by the
    /// per-call deadline, and maps its outcome ([`AsyncTaskStore::finish`]).
    async fn call<T>(
        &mut self,
        method: impl AsyncFnOnce(
            wit::GuestStore<'_>,
            &mut Store<InstanceState>,
            ResourceAny,
        ) -> wasmtime::Result<Result<T, wit::Error>>,
    ) -> Result<T, TaskError> {
        let mut instance = self.take_instance().await?;
        let guest = instance.guest.taskstore_storage_task_storage().store();
        let outcome = method(guest, &mut instance.store, instance.handle)
            .bounded(instance.call_deadline)
            .await;
        self.finish(instance, outcome)
    }

    /// The live instance, or a new one if the last call trapped or was cancelled.
    ///
    /// The caller owns the instance for the length of its call and hands it back through
    /// [`AsyncTaskStore::finish`]. A call whose future is dropped midway thus drops the
    /// instance with it, and with it a connection that may hold half a command.
    async fn take_instance(&mut self) -> Result<Instance, TaskError> {
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => start(&self.runtime, &self.options)
                .await
                .map_err(|e| e.redact(&self.secrets))?,
        };
        // Each call gets the whole deadline, whatever earlier calls used.
        instance.store.set_epoch_deadline(instance.deadline_ticks);
        Ok(instance)
    }

    /// Maps a call's outcome and keeps the instance unless it trapped: the component's
    /// error case for case, a trap to [`ErrorKind::Host`]. A trapped instance refuses further
    /// calls, so it is dropped.
    fn finish<T>(
        &mut self,
        instance: Instance,
        outcome: wasmtime::Result<Result<T, wit::Error>>,
    ) -> Result<T, TaskError> {
        match outcome {
            Ok(result) => {
                self.instance = Some(instance);
                result.map_err(|error| from_guest(error).redact(&self.secrets))
            }
            Err(trap) => Err(trapped(&trap, &instance.output).redact(&self.secrets)),
        }
    }
}

/// Instantiates the component for `options` and opens its `store`.
async fn start(runtime: &Runtime, options: &Options) -> Result<Instance, TaskError> {
    let timeout = Duration::from_millis(u64::from(
        options
            .timeout_ms
            .unwrap_or(taskstore::config::DEFAULT_TIMEOUT_MS),
    ));
    let url = options.guest_url()?;
    let policy = NetworkPolicy::for_url_allowing(
        &url,
        &options.tls_settings(),
        timeout,
        &options.cluster_allow,
    )
    .await?;
    let output = GuestOutput::new(GUEST_OUTPUT_BYTES);

    // Instantiation and `open` share one deadline; every later call is given its own.
    let call_deadline = runtime.call_deadline(options.timeout_ms);
    let deadline_ticks = deadline_ticks(call_deadline);
    let mut store = runtime.new_store(&policy, &output, call_deadline);

    let guest = runtime
        .pre()
        .instantiate_async(&mut store)
        .await
        .map_err(|e| {
            TaskError::host(format!(
                "cannot instantiate the component: {}",
                one_line(&e)
            ))
        })?;
    let opened = guest
        .taskstore_storage_task_storage()
        .store()
        .call_open(&mut store, &to_wit(options, url))
        .bounded(call_deadline)
        .await;
    match opened {
        Ok(Ok(handle)) => Ok(Instance {
            store,
            guest,
            handle,
            output,
            call_deadline,
            deadline_ticks,
        }),
        Ok(Err(error)) => Err(from_guest(error)),
        Err(trap) => Err(trapped(&trap, &output)),
    }
}

impl From<wit::Task> for Task {
    fn from(task: wit::Task) -> Task {
        Task {
            id: task.id,
            document: task.document,
        }
    }
}

/// The component's options; `url` is [`Options::guest_url`], password included.
fn to_wit(options: &Options, url: String) -> wit::Options {
    wit::Options {
        url,
        key_prefix: options.key_prefix.clone(),
        default_ttl_seconds: options.default_ttl_seconds,
        timeout_ms: options.timeout_ms,
        max_document_bytes: options.max_document_bytes,
        tls_ca_certificates: options.tls_ca_certificates.clone(),
        danger_accept_invalid_certificates: Some(options.danger_accept_invalid_certificates),
        listing: options.listing.map(|mode| match mode {
            ListingMode::Scan => wit::ListingMode::Scan,
            ListingMode::Index => wit::ListingMode::Index,
        }),
    }
}

/// A trap (or other failure inside a call) as a one-line [`ErrorKind::Host`], with the
/// last line the component wrote, which for a Rust guest is its panic message.
fn trapped(error: &wasmtime::Error, output: &GuestOutput) -> TaskError {
    let mut message = format!("the component trapped: {}", one_line(error));
    if let Some(line) = output.last_line() {
        message.push_str(&format!(" (component output: {line})"));
    }
    message.push_str("; the next call starts a new instance");
    TaskError::host(message)
}

/// The trap code if there is one (the top-level message is a multi-line wasm backtrace),
/// else the innermost cause.
fn one_line(error: &wasmtime::Error) -> String {
    let text = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => {
            "the call ran past the host's per-call deadline".to_owned()
        }
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    text.replace(['\n', '\r'], " ")
}

/// Bounds a guest call in wall-clock time.
///
/// The epoch deadline stops guest code that runs too long, but not a guest blocked in a host
/// call that never completes: wasmtime-wasi 48, for one, waits without end for a pending
/// TCP write when the guest drops the stream of a connection whose peer stopped reading.
trait Bounded: Future + Sized {
    /// The call, or the interrupt trap once `deadline` has passed (the call is dropped, and
    /// with it the instance's progress: the caller discards the instance).
    fn bounded<T>(self, deadline: Duration) -> impl Future<Output = wasmtime::Result<T>>
    where
        Self: Future<Output = wasmtime::Result<T>>,
    {
        async move {
            match tokio::time::timeout(deadline, self).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(wasmtime::Trap::Interrupt.into()),
            }
        }
    }
}

impl<F: Future> Bounded for F {}

/// The blocking API: an [`AsyncTaskStore`] driven by its own current-thread tokio runtime.
///
/// Do not use it from inside an async runtime (its calls block the thread, and tokio
/// refuses to nest runtimes); use [`AsyncTaskStore`] there. Dropping it closes the store
/// as [`TaskStore::close`] does.
#[derive(Debug)]
pub struct TaskStore {
    // Declared before `tokio` so it is dropped first, while its sockets' reactor still runs.
    inner: AsyncTaskStore,
    tokio: tokio::runtime::Runtime,
}

impl TaskStore {
    /// Opens a store; see [`Runtime::open_async`].
    ///
    /// # Errors
    /// As [`Runtime::open_async`]; [`ErrorKind::Host`] if no tokio runtime can be created.
    pub fn open(runtime: &Runtime, options: Options) -> Result<TaskStore, TaskError> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TaskError::host(format!("cannot start a tokio runtime: {e}")))?;
        let inner = tokio.block_on(runtime.open_async(options))?;
        Ok(TaskStore { inner, tokio })
    }

    /// See [`AsyncTaskStore::get`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::get`].
    pub fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        self.tokio.block_on(self.inner.get(id))
    }

    /// See [`AsyncTaskStore::set`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::set`].
    pub fn set(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(), TaskError> {
        self.tokio
            .block_on(self.inner.set(id, document, ttl_seconds))
    }

    /// See [`AsyncTaskStore::delete`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::delete`].
    pub fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        self.tokio.block_on(self.inner.delete(id))
    }

    /// See [`AsyncTaskStore::ttl`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::ttl`].
    pub fn ttl(&mut self, id: &str) -> Result<Option<TimeToLive>, TaskError> {
        self.tokio.block_on(self.inner.ttl(id))
    }

    /// See [`AsyncTaskStore::exists`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::exists`].
    pub fn exists(&mut self, id: &str) -> Result<bool, TaskError> {
        self.tokio.block_on(self.inner.exists(id))
    }

    /// See [`AsyncTaskStore::ping`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::ping`].
    pub fn ping(&mut self) -> Result<(), TaskError> {
        self.tokio.block_on(self.inner.ping())
    }

    /// See [`AsyncTaskStore::create`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::create`].
    pub fn create(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<bool, TaskError> {
        self.tokio
            .block_on(self.inner.create(id, document, ttl_seconds))
    }

    /// See [`AsyncTaskStore::update`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::update`].
    pub fn update(
        &mut self,
        id: &str,
        patch: &str,
        options: &UpdateOptions,
    ) -> Result<Option<String>, TaskError> {
        self.tokio.block_on(self.inner.update(id, patch, options))
    }

    /// See [`AsyncTaskStore::expire`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::expire`].
    pub fn expire(&mut self, id: &str, ttl_seconds: u64) -> Result<bool, TaskError> {
        self.tokio.block_on(self.inner.expire(id, ttl_seconds))
    }

    /// See [`AsyncTaskStore::list`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::list`].
    pub fn list(&mut self, options: &ListOptions) -> Result<Page, TaskError> {
        self.tokio.block_on(self.inner.list(options))
    }

    /// See [`AsyncTaskStore::reindex`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::reindex`].
    pub fn reindex(
        &mut self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ReindexPage, TaskError> {
        self.tokio.block_on(self.inner.reindex(cursor, limit))
    }

    /// See [`AsyncTaskStore::get_many`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::get_many`].
    pub fn get_many(&mut self, ids: &[String]) -> Result<Vec<Option<String>>, TaskError> {
        self.tokio.block_on(self.inner.get_many(ids))
    }

    /// See [`AsyncTaskStore::set_many`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::set_many`].
    pub fn set_many(
        &mut self,
        tasks: &[Task],
        ttl_seconds: Option<u64>,
    ) -> Result<Vec<Result<(), TaskError>>, TaskError> {
        self.tokio.block_on(self.inner.set_many(tasks, ttl_seconds))
    }

    /// See [`AsyncTaskStore::delete_many`].
    ///
    /// # Errors
    /// As [`AsyncTaskStore::delete_many`].
    pub fn delete_many(&mut self, ids: &[String]) -> Result<Vec<bool>, TaskError> {
        self.tokio.block_on(self.inner.delete_many(ids))
    }

    /// Drops the guest `store` and the instance; see [`AsyncTaskStore::close`].
    pub fn close(mut self) {
        self.tokio.block_on(self.inner.shut_down());
    }
}

impl Drop for TaskStore {
    fn drop(&mut self) {
        // Blocking inside another runtime would panic; there, dropping the instance without
        // the guest's destructor still closes the connection. After `close` this is a no-op.
        if tokio::runtime::Handle::try_current().is_err() {
            self.tokio.block_on(self.inner.shut_down());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use taskstore_testing::redis_server::{RedisServer, RefusingPort};

    const DOC: &str = r#"{"id":"t1","status":"pending","progress":0}"#;

    fn runtime() -> Runtime {
        Runtime::builder().build().unwrap()
    }

    fn open(server: &RedisServer) -> TaskStore {
        TaskStore::open(&runtime(), Options::new(server.url())).unwrap()
    }

    /// `ttl` is an expiry of `expected` seconds, or at most 2 less (the seconds the test
    /// took); never persistent.
    #[track_caller]
    fn assert_expires_within(ttl: Option<TimeToLive>, expected: u64) {
        match ttl {
            Some(TimeToLive::ExpiresIn(left)) => assert!(
                (expected - 2..=expected).contains(&left),
                "{left} s left, expected {expected}"
            ),
            other => panic!("expected an expiry of {expected} s, got {other:?}"),
        }
    }

    /// Servers hold stores across `.await`s on multi-threaded runtimes: the stores and their
    /// futures must be `Send`. `tokio::spawn` only compiles for `Send` futures, and the calls
    /// run for real, so the test also fails if they stop working.
    #[test]
    fn stores_and_their_futures_are_send() {
        fn send<T: Send>(value: T) -> T {
            value
        }
        let server = RedisServer::start().unwrap();
        let blocking = send(open(&server));
        blocking.close();
        let runtime = runtime();
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let url = server.url();
        tokio.block_on(async {
            let store =
                tokio::spawn(
                    async move { send(runtime.open_async(Options::new(url))).await.unwrap() },
                )
                .await
                .unwrap();
            let mut store = tokio::spawn(async move {
                let mut store = send(store);
                send(store.set("x", DOC, None)).await.unwrap();
                assert_eq!(send(store.get("x")).await.unwrap().as_deref(), Some(DOC));
                store
            })
            .await
            .unwrap();
            assert!(send(store.exists("x")).await.unwrap());
            tokio::spawn(store.close()).await.unwrap();
        });
    }

    #[test]
    fn task_life_cycle_round_trips() {
        let server = RedisServer::start().unwrap();
        let mut store = open(&server);
        assert_eq!(store.get("t1").unwrap(), None);
        assert!(!store.exists("t1").unwrap());
        assert_eq!(store.ttl("t1").unwrap(), None);
        store.set("t1", DOC, None).unwrap();
        assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
        assert!(store.exists("t1").unwrap());
        // Redis counts whole seconds down: a second may pass between the write and the read.
        assert_expires_within(store.ttl("t1").unwrap(), 604_800);
        store.set("t1", DOC, Some(60)).unwrap();
        assert_expires_within(store.ttl("t1").unwrap(), 60);
        assert!(store.delete("t1").unwrap());
        assert!(!store.delete("t1").unwrap());
        store.close();
    }

    #[test]
    fn async_store_works_on_a_current_thread_runtime() {
        let server = RedisServer::start().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let mut store = runtime()
                .open_async(Options::new(server.url()))
                .await
                .unwrap();
            store.set("a", DOC, None).await.unwrap();
            assert_eq!(store.get("a").await.unwrap().as_deref(), Some(DOC));
            store.close().await;
        });
    }

    #[test]
    fn name_in_url_is_resolved_and_allowed() {
        let server = RedisServer::start().unwrap();
        let url = format!("redis://localhost:{}", server.port());
        let mut store = TaskStore::open(&runtime(), Options::new(url)).unwrap();
        assert!(!store.exists("x").unwrap());
    }

    #[test]
    fn malformed_url_is_invalid_input() {
        match TaskStore::open(&runtime(), Options::new("http://:hunter2@localhost")) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {
                assert!(!error.message().contains("hunter2"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_connection_is_a_connection_error() {
        let refusing = RefusingPort::bind().unwrap();
        let port = refusing.port();
        let url = format!("redis://127.0.0.1:{port}");
        match TaskStore::open(&runtime(), Options::new(url)) {
            Err(error) if error.kind() == ErrorKind::Connection => {
                assert!(error.message().contains(&port.to_string()), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_password_is_an_authentication_error_without_the_password() {
        let server = RedisServer::builder()
            .args(["--requirepass", "right-password"])
            .start()
            .unwrap();
        let url = format!("redis://:wrong-password@127.0.0.1:{}", server.port());
        let error = TaskStore::open(&runtime(), Options::new(url)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Authentication, "{error:?}");
        assert!(!error.to_string().contains("wrong-password"), "{error}");
        let url = format!("redis://:right-password@127.0.0.1:{}", server.port());
        let mut store = TaskStore::open(&runtime(), Options::new(url)).unwrap();
        store.set("t", DOC, None).unwrap();
    }

    #[test]
    fn invalid_document_is_invalid_input() {
        let server = RedisServer::start().unwrap();
        let mut store = open(&server);
        let error = store.set("t", "[1, 2]", None).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error:?}");
    }

    #[test]
    fn trap_is_a_host_error_and_the_next_call_gets_a_new_instance() {
        let server = RedisServer::start().unwrap();
        let runtime = Runtime::builder()
            .memory_limit(4 * 1024 * 1024)
            .build()
            .unwrap();
        let mut store = TaskStore::open(&runtime, Options::new(server.url())).unwrap();
        store.set("small", DOC, None).unwrap();

        // Lowering the argument alone needs more memory than the instance may have.
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(6 * 1024 * 1024));
        let error = store.set("big", &big, None).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Host, "{error:?}");
        assert!(error.message().contains("trapped"), "{error}");
        assert!(!error.to_string().contains('\n'));

        assert_eq!(store.get("small").unwrap().as_deref(), Some(DOC));
        assert!(!store.exists("big").unwrap());
    }

    #[test]
    fn cancelled_call_discards_the_instance_and_the_next_call_recovers() {
        use std::io::{Read, Write};
        let server = RedisServer::start().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio.block_on(async {
            let mut store = runtime()
                .open_async(Options::new(server.url()))
                .await
                .unwrap();
            store.set("a", DOC, None).await.unwrap();

            // Keep Redis from answering for a while, so the call below is cut off midway.
            let mut admin = std::net::TcpStream::connect(server.addr()).unwrap();
            admin
                .write_all(b"*3\r\n$6\r\nCLIENT\r\n$5\r\nPAUSE\r\n$3\r\n500\r\n")
                .unwrap();
            let mut reply = [0u8; 5];
            admin.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, b"+OK\r\n");

            let cut_off =
                tokio::time::timeout(std::time::Duration::from_millis(50), store.get("a")).await;
            assert!(cut_off.is_err(), "{cut_off:?}");
            assert!(store.instance.is_none());

            assert_eq!(store.get("a").await.unwrap().as_deref(), Some(DOC));
            assert!(store.instance.is_some());
        });
    }
}
