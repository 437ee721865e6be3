//! The compiled component and everything needed to instantiate it, shared by all stores.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use crate::bindings::RedisTaskStorePre;
use crate::cache::{compile, CacheOutcome, ComponentCache};
use crate::error::TaskError;
use crate::options::Options;
use crate::store::{AsyncTaskStore, HostState};

/// The component built from this workspace's root package (`wasm32-wasip2`, release),
/// embedded at compile time by `build.rs`. It speaks plaintext `redis://` only.
pub static COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_COMPONENT"));

/// The same component built with the `tls` feature: `redis://` and `rediss://` (rustls in
/// the guest). Several times larger than [`COMPONENT`], so it is compiled only when a store
/// opens a `rediss://` URL; see [`Runtime::new_tls`].
pub static TLS_COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_TLS_COMPONENT"));

/// Memory a store's instance may use unless [`Runtime::with_memory_limit`] says otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

/// How often the engine's epoch advances; the granularity of every call deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A compiled component, linked against WASI and ready to instantiate.
///
/// Compiling takes tens of milliseconds (over a second in an unoptimised build), opening a
/// store from a `Runtime` microseconds: create one and share it. Clones are cheap and share
/// the compiled code.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pre: RedisTaskStorePre<HostState>,
    memory_limit: usize,
    /// `None`: derived from each store's timeout, see [`Runtime::call_deadline`].
    call_deadline: Option<Duration>,
    /// Advances the engine's epoch while any clone of this runtime lives.
    _ticker: Arc<EpochTicker>,
    /// Which embedded component this is: the plain one switches to the TLS one for a
    /// `rediss://` store. A component given by the caller is used as it is.
    embedded: Embedded,
    /// The cache this runtime was loaded through, reused for the TLS component.
    cache: Option<ComponentCache>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    Plain,
    Tls,
    /// A component from [`Runtime::from_bytes`] or [`Runtime::from_file`].
    No,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("memory_limit", &self.memory_limit)
            .field("call_deadline", &self.call_deadline)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// The embedded component ([`COMPONENT`]), compiled once per process.
    ///
    /// # Errors
    /// The engine cannot be created or the component does not compile or link (a build of
    /// this crate with a broken guest).
    pub fn new() -> anyhow::Result<Runtime> {
        static EMBEDDED: OnceLock<Runtime> = OnceLock::new();
        if let Some(runtime) = EMBEDDED.get() {
            return Ok(runtime.clone());
        }
        // Two threads racing here both compile; one result is kept. Rare, and harmless.
        let (mut runtime, _) = Runtime::load(COMPONENT, None)?;
        runtime.embedded = Embedded::Plain;
        Ok(EMBEDDED.get_or_init(|| runtime).clone())
    }

    /// The embedded TLS component ([`TLS_COMPONENT`]), compiled once per process. Stores
    /// opened with a `rediss://` URL from the plain runtime ([`Runtime::new`],
    /// [`Runtime::cached`]) switch to it by themselves; this is for callers that want the
    /// compilation (about a second in a release build) done up front.
    ///
    /// # Errors
    /// As [`Runtime::new`].
    pub fn new_tls() -> anyhow::Result<Runtime> {
        Runtime::embedded_tls(None)
    }

    fn embedded_tls(cache: Option<&ComponentCache>) -> anyhow::Result<Runtime> {
        static EMBEDDED_TLS: OnceLock<Runtime> = OnceLock::new();
        if let Some(runtime) = EMBEDDED_TLS.get() {
            return Ok(runtime.clone());
        }
        let (mut runtime, _) = Runtime::load(TLS_COMPONENT, cache)?;
        runtime.embedded = Embedded::Tls;
        Ok(EMBEDDED_TLS.get_or_init(|| runtime).clone())
    }

    /// The runtime a store with `url` runs on: the embedded TLS component for a `rediss://`
    /// URL when this is the plain embedded one (with this runtime's limits), else this one.
    /// A URL that does not parse stays here, for the component to reject.
    pub(crate) fn for_url(&self, url: &str) -> Result<Runtime, TaskError> {
        let wants_tls = taskstore::config::RedisUrl::parse(url).is_ok_and(|url| url.tls);
        if !(wants_tls && self.embedded == Embedded::Plain) {
            return Ok(self.clone());
        }
        let tls = Runtime::embedded_tls(self.cache.as_ref())
            .map_err(|e| TaskError::Host(format!("cannot load the TLS component: {e:#}")))?;
        Ok(Runtime {
            memory_limit: self.memory_limit,
            call_deadline: self.call_deadline,
            ..tls
        })
    }

    /// A component read from `path` (a `.wasm` component binary).
    ///
    /// # Errors
    /// The file cannot be read, is not a component, or does not export
    /// `taskstore:storage/task-storage@0.1.0` or imports something other than WASI 0.2.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Runtime> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read component {}: {e}", path.display()))?;
        Runtime::from_bytes(&bytes)
            .map_err(|e| e.context(format!("cannot load component {}", path.display())))
    }

    /// A component given as bytes.
    ///
    /// # Errors
    /// As [`Runtime::from_file`].
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Runtime> {
        Runtime::load(bytes, None).map(|(runtime, _)| runtime)
    }

    /// The embedded component ([`COMPONENT`]) through the precompiled-component cache in
    /// its default place ([`ComponentCache::from_env`]: `$TASKSTORE_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/taskstore`, else `~/.cache/taskstore`; `TASKSTORE_CACHE_DIR=`
    /// turns it off): loaded from there in about a millisecond when it holds a usable
    /// copy, else compiled and stored. Any failure of the cache falls back to compiling.
    ///
    /// The CLI starts this way. [`Runtime::new`] never touches the file system: a
    /// long-lived process compiles once and gains little from a cache.
    ///
    /// # Errors
    /// As [`Runtime::new`].
    pub fn cached() -> anyhow::Result<Runtime> {
        match ComponentCache::from_env() {
            Some(cache) => {
                let (mut runtime, _) = Runtime::load(COMPONENT, Some(&cache))?;
                runtime.embedded = Embedded::Plain;
                Ok(runtime)
            }
            None => Runtime::new(),
        }
    }

    /// A component given as bytes, through `cache`; see [`ComponentCache`]. Also says
    /// whether the cache was used.
    ///
    /// # Errors
    /// As [`Runtime::from_file`]; never a failure of the cache.
    pub fn from_bytes_cached(
        bytes: &[u8],
        cache: &ComponentCache,
    ) -> anyhow::Result<(Runtime, CacheOutcome)> {
        Runtime::load(bytes, Some(cache))
    }

    fn load(
        bytes: &[u8],
        cache: Option<&ComponentCache>,
    ) -> anyhow::Result<(Runtime, CacheOutcome)> {
        let engine = Engine::new(&engine_config()).map_err(to_anyhow)?;
        let (component, outcome) = match cache {
            Some(cache) => cache.load_or_compile(&engine, bytes)?,
            None => (compile(&engine, bytes)?, CacheOutcome::Disabled),
        };
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        crate::sandbox::add_sandbox_limits(&mut linker)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| to_anyhow(e).context("the component needs imports this host lacks"))?;
        let pre = RedisTaskStorePre::new(instance_pre).map_err(|e| {
            to_anyhow(e).context("the component does not export taskstore:storage/task-storage")
        })?;
        let ticker = EpochTicker::start(&engine)?;
        let runtime = Runtime {
            engine,
            pre,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            call_deadline: None,
            _ticker: Arc::new(ticker),
            embedded: Embedded::No,
            cache: cache.cloned(),
        };
        Ok((runtime, outcome))
    }

    /// The same runtime with each store's linear memory capped at `bytes`
    /// (default [`DEFAULT_MEMORY_LIMIT`]). A component that needs more traps; see
    /// [`TaskError::Host`].
    pub fn with_memory_limit(mut self, bytes: usize) -> Runtime {
        self.memory_limit = bytes;
        self
    }

    /// The same runtime with every guest call (`open` and `close` included) cut off after
    /// `deadline`: the call fails with [`TaskError::Host`], and the next call starts a new
    /// instance. Guest code is stopped by epoch interruption (an endless loop traps), a
    /// host call the guest waits on by a timer; the clock runs while the guest waits on
    /// Redis too.
    ///
    /// By default the deadline is 4 × the store's `timeout_ms` + 1 s: time for a command on
    /// a reused connection, then a reconnect, handshake and retry, each at its full timeout.
    /// `list` and `update` make several round trips; one whose round trips are each slow
    /// but within the timeout can exceed it; raise the deadline if Redis is that slow.
    pub fn with_call_deadline(mut self, deadline: Duration) -> Runtime {
        self.call_deadline = Some(deadline);
        self
    }

    /// The deadline of each guest call for a store with `timeout_ms` (the store's option,
    /// `None` for the component's default of 5000); see [`Runtime::with_call_deadline`].
    pub fn call_deadline(&self, timeout_ms: Option<u32>) -> Duration {
        self.call_deadline.unwrap_or_else(|| {
            let timeout = Duration::from_millis(u64::from(
                timeout_ms.unwrap_or(taskstore::config::DEFAULT_TIMEOUT_MS),
            ));
            timeout * 4 + Duration::from_secs(1)
        })
    }

    /// Opens a store: instantiates the component and calls its `store.open`.
    ///
    /// # Errors
    /// [`TaskError::InvalidInput`] for a malformed URL or options; [`TaskError::Connection`]
    /// if the host name does not resolve or Redis cannot be reached; any other error of the
    /// component's `open`; [`TaskError::Host`] if the component cannot be instantiated or
    /// traps.
    pub async fn open_async(&self, options: Options) -> Result<AsyncTaskStore, TaskError> {
        AsyncTaskStore::open(self.clone(), options).await
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn pre(&self) -> &RedisTaskStorePre<HostState> {
        &self.pre
    }

    pub(crate) fn memory_limit(&self) -> usize {
        self.memory_limit
    }
}

/// The engine configuration every runtime uses. Code compiled under another configuration
/// (a precompiled component, say) must match it.
pub(crate) fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Without the concurrent call path every call is ~1 µs cheaper, and nothing here
    // uses component-model async.
    config.concurrency_support(false);
    // Guest code checks the epoch at function entries and loop heads, so a call that runs
    // past its deadline traps instead of holding the thread forever (~2k instructions per
    // call, unmeasurable in timings).
    config.epoch_interruption(true);
    config
}

/// Epoch ticks that cover `deadline`: rounded up, plus one because the tick in progress
/// may be about to end.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = deadline.as_nanos().div_ceil(tick) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// A thread that increments an engine's epoch every [`EPOCH_TICK`]; it ends when this is
/// dropped (with the last clone of its [`Runtime`]).
pub(crate) struct EpochTicker {
    /// Dropping it disconnects the channel, which wakes and ends the thread.
    _stop: mpsc::Sender<()>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> anyhow::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("taskstore-epoch".into())
            // Nothing is ever sent: only a disconnect (or a message) ends the loop.
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker thread: {e}"))?;
        Ok(EpochTicker { _stop: stop })
    }
}

/// `wasmtime::Error` keeps its cause chain through the boxed form; `anyhow` is what the
/// constructors promise.
pub(crate) fn to_anyhow(error: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(error.into_boxed_dyn_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_runtime_is_compiled_once_and_shared() {
        let a = Runtime::new().unwrap();
        let b = Runtime::new().unwrap();
        assert!(Engine::same(a.engine(), b.engine()));
        assert_eq!(a.memory_limit(), DEFAULT_MEMORY_LIMIT);
        assert_eq!(b.with_memory_limit(1 << 20).memory_limit(), 1 << 20);
    }

    #[test]
    fn call_deadline_defaults_to_four_timeouts_plus_a_second() {
        let runtime = Runtime::new().unwrap();
        assert_eq!(runtime.call_deadline(None), Duration::from_secs(21));
        assert_eq!(runtime.call_deadline(Some(250)), Duration::from_secs(2));
        let runtime = runtime.with_call_deadline(Duration::from_millis(30));
        assert_eq!(runtime.call_deadline(Some(250)), Duration::from_millis(30));
    }

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(11)), 3);
        assert_eq!(deadline_ticks(Duration::MAX), u64::MAX);
    }

    /// A core module exporting `run`, which returns at once.
    const RETURN_AT_ONCE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // func 0: type 0
        0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00, // export "run" = func 0
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // body: end
    ];

    /// The same, but `run` never returns: `loop br 0 end`.
    const SPIN_FOREVER: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, //
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, //
        0x03, 0x02, 0x01, 0x00, //
        0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00, //
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0 end
    ];

    /// Calls `run` of `module` in a store whose deadline is `ticks` epochs away.
    fn run(engine: &Engine, module: &[u8], ticks: u64) -> wasmtime::Result<()> {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let module = wasmtime::Module::new(engine, module)?;
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
        run.call(&mut store, ())
    }

    #[test]
    fn guest_code_that_never_returns_traps_at_its_deadline() {
        let engine = Engine::new(&engine_config()).unwrap();
        let _ticker = EpochTicker::start(&engine).unwrap();
        run(&engine, RETURN_AT_ONCE, 1).unwrap();

        let started = std::time::Instant::now();
        let error = run(
            &engine,
            SPIN_FOREVER,
            deadline_ticks(Duration::from_millis(100)),
        )
        .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(
            error.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{error:?}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        // A bound, not a measurement: the loop was stopped, not left spinning.
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn epoch_stops_advancing_once_the_ticker_is_dropped() {
        let engine = Engine::new(&engine_config()).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        // Arm a deadline one tick away, let ticks pass, then call: even an empty function
        // traps if, and only if, the epoch moved meanwhile.
        let moved = |engine: &Engine| {
            let mut store = wasmtime::Store::new(engine, ());
            store.set_epoch_deadline(1);
            std::thread::sleep(EPOCH_TICK * 5);
            let module = wasmtime::Module::new(engine, RETURN_AT_ONCE).unwrap();
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let run = instance
                .get_typed_func::<(), ()>(&mut store, "run")
                .unwrap();
            run.call(&mut store, ()).is_err()
        };
        assert!(moved(&engine), "the epoch did not advance");
        drop(ticker);
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(!moved(&engine), "the epoch still advances");
    }

    #[test]
    fn component_loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskstore.wasm");
        std::fs::write(&path, COMPONENT).unwrap();
        Runtime::from_file(&path).unwrap();
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let error = Runtime::from_file("/no/such/taskstore.wasm").unwrap_err();
        assert!(
            format!("{error:#}").contains("/no/such/taskstore.wasm"),
            "{error:#}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_component_are_rejected() {
        let error = Runtime::from_bytes(b"not wasm").unwrap_err();
        assert!(format!("{error:#}").contains("cannot compile"), "{error:#}");
    }
}
