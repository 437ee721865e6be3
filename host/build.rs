//! Builds the guest components for `wasm32-wasip2` and tells the library where they are, so
//! `taskstore_host` can embed them with `include_bytes!`:
//!
//! - the storage component (the workspace's root package, `taskstore`);
//! - the research-task HTTP function (`examples/research-api`), which imports
//!   `task-storage`, composed with the storage component by `wac-graph` into one component
//!   that exports `wasi:http/incoming-handler` and imports only standard WASI interfaces.
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
const GUEST_TARGET: &str = "wasm32-wasip2";

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
    let release_dir = target_dir.join(GUEST_TARGET).join("release");

    // One nested build for both packages: they share dependencies and one cargo start-up.
    build_guest(&workspace, &target_dir, &[GUEST_PACKAGE, FUNCTION_PACKAGE]);

    let component = built_artifact(&release_dir, GUEST_PACKAGE);
    let function = built_artifact(&release_dir, FUNCTION_ARTIFACT);
    let composed = out_dir.join("research-api.wasm");
    if let Err(e) = compose_function(&function, &component, &composed) {
        fail(&format!(
            "composing {FUNCTION_PACKAGE} with the storage component: {e:#}"
        ));
    }

    for artifact in [GUEST_PACKAGE, FUNCTION_ARTIFACT] {
        for path in guest_sources(&release_dir.join(format!("{artifact}.d"))) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    for extra in [
        "Cargo.toml",
        "Cargo.lock",
        "wit",
        "examples/research-api/Cargo.toml",
        "examples/research-api/wit",
        "rust-toolchain.toml",
        ".cargo",
    ] {
        let path = workspace.join(extra);
        // A path that does not exist would make cargo rerun this script on every build.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!(
        "cargo:rustc-env=TASKSTORE_COMPONENT={}",
        component.display()
    );
    println!(
        "cargo:rustc-env=TASKSTORE_HTTP_COMPONENT={}",
        composed.display()
    );
}

/// The `.wasm` a successful nested build left for `artifact`.
fn built_artifact(release_dir: &Path, artifact: &str) -> PathBuf {
    let path = release_dir.join(format!("{artifact}.wasm"));
    if !path.is_file() {
        fail(&format!(
            "the guest build succeeded but produced no component at {}",
            path.display()
        ));
    }
    path
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

fn build_guest(workspace: &Path, target_dir: &Path, packages: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .arg("build")
        .arg("--release")
        .args(["--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(packages.iter().flat_map(|package| ["-p", package]))
        .arg("--target-dir")
        .arg(target_dir);
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
            "building the guest component failed ({}); run `cargo build --release --target \
             {GUEST_TARGET} -p {}` in {} to see the errors",
            describe(output.status),
            packages.join(" -p "),
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
