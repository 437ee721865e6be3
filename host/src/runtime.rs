//! The compiled component and everything needed to instantiate it, shared by all stores.

use std::path::Path;
use std::sync::OnceLock;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::RedisTaskStorePre;
use crate::error::TaskError;
use crate::options::Options;
use crate::store::{AsyncTaskStore, HostState};

/// The component built from this workspace's root package (`wasm32-wasip2`, release),
/// embedded at compile time by `build.rs`.
pub static COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_COMPONENT"));

/// Memory a store's instance may use unless [`Runtime::with_memory_limit`] says otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

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
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("memory_limit", &self.memory_limit)
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
        let runtime = Runtime::from_bytes(COMPONENT)?;
        Ok(EMBEDDED.get_or_init(|| runtime).clone())
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
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Without the concurrent call path every call is ~1 µs cheaper, and nothing here
        // uses component-model async.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(to_anyhow)?;
        let component = Component::new(&engine, bytes)
            .map_err(|e| to_anyhow(e).context("cannot compile the component"))?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| to_anyhow(e).context("the component needs imports this host lacks"))?;
        let pre = RedisTaskStorePre::new(instance_pre).map_err(|e| {
            to_anyhow(e).context("the component does not export taskstore:storage/task-storage")
        })?;
        Ok(Runtime {
            engine,
            pre,
            memory_limit: DEFAULT_MEMORY_LIMIT,
        })
    }

    /// The same runtime with each store's linear memory capped at `bytes`
    /// (default [`DEFAULT_MEMORY_LIMIT`]). A component that needs more traps; see
    /// [`TaskError::Host`].
    pub fn with_memory_limit(mut self, bytes: usize) -> Runtime {
        self.memory_limit = bytes;
        self
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
