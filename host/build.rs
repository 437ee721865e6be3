//! Builds the guest component (the workspace's root package) for `wasm32-wasip2` and tells
//! the library where it is, so `taskstore_host` can embed it with `include_bytes!`.
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
    let component = release_dir.join(format!("{GUEST_PACKAGE}.wasm"));
    let dep_info = release_dir.join(format!("{GUEST_PACKAGE}.d"));

    build_guest(&workspace, &target_dir);

    if !component.is_file() {
        fail(&format!(
            "the guest build succeeded but produced no component at {}",
            component.display()
        ));
    }

    for path in guest_sources(&dep_info) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for extra in [
        "Cargo.toml",
        "Cargo.lock",
        "wit",
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
    println!(
        "cargo:rustc-env=TASKSTORE_COMPONENT={}",
        component.display()
    );
}

fn build_guest(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .arg("build")
        .arg("--release")
        .args(["--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["-p", GUEST_PACKAGE])
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
             {GUEST_TARGET} -p {GUEST_PACKAGE}` in {} to see the errors",
            describe(output.status),
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
