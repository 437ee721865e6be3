//! Stores: one wasmtime `Store` and component instance each, holding one guest `store`.

use wasmtime::component::{ResourceAny, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::exports::taskstore::storage::task_storage as wit;
use crate::bindings::RedisTaskStore;
use crate::error::TaskError;
use crate::network::NetworkPolicy;
use crate::options::{url_secrets, Endpoint, Options};
use crate::output::GuestOutput;
use crate::runtime::Runtime;

/// Bytes of the component's stdout/stderr kept for error reports.
const GUEST_OUTPUT_BYTES: usize = 16 * 1024;

/// Time left before a task expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeToLive {
    /// The task expires in this many seconds (0: within the second).
    ExpiresIn(u64),
    /// The task never expires.
    Persistent,
}

/// Per-instance host state: the component's WASI context and its resources.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A running instance with an open guest `store`.
struct Instance {
    store: Store<HostState>,
    guest: RedisTaskStore,
    handle: ResourceAny,
    output: GuestOutput,
}

/// A task store backed by one component instance; the async API.
///
/// Calls take `&mut self`: the component handles one call at a time. Run them on the thread
/// that drives the tokio runtime (a current-thread runtime, or inside a spawned task);
/// blocking on them from elsewhere costs a thread hop per socket operation.
///
/// If the component traps, the call fails with [`TaskError::Host`], the instance is thrown
/// away, and the next call starts a new one and opens the store again with the same
/// options. The same happens when a call's future is dropped before it completes (a
/// timeout around it, say): the instance may have sent half a command. Dropping an `AsyncTaskStore` releases everything, including the Redis
/// connection, but without running the component's destructor; [`AsyncTaskStore::close`]
/// runs it.
pub struct AsyncTaskStore {
    runtime: Runtime,
    options: Options,
    /// The URL's password, for scrubbing messages.
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
        let secrets = url_secrets(&options.url);
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
    /// [`TaskError::InvalidInput`] for a malformed id; [`TaskError::CorruptData`] if the value
    /// is not UTF-8; [`TaskError::Server`] (e.g. the key holds a non-string);
    /// [`TaskError::Protocol`] if the value is too large; [`TaskError::Connection`],
    /// [`TaskError::Timeout`]; [`TaskError::Host`] if the component trapped.
    pub async fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        let mut instance = self.take_instance().await?;
        let outcome = instance
            .guest
            .taskstore_storage_task_storage()
            .store()
            .call_get(&mut instance.store, instance.handle, id)
            .await;
        self.finish(instance, outcome)
    }

    /// Stores `document` as task `id`, expiring after `ttl_seconds` (or the default TTL).
    ///
    /// # Errors
    /// [`TaskError::InvalidInput`] for a malformed id, a document that is not one JSON object
    /// or is too large, or a TTL out of range (nothing is written); [`TaskError::Server`]
    /// (e.g. `OOM`, `READONLY`); [`TaskError::Connection`], [`TaskError::Timeout`] (the write
    /// may have been applied); [`TaskError::Host`] if the component trapped.
    pub async fn set(
        &mut self,
        id: &str,
        document: &str,
        ttl_seconds: Option<u64>,
    ) -> Result<(), TaskError> {
        let mut instance = self.take_instance().await?;
        let outcome = instance
            .guest
            .taskstore_storage_task_storage()
            .store()
            .call_set(
                &mut instance.store,
                instance.handle,
                id,
                document,
                ttl_seconds,
            )
            .await;
        self.finish(instance, outcome)
    }

    /// Removes task `id`; `true` if there was one.
    ///
    /// # Errors
    /// [`TaskError::InvalidInput`] for a malformed id; [`TaskError::Server`];
    /// [`TaskError::Connection`], [`TaskError::Timeout`]; [`TaskError::Host`] if the
    /// component trapped.
    pub async fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        let mut instance = self.take_instance().await?;
        let outcome = instance
            .guest
            .taskstore_storage_task_storage()
            .store()
            .call_delete(&mut instance.store, instance.handle, id)
            .await;
        self.finish(instance, outcome)
    }

    /// Time left before task `id` expires, or `None` if there is no such task.
    ///
    /// # Errors
    /// As [`AsyncTaskStore::delete`].
    pub async fn ttl(&mut self, id: &str) -> Result<Option<TimeToLive>, TaskError> {
        let mut instance = self.take_instance().await?;
        let outcome = instance
            .guest
            .taskstore_storage_task_storage()
            .store()
            .call_ttl(&mut instance.store, instance.handle, id)
            .await;
        let ttl = self.finish(instance, outcome)?;
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
        let mut instance = self.take_instance().await?;
        let outcome = instance
            .guest
            .taskstore_storage_task_storage()
            .store()
            .call_exists(&mut instance.store, instance.handle, id)
            .await;
        self.finish(instance, outcome)
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
            mut store, handle, ..
        }) = self.instance.take()
        {
            let _ = handle.resource_drop_async(&mut store).await;
        }
    }

    /// The live instance, or a new one if the last call trapped or was cancelled.
    ///
    /// The caller owns the instance for the length of its call and hands it back through
    /// [`AsyncTaskStore::finish`]. A call whose future is dropped midway thus drops the
    /// instance with it, and with it a connection that may hold half a command.
    async fn take_instance(&mut self) -> Result<Instance, TaskError> {
        match self.instance.take() {
            Some(instance) => Ok(instance),
            None => start(&self.runtime, &self.options)
                .await
                .map_err(|e| e.redact(&self.secrets)),
        }
    }

    /// Maps a call's outcome and keeps the instance unless it trapped: the component's
    /// error case for case, a trap to [`TaskError::Host`]. A trapped instance refuses further
    /// calls, so it is dropped.
    fn finish<T>(
        &mut self,
        instance: Instance,
        outcome: wasmtime::Result<Result<T, wit::Error>>,
    ) -> Result<T, TaskError> {
        match outcome {
            Ok(result) => {
                self.instance = Some(instance);
                result.map_err(|error| TaskError::from_guest(error).redact(&self.secrets))
            }
            Err(trap) => Err(trapped(&trap, &instance.output).redact(&self.secrets)),
        }
    }
}

/// Instantiates the component for `options` and opens its `store`.
async fn start(runtime: &Runtime, options: &Options) -> Result<Instance, TaskError> {
    let endpoint = Endpoint::from_url(&options.url)?;
    let policy = NetworkPolicy::resolve(&endpoint).await?;
    let output = GuestOutput::new(GUEST_OUTPUT_BYTES);

    // Deny by default; grant only what the WIT world says the component needs. No env, no
    // args, no preopens, empty stdin.
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(tokio::io::empty())
        .stdout(output.clone())
        .stderr(output.clone());
    policy.apply(&mut wasi);

    let limits = StoreLimitsBuilder::new()
        .memory_size(runtime.memory_limit())
        // A clear trap beats a failed `memory.grow`, which the guest's allocator turns
        // into an abort with no message.
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        runtime.engine(),
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits,
        },
    );
    store.limiter(|state| &mut state.limits);

    let guest = runtime
        .pre()
        .instantiate_async(&mut store)
        .await
        .map_err(|e| {
            TaskError::Host(format!(
                "cannot instantiate the component: {}",
                one_line(&e)
            ))
        })?;
    let opened = guest
        .taskstore_storage_task_storage()
        .store()
        .call_open(&mut store, &to_wit(options))
        .await;
    match opened {
        Ok(Ok(handle)) => Ok(Instance {
            store,
            guest,
            handle,
            output,
        }),
        Ok(Err(error)) => Err(TaskError::from_guest(error)),
        Err(trap) => Err(trapped(&trap, &output)),
    }
}

fn to_wit(options: &Options) -> wit::Options {
    wit::Options {
        url: options.url.clone(),
        key_prefix: options.key_prefix.clone(),
        default_ttl_seconds: options.default_ttl_seconds,
        timeout_ms: options.timeout_ms,
        max_document_bytes: options.max_document_bytes,
    }
}

/// A trap (or other failure inside a call) as a one-line [`TaskError::Host`], with the
/// last line the component wrote, which for a Rust guest is its panic message.
fn trapped(error: &wasmtime::Error, output: &GuestOutput) -> TaskError {
    let mut message = format!("the component trapped: {}", one_line(error));
    if let Some(line) = output.last_line() {
        message.push_str(&format!(" (component output: {line})"));
    }
    message.push_str("; the next call starts a new instance");
    TaskError::Host(message)
}

/// The trap code if there is one (the top-level message is a multi-line wasm backtrace),
/// else the innermost cause.
fn one_line(error: &wasmtime::Error) -> String {
    let text = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    text.replace(['\n', '\r'], " ")
}

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
    /// As [`Runtime::open_async`]; [`TaskError::Host`] if no tokio runtime can be created.
    pub fn open(runtime: &Runtime, options: Options) -> Result<TaskStore, TaskError> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TaskError::Host(format!("cannot start a tokio runtime: {e}")))?;
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
    use crate::redis_server::RedisServer;

    const DOC: &str = r#"{"id":"t1","status":"pending","progress":0}"#;

    fn runtime() -> Runtime {
        Runtime::new().unwrap()
    }

    fn open(server: &RedisServer) -> TaskStore {
        TaskStore::open(&runtime(), Options::new(server.url())).unwrap()
    }

    #[test]
    fn stores_and_their_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let store: Option<TaskStore> = None;
        send(&store);
        let runtime = runtime();
        send(&runtime.open_async(Options::new("redis://127.0.0.1:1")));
        let store: Option<AsyncTaskStore> = None;
        if let Some(mut store) = store {
            send(&store.get("x"));
            send(&store.set("x", "{}", None));
            send(&store.close());
        }
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
        assert_eq!(
            store.ttl("t1").unwrap(),
            Some(TimeToLive::ExpiresIn(604_800))
        );
        store.set("t1", DOC, Some(60)).unwrap();
        assert_eq!(store.ttl("t1").unwrap(), Some(TimeToLive::ExpiresIn(60)));
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
            Err(TaskError::InvalidInput(m)) => assert!(!m.contains("hunter2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refused_connection_is_a_connection_error() {
        let port = {
            let server = RedisServer::start().unwrap();
            server.port()
        };
        let url = format!("redis://127.0.0.1:{port}");
        match TaskStore::open(&runtime(), Options::new(url)) {
            Err(TaskError::Connection(m)) => assert!(m.contains(&port.to_string()), "{m}"),
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
        assert!(matches!(error, TaskError::Authentication(_)), "{error:?}");
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
        assert!(matches!(error, TaskError::InvalidInput(_)), "{error:?}");
    }

    #[test]
    fn trap_is_a_host_error_and_the_next_call_gets_a_new_instance() {
        let server = RedisServer::start().unwrap();
        let runtime = runtime().with_memory_limit(4 * 1024 * 1024);
        let mut store = TaskStore::open(&runtime, Options::new(server.url())).unwrap();
        store.set("small", DOC, None).unwrap();

        // Lowering the argument alone needs more memory than the instance may have.
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(6 * 1024 * 1024));
        let error = store.set("big", &big, None).unwrap_err();
        match &error {
            TaskError::Host(m) => assert!(m.contains("trapped"), "{m}"),
            other => panic!("{other:?}"),
        }
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
