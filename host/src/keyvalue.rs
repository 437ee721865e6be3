//! `wasi:keyvalue` for any component: the key-value component ([`KV_COMPONENT`], the
//! workspace's `kv/`, built by `build.rs`), [`compose`] to plug it into an application's
//! `wasi:keyvalue` imports, and [`run_command`] to run the composed `wasi:cli` command in
//! the same sandbox as every store: TCP only to the configured Redis addresses (and, for a
//! cluster or Sentinel URL, the nodes it reports within the allow-list), name lookup only of
//! the URL's names, no UDP, no preopened directories, no environment; stdio inherited, the
//! given arguments, and the `wasi:config` variables given.

use std::collections::BTreeMap;

use anyhow::Context as _;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::engine::{load_component, new_engine, to_anyhow, ComponentCache};
use crate::network::NetworkPolicy;
use crate::options::{url_secrets, ClusterAllow};
use crate::sandbox::{add_sandbox_limits, resource_table, SandboxLimits, SandboxView};

/// The key-value component: exports `wasi:keyvalue/{store,atomics,batch}` at
/// `@0.2.0-draft2` and `@0.2.0-draft` over Redis, TLS and cluster capable; imports
/// `wasi:config/store@0.2.0-rc.1` (its settings) and WASI sockets, clocks and random.
pub const KV_COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_KV_COMPONENT"));

/// The `wasi:keyvalue` versions [`KV_COMPONENT`] exports.
pub const KEYVALUE_VERSIONS: [&str; 2] = ["0.2.0-draft2", "0.2.0-draft"];

/// The `wasi:keyvalue` interfaces [`KV_COMPONENT`] exports, at each version.
pub const KEYVALUE_INTERFACES: [&str; 3] = ["store", "atomics", "batch"];

/// The interface names (`wasi:keyvalue/store@0.2.0-draft2`, ...) [`KV_COMPONENT`] exports.
fn exported_names() -> Vec<String> {
    KEYVALUE_VERSIONS
        .iter()
        .flat_map(|version| {
            KEYVALUE_INTERFACES
                .iter()
                .map(move |interface| format!("wasi:keyvalue/{interface}@{version}"))
        })
        .collect()
}

/// `app` with [`KV_COMPONENT`] plugged into its `wasi:keyvalue` imports: a component that
/// imports no `wasi:keyvalue` any more (only WASI and `wasi:config`, for the Redis settings).
///
/// # Errors
/// `app` is no component; it imports no `wasi:keyvalue` interface (nothing to plug, or
/// composed already); or it imports one the key-value component does not export (the
/// message names it and the versions there are).
pub fn compose(app: &[u8]) -> anyhow::Result<Vec<u8>> {
    use wac_graph::types::Package;
    use wac_graph::{CompositionGraph, EncodeOptions};

    let mut graph = CompositionGraph::new();
    let app = Package::from_bytes("app:app", None, app.to_vec(), graph.types_mut())
        .context("the application is not a WebAssembly component")?;
    let imports: Vec<String> = graph.types()[app.ty()]
        .imports
        .keys()
        .filter(|name| name.starts_with("wasi:keyvalue/"))
        .cloned()
        .collect();
    if imports.is_empty() {
        anyhow::bail!(
            "the application imports no wasi:keyvalue interface: nothing to plug (is it \
             composed already?)"
        );
    }
    let exported = exported_names();
    let unsupported: Vec<&String> = imports
        .iter()
        .filter(|name| !exported.contains(name))
        .collect();
    if !unsupported.is_empty() {
        anyhow::bail!(
            "the application imports {}, which the key-value component does not export: it \
             exports wasi:keyvalue/{{{}}} at @{} only",
            unsupported
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            KEYVALUE_INTERFACES.join(","),
            KEYVALUE_VERSIONS.join(" and @")
        );
    }
    let kv = Package::from_bytes(
        "taskstore:keyvalue-impl",
        None,
        KV_COMPONENT.to_vec(),
        graph.types_mut(),
    )?;
    let kv = graph.register_package(kv)?;
    let app = graph.register_package(app)?;
    wac_graph::plug(&mut graph, vec![kv], app)
        .context("plugging the key-value component into the application")?;
    let bytes = graph.encode(EncodeOptions::default())?;

    let mut check = CompositionGraph::new();
    let composed =
        Package::from_bytes("taskstore:composed", None, bytes.clone(), check.types_mut())?;
    let left: Vec<&String> = check.types()[composed.ty()]
        .imports
        .keys()
        .filter(|name| name.starts_with("wasi:keyvalue/"))
        .collect();
    anyhow::ensure!(left.is_empty(), "the composition still imports {left:?}");
    Ok(bytes)
}

/// Whether `component` imports any `wasi:keyvalue` interface (is not composed yet).
///
/// # Errors
/// `component` is no component.
pub fn imports_keyvalue(component: &[u8]) -> anyhow::Result<bool> {
    use wac_graph::types::Package;
    let mut graph = wac_graph::CompositionGraph::new();
    let package = Package::from_bytes("app:app", None, component.to_vec(), graph.types_mut())
        .context("not a WebAssembly component")?;
    Ok(graph.types()[package.ty()]
        .imports
        .keys()
        .any(|name| name.starts_with("wasi:keyvalue/")))
}

/// How [`run_command`] runs a composed command.
#[derive(Clone)]
pub struct RunConfig {
    /// `wasi:config/store` variables: the key-value component's settings (`redis-url`
    /// required, `redis-password`, `buckets`, ... see the README) and any the application
    /// reads. Values may be secrets; they are never shown.
    pub config_vars: BTreeMap<String, String>,
    /// The command's arguments after its name.
    pub args: Vec<String>,
    /// The name the command sees as its first argument.
    pub program_name: String,
    /// Cluster and Sentinel URLs: where reported nodes may be reached besides the seeds'
    /// hosts (as [`crate::Options::cluster_allow`]).
    pub cluster_allow: Vec<ClusterAllow>,
    /// Linear-memory limit of the instance.
    pub memory_limit: usize,
    /// Keep the command's stdout and stderr (up to this many bytes each) in
    /// [`RunOutcome`] instead of inheriting the host's: for callers that check what it
    /// printed (tests, embeddings).
    pub capture_output: Option<usize>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// 0 when `run` returned `ok`, 1 when it returned `err`, else what it passed to `exit`.
    pub exit_code: i32,
    /// With [`RunConfig::capture_output`]: what it wrote to stdout (else empty).
    pub stdout: Vec<u8>,
    /// With [`RunConfig::capture_output`]: what it wrote to stderr (else empty).
    pub stderr: Vec<u8>,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("config_keys", &self.config_vars.keys().collect::<Vec<_>>())
            .field("args", &self.args.len())
            .field("program_name", &self.program_name)
            .field("cluster_allow", &self.cluster_allow)
            .field("memory_limit", &self.memory_limit)
            .field("capture_output", &self.capture_output)
            .finish()
    }
}

/// Default linear-memory limit of a command's instance.
pub const DEFAULT_COMMAND_MEMORY_LIMIT: usize = 256 * 1024 * 1024;

impl RunConfig {
    /// Defaults for everything but the Redis URL.
    pub fn new(redis_url: impl Into<String>) -> RunConfig {
        let mut config_vars = BTreeMap::new();
        config_vars.insert(taskstore::kv::REDIS_URL.to_owned(), redis_url.into());
        RunConfig {
            config_vars,
            args: Vec::new(),
            program_name: "app".to_owned(),
            cluster_allow: Vec::new(),
            memory_limit: DEFAULT_COMMAND_MEMORY_LIMIT,
            capture_output: None,
        }
    }

    /// Every form of the password a message could show.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        if let Some(url) = self.config_vars.get(taskstore::kv::REDIS_URL) {
            secrets.extend(url_secrets(url));
        }
        secrets.extend(self.config_vars.get(taskstore::kv::REDIS_PASSWORD).cloned());
        secrets
    }

    /// The URL the host's network policy is derived from, with the password given apart
    /// written in (cluster and Sentinel discovery authenticate with it).
    fn policy_url(&self) -> anyhow::Result<String> {
        let get = |key: &str| self.config_vars.get(key).filter(|v| !v.is_empty());
        let url = get(taskstore::kv::REDIS_URL)
            .ok_or_else(|| anyhow::anyhow!("no {} configured", taskstore::kv::REDIS_URL))?;
        let Some(password) = get(taskstore::kv::REDIS_PASSWORD) else {
            return Ok(url.clone());
        };
        let url = match get(taskstore::kv::REDIS_USERNAME) {
            Some(user) => url.replacen("://", &format!("://{user}@"), 1),
            None => url.clone(),
        };
        taskstore::config::url_with_password(&url, password).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The state of a command's instance: sandboxed WASI and its settings.
struct CommandState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    sandbox: SandboxLimits,
    config: WasiConfigVariables,
}

impl WasiView for CommandState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl SandboxView for CommandState {
    fn sandbox_limits(&mut self) -> &mut SandboxLimits {
        &mut self.sandbox
    }
}

/// Runs `component`, a `wasi:cli` command (composed with [`compose`], or any command that
/// imports only WASI and `wasi:config`), to its end.
///
/// # Errors
/// The configuration is unusable (no `redis-url`, a malformed URL, a name that does not
/// resolve); the component does not compile, imports what the sandbox does not provide
/// (such as `wasi:keyvalue`: compose it first) or is no command; or it traps. Messages never
/// hold the password.
pub async fn run_command(
    component: &[u8],
    config: &RunConfig,
    cache: Option<&ComponentCache>,
) -> anyhow::Result<RunOutcome> {
    let secrets = config.secrets();
    let redact = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{}",
            taskstore_model::redact::redact_secrets(format!("{e:#}"), &secrets)
        )
    };
    // The component's own parser: the same defaults and checks it will apply.
    let settings = taskstore::kv::KvConfig::load(|key| Ok(config.config_vars.get(key).cloned()))
        .map_err(|e| anyhow::anyhow!("{}", e.redact(&secrets)))?;
    let tls = settings.settings.tls.clone().unwrap_or_default();
    let network = NetworkPolicy::for_url_allowing(
        &config.policy_url().map_err(redact)?,
        &tls,
        settings.settings.timeout,
        &config.cluster_allow,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}", e.redact(&secrets)))?;

    let engine = new_engine()?;
    let (component, _) = load_component(&engine, component, cache)?;
    let mut linker = Linker::<CommandState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(to_anyhow)?;
    add_sandbox_limits(&mut linker)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut CommandState| {
        WasiConfig::from(&state.config)
    })
    .map_err(to_anyhow)?;

    let mut wasi = WasiCtxBuilder::new();
    let mut args = vec![config.program_name.clone()];
    args.extend(config.args.iter().cloned());
    wasi.args(&args);
    let captured = config.capture_output.map(|capacity| {
        (
            MemoryOutputPipe::new(capacity),
            MemoryOutputPipe::new(capacity),
        )
    });
    match &captured {
        Some((stdout, stderr)) => {
            wasi.stdin(tokio::io::empty())
                .stdout(stdout.clone())
                .stderr(stderr.clone());
        }
        None => {
            wasi.inherit_stdio();
        }
    }
    network.clone().apply(&mut wasi);
    let mut store = Store::new(
        &engine,
        CommandState {
            wasi: wasi.build(),
            table: resource_table(),
            limits: StoreLimitsBuilder::new()
                .memory_size(config.memory_limit)
                .build(),
            sandbox: SandboxLimits::new(&network),
            config: config.config_vars.iter().collect(),
        },
    );
    store.limiter(|state| &mut state.limits);
    // A command runs as long as it needs: no epoch ticker runs for this engine, so its epoch
    // never reaches this deadline (half the range: the deadline is added to the epoch).
    store.set_epoch_deadline(u64::MAX / 2);

    let command =
        wasmtime_wasi::p2::bindings::Command::instantiate_async(&mut store, &component, &linker)
            .await
            .map_err(|e| {
                redact(to_anyhow(e).context(
                    "the component cannot run here: is it a wasi:cli command, composed with \
                     `taskstore compose` if it imports wasi:keyvalue?",
                ))
            })?;
    let exit_code = match command.wasi_cli_run().call_run(&mut store).await {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 1,
        Err(error) => match error.downcast_ref::<I32Exit>() {
            Some(exit) => exit.0,
            None => return Err(redact(to_anyhow(error).context("the command trapped"))),
        },
    };
    let (stdout, stderr) = match captured {
        Some((stdout, stderr)) => (stdout.contents().to_vec(), stderr.contents().to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    Ok(RunOutcome {
        exit_code,
        stdout,
        stderr,
    })
}

/// The tests' `wasi:keyvalue` applications (`testing/kv-consumer`), uncomposed: `wasi:cli`
/// commands that exercise every function, and a `wasi:http` application for `serve` (see
/// their sources for their commands and routes).
#[cfg(feature = "kv-test-consumers")]
pub mod test_consumers {
    /// Imports `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft2`.
    pub const DRAFT2: &[u8] = include_bytes!(env!("TASKSTORE_KV_CONSUMER_DRAFT2"));
    /// Imports `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft`.
    pub const DRAFT: &[u8] = include_bytes!(env!("TASKSTORE_KV_CONSUMER_DRAFT"));
    /// Exports `wasi:http/incoming-handler`; imports `wasi:keyvalue/{store,atomics}@0.2.0-draft2`.
    pub const HTTP_DRAFT2: &[u8] = include_bytes!(env!("TASKSTORE_KV_CONSUMER_HTTP_DRAFT2"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_exports_both_versions_of_all_three_interfaces() {
        use wac_graph::types::Package;
        let mut graph = wac_graph::CompositionGraph::new();
        let kv =
            Package::from_bytes("kv:kv", None, KV_COMPONENT.to_vec(), graph.types_mut()).unwrap();
        let world = &graph.types()[kv.ty()];
        let exports: Vec<&String> = world.exports.keys().collect();
        for name in exported_names() {
            assert!(exports.contains(&&name), "{name} not in {exports:?}");
        }
        assert!(
            world.imports.keys().all(|name| name.starts_with("wasi:")),
            "{:?}",
            world.imports.keys().collect::<Vec<_>>()
        );
        assert!(world
            .imports
            .keys()
            .any(|name| name == "wasi:config/store@0.2.0-rc.1"));
    }

    #[test]
    fn compose_refuses_what_it_cannot_plug() {
        let err = compose(b"not wasm").unwrap_err();
        assert!(
            format!("{err:#}").contains("not a WebAssembly component"),
            "{err:#}"
        );
        // The key-value component itself imports no wasi:keyvalue: nothing to plug.
        let err = compose(KV_COMPONENT).unwrap_err();
        assert!(
            format!("{err:#}").contains("imports no wasi:keyvalue"),
            "{err:#}"
        );
    }

    #[test]
    fn the_policy_url_carries_the_separate_credentials_and_secrets_cover_them() {
        let mut config = RunConfig::new("redis://127.0.0.1:6390/2");
        assert_eq!(config.policy_url().unwrap(), "redis://127.0.0.1:6390/2");
        config
            .config_vars
            .insert(taskstore::kv::REDIS_PASSWORD.into(), "pw".into());
        config
            .config_vars
            .insert(taskstore::kv::REDIS_USERNAME.into(), "app".into());
        assert_eq!(
            config.policy_url().unwrap(),
            "redis://app:pw@127.0.0.1:6390/2"
        );
        assert!(config.secrets().contains(&"pw".to_owned()));
        assert!(!format!("{config:?}").contains("pw\""));
    }
}
