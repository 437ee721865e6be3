//! The compiled component and everything needed to instantiate it, shared by all stores.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Engine, Store};

use crate::bindings::RedisTaskStorePre;
use crate::engine::{load_component, new_engine, to_anyhow, EpochTicker};
use crate::engine::{CacheOutcome, ComponentCache};
pub use crate::engine::{COMPONENT, EPOCH_TICK, TLS_COMPONENT};
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::TaskError;
use crate::instance::{linker, Imports, InstanceBuilder, InstanceState};
use crate::network::NetworkPolicy;
use crate::output::GuestOutput;

/// Memory a store's instance may use unless [`RuntimeBuilder::memory_limit`] says otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

/// A compiled component, linked against WASI and ready to instantiate.
///
/// Compiling takes tens of milliseconds (over a second in an unoptimised build), opening a
/// store from a `Runtime` microseconds: create one and share it. Clones are cheap and share
/// the compiled code.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pre: RedisTaskStorePre<InstanceState>,
    memory_limit: usize,
    /// `None`: derived from each store's timeout, see [`Runtime::call_deadline`].
    call_deadline: Option<Duration>,
    /// Advances the engine's epoch while any clone of this runtime lives.
    _ticker: Arc<EpochTicker>,
    /// Which embedded component this is: the plain one switches to the full (TLS) one for a
    /// `rediss://`, cluster or Sentinel store. A component given by the caller is used as
    /// it is.
    embedded: Embedded,
    /// The cache this runtime was loaded through, reused for the TLS component.
    cache: Option<ComponentCache>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embedded {
    Plain,
    Tls,
    /// A component from [`RuntimeBuilder::component`] or [`RuntimeBuilder::component_file`].
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

/// Which component a [`RuntimeBuilder`] compiles.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Embedded,
    EmbeddedTls,
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Where a [`RuntimeBuilder`] keeps the compiled component.
#[derive(Debug, Clone)]
enum CacheChoice {
    /// Compile in process, never touch the file system.
    Off,
    /// [`ComponentCache::from_env`], off when that says so.
    FromEnv,
    Given(ComponentCache),
}

/// How to make a [`Runtime`]: which component, through which cache, with which limits.
/// Start with [`Runtime::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use taskstore_host::Runtime;
///
/// let runtime = Runtime::builder()
///     .memory_limit(64 * 1024 * 1024)
///     .call_deadline(Duration::from_secs(5))
///     .build()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RuntimeBuilder<'a> {
    source: Source<'a>,
    cache: CacheChoice,
    memory_limit: usize,
    call_deadline: Option<Duration>,
}

impl<'a> RuntimeBuilder<'a> {
    /// The embedded full component ([`TLS_COMPONENT`]: TLS, cluster, Sentinel) instead of
    /// the plain one. A store opened with a `rediss://`, cluster or Sentinel URL from the
    /// plain embedded component switches to it by itself; this is for callers that want its
    /// compilation (about a second in a release build) done up front.
    pub fn tls(mut self) -> RuntimeBuilder<'a> {
        self.source = Source::EmbeddedTls;
        self
    }

    /// A component given as bytes instead of the embedded one. It is used as it is: no
    /// switch to the full build for `rediss://`, cluster or Sentinel URLs.
    pub fn component(mut self, bytes: &'a [u8]) -> RuntimeBuilder<'a> {
        self.source = Source::Bytes(bytes);
        self
    }

    /// A component read from `path` (a `.wasm` component binary), used as it is.
    pub fn component_file(mut self, path: &'a Path) -> RuntimeBuilder<'a> {
        self.source = Source::File(path);
        self
    }

    /// Compile through the precompiled-component cache in its default place
    /// ([`ComponentCache::from_env`]: `$TASKSTORE_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/taskstore`, else `~/.cache/taskstore`; `TASKSTORE_CACHE_DIR=`
    /// turns it off): loaded from there in about a millisecond when it holds a usable copy,
    /// else compiled and stored. Any failure of the cache falls back to compiling.
    ///
    /// The CLI starts this way. Without it (or [`RuntimeBuilder::cache`]) the runtime never
    /// touches the file system: a long-lived process compiles once and gains little from a
    /// cache.
    pub fn cache_from_env(mut self) -> RuntimeBuilder<'a> {
        self.cache = CacheChoice::FromEnv;
        self
    }

    /// Compile through `cache`; see [`ComponentCache`].
    pub fn cache(mut self, cache: &ComponentCache) -> RuntimeBuilder<'a> {
        self.cache = CacheChoice::Given(cache.clone());
        self
    }

    /// Caps each store's linear memory at `bytes` (default [`DEFAULT_MEMORY_LIMIT`]). A
    /// component that needs more traps; see [`ErrorKind::Host`].
    pub fn memory_limit(mut self, bytes: usize) -> RuntimeBuilder<'a> {
        self.memory_limit = bytes;
        self
    }

    /// Cuts every guest call (`open` and `close` included) off after `deadline`: the call
    /// fails with [`ErrorKind::Host`], and the next call starts a new instance. Guest code
    /// is stopped by epoch interruption (an endless loop traps), a host call the guest waits
    /// on by a timer; the clock runs while the guest waits on Redis too.
    ///
    /// By default the deadline is 4 × the store's `timeout_ms` + 1 s: time for a command on
    /// a reused connection, then a reconnect, handshake and retry, each at its full timeout.
    /// `list` and `update` make several round trips; one whose round trips are each slow
    /// but within the timeout can exceed it; raise the deadline if Redis is that slow.
    pub fn call_deadline(mut self, deadline: Duration) -> RuntimeBuilder<'a> {
        self.call_deadline = Some(deadline);
        self
    }

    /// Compiles (or loads) and links the component. The embedded components without a
    /// cache are compiled once per process and shared.
    ///
    /// # Errors
    /// The engine cannot be created; the component file cannot be read; the component does
    /// not compile, imports something other than WASI 0.2, or does not export
    /// `taskstore:storage/task-storage@0.1.0`. Never a failure of the cache.
    pub fn build(self) -> anyhow::Result<Runtime> {
        self.build_reporting_cache().map(|(runtime, _)| runtime)
    }

    /// As [`RuntimeBuilder::build`], and says whether the cache was used.
    ///
    /// # Errors
    /// As [`RuntimeBuilder::build`].
    pub fn build_reporting_cache(self) -> anyhow::Result<(Runtime, CacheOutcome)> {
        let cache = match self.cache {
            CacheChoice::Off => None,
            CacheChoice::FromEnv => ComponentCache::from_env(),
            CacheChoice::Given(cache) => Some(cache),
        };
        let (runtime, outcome) = match (self.source, cache) {
            (Source::Embedded, None) => (Runtime::embedded()?, CacheOutcome::Disabled),
            (Source::Embedded, Some(cache)) => {
                let (mut runtime, outcome) = Runtime::load(COMPONENT, Some(&cache))?;
                runtime.embedded = Embedded::Plain;
                (runtime, outcome)
            }
            (Source::EmbeddedTls, cache) => (
                Runtime::embedded_tls(cache.as_ref())?,
                CacheOutcome::Disabled,
            ),
            (Source::Bytes(bytes), cache) => Runtime::load(bytes, cache.as_ref())?,
            (Source::File(path), cache) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read component {}: {e}", path.display())
                })?;
                Runtime::load(&bytes, cache.as_ref())
                    .map_err(|e| e.context(format!("cannot load component {}", path.display())))?
            }
        };
        let runtime = Runtime {
            memory_limit: self.memory_limit,
            call_deadline: self.call_deadline,
            ..runtime
        };
        Ok((runtime, outcome))
    }
}

impl Runtime {
    /// A builder of a runtime for the embedded component ([`COMPONENT`]; `rediss://`,
    /// cluster and Sentinel stores switch to [`TLS_COMPONENT`] by themselves), compiled in
    /// process, with [`DEFAULT_MEMORY_LIMIT`] and the default call deadline.
    pub fn builder() -> RuntimeBuilder<'static> {
        RuntimeBuilder {
            source: Source::Embedded,
            cache: CacheChoice::Off,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            call_deadline: None,
        }
    }

    /// The embedded component, compiled once per process.
    fn embedded() -> anyhow::Result<Runtime> {
        static EMBEDDED: OnceLock<Runtime> = OnceLock::new();
        if let Some(runtime) = EMBEDDED.get() {
            return Ok(runtime.clone());
        }
        // Two threads racing here both compile; one result is kept. Rare, and harmless.
        let (mut runtime, _) = Runtime::load(COMPONENT, None)?;
        runtime.embedded = Embedded::Plain;
        Ok(EMBEDDED.get_or_init(|| runtime).clone())
    }

    /// The embedded TLS component, compiled once per process (through `cache` the first
    /// time, if given).
    fn embedded_tls(cache: Option<&ComponentCache>) -> anyhow::Result<Runtime> {
        static EMBEDDED_TLS: OnceLock<Runtime> = OnceLock::new();
        if let Some(runtime) = EMBEDDED_TLS.get() {
            return Ok(runtime.clone());
        }
        let (mut runtime, _) = Runtime::load(TLS_COMPONENT, cache)?;
        runtime.embedded = Embedded::Tls;
        Ok(EMBEDDED_TLS.get_or_init(|| runtime).clone())
    }

    /// The runtime a store with `url` runs on: the embedded full component
    /// ([`TLS_COMPONENT`]) for a `rediss://`, cluster or Sentinel URL when this is the plain
    /// embedded one (with this runtime's limits), else this one. A URL that does not parse
    /// stays here, for the component to reject.
    pub(crate) fn for_url(&self, url: &str) -> Result<Runtime, TaskError> {
        let wants_full = taskstore::config::RedisUrl::parse(url)
            .is_ok_and(|url| url.tls || url.is_cluster() || url.is_sentinel());
        if !(wants_full && self.embedded == Embedded::Plain) {
            return Ok(self.clone());
        }
        let tls = Runtime::embedded_tls(self.cache.as_ref())
            .map_err(|e| TaskError::host(format!("cannot load the full (TLS) component: {e:#}")))?;
        Ok(Runtime {
            memory_limit: self.memory_limit,
            call_deadline: self.call_deadline,
            ..tls
        })
    }

    fn load(
        bytes: &[u8],
        cache: Option<&ComponentCache>,
    ) -> anyhow::Result<(Runtime, CacheOutcome)> {
        let engine = new_engine()?;
        let (component, outcome) = load_component(&engine, bytes, cache)?;
        let instance_pre = linker(&engine, Imports::Wasi)?
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

    /// The deadline of each guest call for a store with `timeout_ms` (the store's option,
    /// `None` for the component's default of 5000); see [`RuntimeBuilder::call_deadline`].
    pub fn call_deadline(&self, timeout_ms: Option<u32>) -> Duration {
        self.call_deadline.unwrap_or_else(|| {
            let timeout = Duration::from_millis(u64::from(
                timeout_ms.unwrap_or(taskstore::config::DEFAULT_TIMEOUT_MS),
            ));
            timeout * 4 + Duration::from_secs(1)
        })
    }

    /// A store for one instance of this runtime's component, sandboxed to `network`, with
    /// this runtime's memory limit and its guest code cut off after `deadline`.
    pub(crate) fn new_store(
        &self,
        network: &NetworkPolicy,
        output: &GuestOutput,
        deadline: Duration,
    ) -> Store<InstanceState> {
        InstanceBuilder::new(network, output, self.memory_limit, deadline)
            // A clear trap beats a failed `memory.grow`, which the guest's allocator turns
            // into an abort with no message.
            .trap_on_grow_failure()
            .build(&self.engine)
    }

    pub(crate) fn pre(&self) -> &RedisTaskStorePre<InstanceState> {
        &self.pre
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_runtime_is_compiled_once_and_shared() {
        let a = Runtime::builder().build().unwrap();
        let b = Runtime::builder().build().unwrap();
        assert!(Engine::same(&a.engine, &b.engine));
        assert_eq!(a.memory_limit, DEFAULT_MEMORY_LIMIT);
        let limited = Runtime::builder().memory_limit(1 << 20).build().unwrap();
        assert_eq!(limited.memory_limit, 1 << 20);
    }

    #[test]
    fn call_deadline_defaults_to_four_timeouts_plus_a_second() {
        let runtime = Runtime::builder().build().unwrap();
        assert_eq!(runtime.call_deadline(None), Duration::from_secs(21));
        assert_eq!(runtime.call_deadline(Some(250)), Duration::from_secs(2));
        let runtime = Runtime::builder()
            .call_deadline(Duration::from_millis(30))
            .build()
            .unwrap();
        assert_eq!(runtime.call_deadline(Some(250)), Duration::from_millis(30));
    }

    #[test]
    fn runtime_loads_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path());
        let (_, first) = Runtime::builder()
            .component(COMPONENT)
            .cache(&cache)
            .build_reporting_cache()
            .unwrap();
        assert!(matches!(first, CacheOutcome::Miss { .. }), "{first:?}");
        let (_, second) = Runtime::builder()
            .component(COMPONENT)
            .cache(&cache)
            .build_reporting_cache()
            .unwrap();
        assert_eq!(second, CacheOutcome::Hit);
    }

    #[test]
    fn component_loads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskstore.wasm");
        std::fs::write(&path, COMPONENT).unwrap();
        Runtime::builder().component_file(&path).build().unwrap();
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let error = Runtime::builder()
            .component_file(Path::new("/no/such/taskstore.wasm"))
            .build()
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("/no/such/taskstore.wasm"),
            "{error:#}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_component_are_rejected() {
        let error = Runtime::builder()
            .component(b"not wasm")
            .build()
            .unwrap_err();
        assert!(format!("{error:#}").contains("cannot compile"), "{error:#}");
    }
}
