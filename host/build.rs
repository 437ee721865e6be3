//! Builds the guest components for `wasm32-wasip2` and tells the library where they are, so
//! `taskstore_host` can embed them with `include_bytes!`:
//!
//! - the storage component (the workspace's root package, `taskstore`);
//! - the research-task HTTP function (`function/`), which imports
//!   `task-storage`, composed with the storage component by `wac-graph` into one component
//!   that exports `wasi:http/incoming-handler` and imports only standard WASI interfaces;
//! - the key-value component (`kv/`, `taskstore-kv`), which exports `wasi:keyvalue` over
//!   Redis, built alone: built together with the storage component, cargo would unify the
//!   root crate's features and link the task-storage exports into it too.
//!
//! The guest is built by a nested `cargo build` into a target directory under `OUT_DIR`:
//! sharing the outer target directory would deadlock on its lock, and a separate directory
//! keeps the outer build's flags (host `RUSTFLAGS`, clippy's wrapper, a `--target`) away
//! from the guest. Cargo reruns this script only when a file the guest was built from
//! changes, as listed in the guest's own dep-info file.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

const GUEST_PACKAGE: &str = "taskstore";
const FUNCTION_PACKAGE: &str = "research-api";
/// Cargo names the artifact after the library target: dashes become underscores.
const FUNCTION_ARTIFACT: &str = "research_api";
const KV_PACKAGE: &str = "taskstore-kv";
const KV_ARTIFACT: &str = "taskstore_kv";
/// The test applications (`testing/kv-consumer`): its binaries and the variables naming them.
const KV_CONSUMER_PACKAGE: &str = "taskstore-kv-consumer";
const KV_CONSUMERS: [(&str, &str); 3] = [
    ("kv-consumer-draft2", "TASKSTORE_KV_CONSUMER_DRAFT2"),
    ("kv-consumer-draft", "TASKSTORE_KV_CONSUMER_DRAFT"),
    // The package's library: a wasi:http application (a cdylib, so `_`, not `-`).
    (
        "kv_consumer_http_draft2",
        "TASKSTORE_KV_CONSUMER_HTTP_DRAFT2",
    ),
];
const GUEST_TARGET: &str = "wasm32-wasip2";
/// The workspace's size profile for the guests (fat LTO, one codegen unit, opt-level "s");
/// the release profile is the native side's, built for build time.
const GUEST_PROFILE: &str = "guest";

/// Variables that describe the outer build (its target, flags, wrappers and target dir) or
/// this build script's own invocation. Left in place they would leak into the nested build:
/// clippy's wrapper would lint the guest, host `RUSTFLAGS` would reach a wasm target, and
/// `CARGO_TARGET_DIR` would point the nested cargo at the locked outer directory.
const SCRUBBED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "OPT_LEVEL",
    "PROFILE",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
    "RUSTDOC",
];

/// Prefixes of per-package variables cargo sets for this build script.
const SCRUBBED_PREFIXES: &[&str] = &["CARGO_FEATURE_", "CARGO_CFG_", "CARGO_PKG_", "DEP_"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ lives inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("guest-target");

    // The plain storage component and the function build together (one cargo start-up,
    // shared dependencies); then the TLS storage component. All land in one target directory
    // and the storage component's path is the same in both builds, so each artifact is
    // copied out before the next build overwrites it.
    let plain = build_variant(&workspace, &target_dir, &out_dir, &PLAIN);
    let function = copy_out(
        &target_dir,
        &out_dir,
        &format!("{FUNCTION_ARTIFACT}.wasm"),
        "research-api-function.wasm",
    );
    emit_rerun_lines(&target_dir, FUNCTION_ARTIFACT);
    let tls = build_variant(&workspace, &target_dir, &out_dir, &TLS);
    build_guest(&workspace, &target_dir, &[KV_PACKAGE], &[]);
    let kv = copy_out(
        &target_dir,
        &out_dir,
        &format!("{KV_ARTIFACT}.wasm"),
        "taskstore-kv.wasm",
    );
    emit_rerun_lines(&target_dir, KV_ARTIFACT);
    // The tests' wasi:keyvalue applications, only when they are asked for.
    if env::var_os("CARGO_FEATURE_KV_TEST_CONSUMERS").is_some() {
        build_guest(&workspace, &target_dir, &[KV_CONSUMER_PACKAGE], &[]);
        for (binary, var) in KV_CONSUMERS {
            let path = copy_out(
                &target_dir,
                &out_dir,
                &format!("{binary}.wasm"),
                &format!("{binary}.wasm"),
            );
            emit_rerun_lines(&target_dir, binary);
            println!("cargo:rustc-env={var}={}", path.display());
        }
    }

    // The function gets the full store, so a deployment can use `rediss://`, a cluster or
    // Sentinel.
    let composed = out_dir.join("research-api.wasm");
    if let Err(e) = compose_function(&function, &tls, &composed) {
        fail(&format!(
            "composing {FUNCTION_PACKAGE} with the storage component: {e:#}"
        ));
    }
    for (var, path) in [
        ("TASKSTORE_COMPONENT", &plain),
        ("TASKSTORE_TLS_COMPONENT", &tls),
        ("TASKSTORE_HTTP_COMPONENT", &composed),
        ("TASKSTORE_KV_COMPONENT", &kv),
    ] {
        println!("cargo:rustc-env={var}={}", path.display());
    }

    for extra in [
        "Cargo.toml",
        "Cargo.lock",
        "wit",
        "function/Cargo.toml",
        "function/wit",
        "kv/Cargo.toml",
        "kv/wit",
        "testing/kv-consumer/Cargo.toml",
        "testing/kv-consumer/wit",
        "rust-toolchain.toml",
        ".cargo",
    ] {
        let path = workspace.join(extra);
        // A path that does not exist would make cargo rerun this script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // Cargo's build-script hash does not depend on where the workspace lives, so worktrees
    // sharing one CARGO_TARGET_DIR share this OUT_DIR, and the recorded rerun paths may be
    // another worktree's: setting this variable to a new value forces a fresh guest build.
    println!("cargo:rerun-if-env-changed=TASKSTORE_GUEST_REBUILD");
}

/// One build of the storage component: the packages built with it, its cargo features and
/// where it is copied.
struct Variant {
    packages: &'static [&'static str],
    features: &'static [&'static str],
    file_name: &'static str,
}

const PLAIN: Variant = Variant {
    packages: &[GUEST_PACKAGE, FUNCTION_PACKAGE],
    features: &[],
    file_name: "taskstore.wasm",
};

/// The full build: `rediss://` (rustls in the guest, ~0.68 MB more) and Redis Cluster and
/// Sentinel (`topologies`), all kept out of the plain component, which reaches one server.
/// The host switches to it for any URL that needs one of them.
const TLS: Variant = Variant {
    packages: &[GUEST_PACKAGE],
    features: &["tls", "topologies"],
    file_name: "taskstore-tls.wasm",
};

/// Builds `variant`, copies the storage component to `out_dir` and emits
/// `rerun-if-changed` lines for its sources; returns the copy's path.
fn build_variant(
    workspace: &Path,
    target_dir: &Path,
    out_dir: &Path,
    variant: &Variant,
) -> PathBuf {
    build_guest(workspace, target_dir, variant.packages, variant.features);
    let component = copy_out(
        target_dir,
        out_dir,
        &format!("{GUEST_PACKAGE}.wasm"),
        variant.file_name,
    );
    emit_rerun_lines(target_dir, GUEST_PACKAGE);
    component
}

/// Copies the built `artifact` out of the nested target directory as `file_name`.
fn copy_out(target_dir: &Path, out_dir: &Path, artifact: &str, file_name: &str) -> PathBuf {
    let built = target_dir
        .join(GUEST_TARGET)
        .join(GUEST_PROFILE)
        .join(artifact);
    if !built.is_file() {
        fail(&format!(
            "the guest build succeeded but produced no component at {}",
            built.display()
        ));
    }
    let copy = out_dir.join(file_name);
    if let Err(e) = fs::copy(&built, &copy) {
        fail(&format!(
            "cannot copy {} to {}: {e}",
            built.display(),
            copy.display()
        ));
    }
    copy
}

/// `rerun-if-changed` for every source file of the last build of `artifact`.
fn emit_rerun_lines(target_dir: &Path, artifact: &str) {
    let dep_info = target_dir
        .join(GUEST_TARGET)
        .join(GUEST_PROFILE)
        .join(format!("{artifact}.d"));
    for path in guest_sources(&dep_info) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Plugs the storage component's `task-storage` export into the function's import and writes
/// the composition, refusing a result that still imports anything but standard WASI: the
/// composed component must run on any WASI 0.2 HTTP host without our interface.
fn compose_function(function: &Path, storage: &Path, output: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use wac_graph::types::Package;
    use wac_graph::{CompositionGraph, EncodeOptions};

    let mut graph = CompositionGraph::new();
    let storage = Package::from_file("taskstore:storage-impl", None, storage, graph.types_mut())?;
    let storage = graph.register_package(storage)?;
    let function = Package::from_file("taskstore:research-api", None, function, graph.types_mut())?;
    let function = graph.register_package(function)?;
    wac_graph::plug(&mut graph, vec![storage], function)
        .context("plugging task-storage into the function")?;
    let bytes = graph.encode(EncodeOptions::default())?;

    let mut check = CompositionGraph::new();
    let composed =
        Package::from_bytes("taskstore:composed", None, bytes.clone(), check.types_mut())?;
    let world = &check.types()[composed.ty()];
    let foreign: Vec<&String> = world
        .imports
        .keys()
        .filter(|name| !name.starts_with("wasi:"))
        .collect();
    if !foreign.is_empty() {
        anyhow::bail!("the composed component still imports non-WASI interfaces: {foreign:?}");
    }
    let exports_handler = world
        .exports
        .keys()
        .any(|name| name.starts_with("wasi:http/incoming-handler"));
    if !exports_handler {
        anyhow::bail!("the composed component does not export wasi:http/incoming-handler");
    }
    fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

fn build_guest(workspace: &Path, target_dir: &Path, packages: &[&str], features: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .arg("build")
        .args(["--profile", GUEST_PROFILE])
        .args(["--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(packages.iter().flat_map(|package| ["-p", package]))
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if SCRUBBED_VARS.contains(&name) || SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            command.env_remove(name);
        }
    }

    let output = match command.output() {
        Ok(output) => output,
        Err(e) => fail(&format!("cannot run {}: {e}", Path::new(&cargo).display())),
    };
    if !output.status.success() {
        eprintln!("--- nested cargo stdout ---");
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("--- nested cargo stderr ---");
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "building the guest component failed ({}); run `cargo build --profile \
             {GUEST_PROFILE} --target {GUEST_TARGET} -p {} --features '{}'` in {} to see the errors",
            describe(output.status),
            packages.join(" -p "),
            features.join(","),
            workspace.display()
        ));
    }
}

/// Every file listed in the guest's dep-info (`target: dep dep ...`, spaces escaped as `\ `).
fn guest_sources(dep_info: &Path) -> Vec<PathBuf> {
    let text = match fs::read_to_string(dep_info) {
        Ok(text) => text,
        Err(e) => fail(&format!("cannot read {}: {e}", dep_info.display())),
    };
    let mut paths = Vec::new();
    for line in text.lines() {
        let Some((_, deps)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = deps.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => current.push(escaped),
                    None => current.push('\\'),
                },
                ' ' => {
                    if !current.is_empty() {
                        paths.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            paths.push(PathBuf::from(current));
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// Reports on stderr (cargo shows it when the build script fails) and exits without a panic,
/// whose location and backtrace would only bury the message.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
