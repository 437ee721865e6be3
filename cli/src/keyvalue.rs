//! `taskstore compose` and `taskstore run`: an application written against `wasi:keyvalue`
//! with the key-value component plugged in, run in the store's sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;

use taskstore::kv::{
    BUCKETS, DANGER_ACCEPT_INVALID_CERTIFICATES, REDIS_PASSWORD, REDIS_URL, TIMEOUT_MS,
    TLS_CA_CERTIFICATES,
};
use taskstore_host::keyvalue::{compose, imports_keyvalue, run_command, RunConfig};
use taskstore_host::read_tls_ca_file;

use crate::{redis_password, sentinel_password, Cli, Failure, DEFAULT_URL};

#[derive(clap::Args)]
pub(crate) struct ComposeArgs {
    /// The application: a component that imports wasi:keyvalue/{store,atomics,batch} at
    /// @0.2.0-draft2 or @0.2.0-draft
    #[arg(value_name = "APP.wasm")]
    app: PathBuf,
    /// Where to write the composed component
    #[arg(short, long, value_name = "OUT.wasm")]
    output: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The application, a wasi:cli command: composed with the key-value component here if it
    /// still imports wasi:keyvalue, run as it is if `taskstore compose` made it
    #[arg(value_name = "APP.wasm")]
    app: PathBuf,
    /// A bucket the application may open: NAME (keys `NAME:<key>`), NAME=PREFIX, or `*` for
    /// any identifier. Repeatable [default: the bucket `default` only]
    #[arg(long, value_name = "SPEC")]
    bucket: Vec<String>,
    /// A further wasi:config variable for the application, KEY=VALUE. Repeatable
    #[arg(long, value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Linear-memory limit of the instance, in MiB
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    memory_limit_mib: usize,
    /// Arguments passed to the application
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// `taskstore compose APP.wasm -o OUT.wasm`.
pub(crate) fn compose_command(args: &ComposeArgs) -> Result<(), Failure> {
    let app = read(&args.app)?;
    let composed = compose(&app).map_err(|e| Failure::Usage(format!("compose: {e:#}")))?;
    std::fs::write(&args.output, &composed)
        .map_err(|e| Failure::Other(format!("cannot write {}: {e}", args.output.display())))?;
    println!("{} ({} bytes)", args.output.display(), composed.len());
    Ok(())
}

/// `taskstore run APP.wasm [-- ARGS]`: the command's exit code.
pub(crate) fn run_app(cli: &Cli, args: &RunArgs) -> Result<i32, Failure> {
    let app = read(&args.app)?;
    let needs_compose =
        imports_keyvalue(&app).map_err(|e| Failure::Usage(format!("run: {e:#}")))?;
    let component = match needs_compose {
        true => compose(&app).map_err(|e| Failure::Usage(format!("run: {e:#}")))?,
        false => app,
    };
    let url = cli.redis.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
    let url = match sentinel_password(cli)? {
        Some(password) => taskstore::config::url_with_sentinel_password(&url, &password)
            .map_err(|e| Failure::Usage(e.to_string()))?,
        None => url,
    };
    let mut vars = BTreeMap::new();
    for pair in &args.config {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--config takes KEY=VALUE, not {pair:?}")))?;
        vars.insert(key.to_owned(), value.to_owned());
    }
    vars.insert(REDIS_URL.to_owned(), url);
    if let Some(password) = redis_password(cli)? {
        vars.insert(REDIS_PASSWORD.to_owned(), password);
    }
    if !args.bucket.is_empty() {
        vars.insert(BUCKETS.to_owned(), args.bucket.join(","));
    }
    if let Some(timeout) = cli.timeout_ms {
        vars.insert(TIMEOUT_MS.to_owned(), timeout.to_string());
    }
    if let Some(path) = &cli.tls_ca_file {
        let pem = read_tls_ca_file(path).map_err(|e| Failure::Usage(format!("{e:#}")))?;
        vars.insert(TLS_CA_CERTIFICATES.to_owned(), pem);
    }
    if cli.danger_accept_invalid_certificates {
        vars.insert(
            DANGER_ACCEPT_INVALID_CERTIFICATES.to_owned(),
            "true".to_owned(),
        );
    }
    let mut config = RunConfig::new(String::new());
    config.config_vars = vars;
    config.args = args.args.clone();
    config.program_name = args
        .app
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".to_owned());
    config.cluster_allow = cli.cluster_allow.clone();
    config.memory_limit = args.memory_limit_mib.saturating_mul(1024 * 1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(async {
            let cache = taskstore_host::ComponentCache::from_env();
            run_command(&component, &config, cache.as_ref()).await
        })
        .map(|outcome| outcome.exit_code)
        .map_err(|e| Failure::Other(format!("run: {e:#}")))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}
