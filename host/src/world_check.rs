//! The built components checked against the WIT world they implement, `redis-task-store` in
//! the workspace's `wit/`: every interface a build imports must be declared by the world, so
//! a host that provides the world runs either build (plain and TLS), and a tool can check a
//! build against the world alone. The world declares nothing that neither build imports,
//! and both builds export what it exports.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use wit_parser::Resolve;

use crate::engine::{compile, new_engine};
use crate::{COMPONENT, TLS_COMPONENT};

const WORLD: &str = "redis-task-store";

/// What a world or a component imports and exports, by interface name with its version
/// (`wasi:io/poll@0.2.12`), as a component names them.
#[derive(Debug)]
struct Interfaces {
    imports: BTreeSet<String>,
    exports: BTreeSet<String>,
}

/// The workspace's `wit/`: the world's package, with the WASI packages under `deps/`.
fn wit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit")
}

/// The interfaces the world `redis-task-store` of the WIT package in `dir` imports (those it
/// names and those they use) and exports.
fn world_interfaces(dir: &Path) -> Interfaces {
    let mut resolve = Resolve::new();
    let (package, _) = resolve
        .push_dir(dir)
        .unwrap_or_else(|e| panic!("parsing the WIT in {}: {e:#}", dir.display()));
    let world = resolve.select_world(&[package], Some(WORLD)).unwrap();
    let world = &resolve.worlds[world];
    Interfaces {
        imports: world
            .imports
            .keys()
            .map(|key| resolve.name_world_key(key))
            .collect(),
        exports: world
            .exports
            .keys()
            .map(|key| resolve.name_world_key(key))
            .collect(),
    }
}

/// The interfaces `component` imports and exports.
fn component_interfaces(component: &[u8]) -> Interfaces {
    let engine = new_engine().unwrap();
    let component_type = compile(&engine, component).unwrap().component_type();
    Interfaces {
        imports: component_type
            .imports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect(),
        exports: component_type
            .exports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect(),
    }
}

/// The plain and the TLS component's interfaces, compiled once for all tests.
fn builds() -> &'static [(&'static str, Interfaces); 2] {
    static BUILDS: OnceLock<[(&str, Interfaces); 2]> = OnceLock::new();
    BUILDS.get_or_init(|| {
        [
            ("taskstore.wasm", component_interfaces(COMPONENT)),
            ("taskstore-tls.wasm", component_interfaces(TLS_COMPONENT)),
        ]
    })
}

/// What `build` imports that `world` does not declare.
fn undeclared_imports(build: &Interfaces, world: &Interfaces) -> BTreeSet<String> {
    build.imports.difference(&world.imports).cloned().collect()
}

/// Copies the files of `from` into the existing directory `to`, and its directories (the
/// `wasi:keyvalue` packages) whole.
fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of `wit/` in a fresh directory, with `line` deleted from the world's file.
fn wit_without_line(line: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let source = wit_dir();
    fs::create_dir(copy.path().join("deps")).unwrap();
    copy_dir(&source.join("deps"), &copy.path().join("deps"));
    let world = fs::read_to_string(source.join("task-storage.wit")).unwrap();
    let kept: Vec<&str> = world.lines().filter(|l| l.trim() != line).collect();
    assert_eq!(
        kept.len() + 1,
        world.lines().count(),
        "{line:?} is in the world once"
    );
    fs::write(copy.path().join("task-storage.wit"), kept.join("\n")).unwrap();
    copy
}

#[test]
fn the_world_declares_every_import_of_both_builds() {
    let world = world_interfaces(&wit_dir());
    for (file, build) in builds() {
        let undeclared = undeclared_imports(build, &world);
        assert!(
            undeclared.is_empty(),
            "{file} imports {undeclared:?}, which the world `{WORLD}` in wit/task-storage.wit \
             does not declare: add an `import` for each (its package goes in wit/deps/)"
        );
    }
}

#[test]
fn the_world_declares_no_import_that_neither_build_uses() {
    let world = world_interfaces(&wit_dir());
    let [(_, plain), (_, tls)] = builds();
    let used: BTreeSet<String> = plain.imports.union(&tls.imports).cloned().collect();
    let unused: Vec<&String> = world.imports.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the world `{WORLD}` declares {unused:?}, which neither build imports"
    );
    // The TLS build is the plain one plus rustls: it needs more, never less.
    assert!(plain.imports.is_subset(&tls.imports));
}

#[test]
fn both_builds_export_what_the_world_exports() {
    let world = world_interfaces(&wit_dir());
    assert_eq!(
        world.exports,
        BTreeSet::from(["taskstore:storage/task-storage@0.1.0".to_owned()])
    );
    for (file, build) in builds() {
        assert_eq!(build.exports, world.exports, "{file}");
    }
}

#[test]
fn a_world_missing_an_import_fails_the_check() {
    // Name lookup is used by both builds, and no other interface of the world uses it, so
    // deleting its line removes it from the world altogether.
    let missing = "wasi:sockets/ip-name-lookup@0.2.12";
    let copy = wit_without_line(&format!("import {missing};"));
    let world = world_interfaces(copy.path());
    assert!(!world.imports.contains(missing));
    for (file, build) in builds() {
        assert_eq!(
            undeclared_imports(build, &world),
            BTreeSet::from([missing.to_owned()]),
            "{file}"
        );
    }
}
