//! The one factory of sandboxed instances: every wasmtime `Store` the host runs a guest in
//! (a task store's, a `serve` request's, a `bench` probe's) is made here, with a memory
//! limit, a deadline, the sandboxed WASI context ([`crate::sandbox`]: the network
//! allow-list and its limits), and, for the HTTP function, wasi:http (outgoing requests
//! refused) and wasi:config. Its linker is made here too, so that what an instance may
//! import and the state that serves those imports cannot drift apart.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::{deadline_ticks, to_anyhow};
use crate::network::NetworkPolicy;
use crate::output::GuestOutput;
use crate::sandbox::{
    add_sandbox_limits, resource_table, wasi_context, SandboxLimits, SandboxView,
};

/// What a component may import besides the sandboxed WASI of [`crate::sandbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Imports {
    /// WASI only: the storage component.
    Wasi,
    /// WASI, wasi:http (the incoming handler; outgoing requests are refused) and
    /// wasi:config: the HTTP function.
    WasiHttpConfig,
}

/// A linker for `imports`, every socket function behind [`add_sandbox_limits`].
///
/// # Errors
/// wasmtime refuses a definition (a build of this crate against another wasmtime-wasi).
pub(crate) fn linker(engine: &Engine, imports: Imports) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
    if imports == Imports::WasiHttpConfig {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(to_anyhow)?;
    }
    add_sandbox_limits(&mut linker)?;
    if imports == Imports::WasiHttpConfig {
        wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut InstanceState| {
            WasiConfig::from(state.config.as_deref().unwrap_or(&NO_CONFIG_VARIABLES))
        })
        .map_err(to_anyhow)?;
    }
    Ok(linker)
}

/// What an instance without [`InstanceBuilder::config`] reads from wasi:config: nothing.
static NO_CONFIG_VARIABLES: LazyLock<WasiConfigVariables> = LazyLock::new(WasiConfigVariables::new);

/// The state of one instance's store.
pub(crate) struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    sandbox: SandboxLimits,
    http: WasiHttpCtx,
    hooks: DenyOutgoingRequests,
    config: Option<Arc<WasiConfigVariables>>,
    /// Linear memory grown so far, in bytes (what `bench` reports per idle store).
    memory_grown: usize,
}

impl InstanceState {
    /// Linear memory the instance has grown to so far, in bytes.
    pub(crate) fn memory_grown(&self) -> usize {
        self.memory_grown
    }
}

impl SandboxView for InstanceState {
    fn sandbox_limits(&mut self) -> &mut SandboxLimits {
        &mut self.sandbox
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The instance's [`StoreLimits`], counting the memory they let it grow.
impl ResourceLimiter for InstanceState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_grown += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The functions only talk to Redis: outgoing HTTP is refused.
struct DenyOutgoingRequests;

impl WasiHttpHooks for DenyOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Makes the store of one sandboxed instance; see the module docs.
pub(crate) struct InstanceBuilder {
    network: NetworkPolicy,
    output: GuestOutput,
    memory_limit: usize,
    deadline: Duration,
    max_instances: Option<usize>,
    trap_on_grow_failure: bool,
    config: Option<Arc<WasiConfigVariables>>,
}

impl InstanceBuilder {
    /// An instance that may reach what `network` allows, writes its stdout and stderr to
    /// `output`, holds at most `memory_limit` bytes of linear memory, and whose guest code
    /// traps once `deadline` has passed (callers re-arm it per call with
    /// [`Store::set_epoch_deadline`]).
    pub(crate) fn new(
        network: &NetworkPolicy,
        output: &GuestOutput,
        memory_limit: usize,
        deadline: Duration,
    ) -> InstanceBuilder {
        InstanceBuilder {
            network: network.clone(),
            output: output.clone(),
            memory_limit,
            deadline,
            max_instances: None,
            trap_on_grow_failure: false,
            config: None,
        }
    }

    /// Caps the core instances a component may create (wasmtime's default otherwise).
    pub(crate) fn max_instances(mut self, instances: usize) -> InstanceBuilder {
        self.max_instances = Some(instances);
        self
    }

    /// A `memory.grow` over the limit traps instead of returning -1.
    pub(crate) fn trap_on_grow_failure(mut self) -> InstanceBuilder {
        self.trap_on_grow_failure = true;
        self
    }

    /// The variables the instance reads from wasi:config (with [`Imports::WasiHttpConfig`]).
    pub(crate) fn config(mut self, variables: &Arc<WasiConfigVariables>) -> InstanceBuilder {
        self.config = Some(Arc::clone(variables));
        self
    }

    /// The store, ready to instantiate a component linked by [`linker`].
    pub(crate) fn build(self, engine: &Engine) -> Store<InstanceState> {
        let mut limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .trap_on_grow_failure(self.trap_on_grow_failure);
        if let Some(instances) = self.max_instances {
            limits = limits.instances(instances);
        }
        let mut store = Store::new(
            engine,
            InstanceState {
                sandbox: SandboxLimits::new(&self.network),
                wasi: wasi_context(self.network, &self.output),
                table: resource_table(),
                limits: limits.build(),
                http: WasiHttpCtx::new(),
                hooks: DenyOutgoingRequests,
                config: self.config,
                memory_grown: 0,
            },
        );
        store.limiter(|state| state);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(self.deadline));
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::new_engine;
    use crate::options::RedisAddress;
    use crate::sandbox::MAX_TABLE_ENTRIES;

    /// A core module with one page of memory exporting `grow(pages) -> old size or -1`.
    const GROW_MEMORY: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // type 0: [i32] -> [i32]
        0x03, 0x02, 0x01, 0x00, // func 0: type 0
        0x05, 0x03, 0x01, 0x00, 0x01, // memory 0: min 1 page
        0x07, 0x08, 0x01, 0x04, b'g', b'r', b'o', b'w', 0x00, 0x00, // export "grow" = func 0
        0x0a, 0x08, 0x01, 0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0b, // local.get 0 memory.grow
    ];

    const PAGE: usize = 64 * 1024;

    async fn builder() -> InstanceBuilder {
        let endpoint = RedisAddress::from_url("redis://127.0.0.1:6379").unwrap();
        let policy = NetworkPolicy::resolve(&endpoint).await.unwrap();
        InstanceBuilder::new(
            &policy,
            &GuestOutput::new(1024),
            2 * PAGE,
            Duration::from_secs(60),
        )
    }

    /// Instantiates [`GROW_MEMORY`] in `store` and returns its `grow`.
    fn grow_function(
        engine: &Engine,
        store: &mut Store<InstanceState>,
    ) -> wasmtime::TypedFunc<i32, i32> {
        let module = wasmtime::Module::new(engine, GROW_MEMORY).unwrap();
        let instance = wasmtime::Instance::new(&mut *store, &module, &[]).unwrap();
        instance
            .get_typed_func::<i32, i32>(&mut *store, "grow")
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn memory_over_the_limit_is_refused_and_what_was_granted_is_counted() {
        let engine = new_engine().unwrap();
        let mut store = builder().await.build(&engine);
        let grow = grow_function(&engine, &mut store);
        assert_eq!(store.data().memory_grown(), PAGE);
        assert_eq!(grow.call(&mut store, 1).unwrap(), 1);
        assert_eq!(store.data().memory_grown(), 2 * PAGE);
        assert_eq!(grow.call(&mut store, 1).unwrap(), -1);
        assert_eq!(store.data().memory_grown(), 2 * PAGE);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn memory_over_the_limit_traps_when_asked_to() {
        let engine = new_engine().unwrap();
        let mut store = builder().await.trap_on_grow_failure().build(&engine);
        let grow = grow_function(&engine, &mut store);
        assert_eq!(grow.call(&mut store, 1).unwrap(), 1);
        assert!(grow.call(&mut store, 1).is_err());
    }

    /// Every store the factory makes (a task store's, a `serve` request's, a `bench`
    /// probe's) gets the sandbox's resource-table cap and no config variables unless given.
    #[tokio::test(flavor = "current_thread")]
    async fn every_instance_has_the_sandboxs_table_cap_and_no_config_by_default() {
        let engine = new_engine().unwrap();
        let mut store = builder().await.build(&engine);
        let table = &mut store.data_mut().table;
        for i in 0..MAX_TABLE_ENTRIES {
            table.push(i).unwrap();
        }
        assert!(table.push(0usize).is_err());
        assert!(store.data().config.is_none());

        let variables = Arc::new(WasiConfigVariables::from_iter([("redis-url", "x")]));
        let store = builder().await.config(&variables).build(&engine);
        assert!(Arc::ptr_eq(
            store.data().config.as_ref().unwrap(),
            &variables
        ));
    }

    #[test]
    fn linkers_for_both_kinds_of_component_are_built() {
        let engine = new_engine().unwrap();
        linker(&engine, Imports::Wasi).unwrap();
        linker(&engine, Imports::WasiHttpConfig).unwrap();
    }
}
