//! The published contract, checked by a tool nobody here wrote: schemathesis runs against
//! `taskstore serve` on a private redis-server, reading the document the function serves at
//! `/research/openapi.json`, with every check, the stateful phase (the document's links:
//! create → get → patch → list → delete) and a fixed seed. And `taskstore export` writes the
//! same document out.
//!
//! schemathesis is pinned in `scripts/setup.sh` (pip, like redis-py); without it these tests
//! fail, they never skip.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use taskstore_testing::redis_server::RedisServer;

use crate::run::taskstore;
use crate::serve::{agent, get, Serve};

/// Test cases per operation and phase: enough for each check to see every operation from
/// many sides, few enough for a run of seconds.
const MAX_EXAMPLES: &str = "50";
/// Fixed, so that a failure is reproducible with the same command.
const SEED: &str = "20261203";
/// The run is killed past this (a typical run takes under 15 s).
const RUN_LIMIT: Duration = Duration::from_secs(50);

/// schemathesis's CLI, through the `python3` that `scripts/setup.sh` installs it into (its
/// `st` script may not be on `PATH`, e.g. under `pip install --user`).
fn schemathesis() -> Command {
    let mut command = Command::new("python3");
    command.args([
        "-c",
        "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; schemathesis()",
    ]);
    command
}

/// The version `scripts/setup.sh` pins (`schemathesis_version=X`).
fn pinned_version() -> String {
    const PIN: &str = "\nschemathesis_version=";
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    let text = std::fs::read_to_string(&setup).expect("read scripts/setup.sh");
    let start = text.find(PIN).expect("setup.sh pins schemathesis") + PIN.len();
    text[start..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .expect("a version")
        .to_owned()
}

/// The installed version, or a failure saying how to install it.
fn installed_version() -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ])
        .output()
        .expect("run python3 (scripts/setup.sh needs it)");
    assert!(
        output.status.success(),
        "schemathesis is not installed; run scripts/setup.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

#[test]
fn schemathesis_finds_nothing_against_the_served_contract() {
    assert_eq!(
        installed_version(),
        pinned_version(),
        "schemathesis is not the pinned version; run scripts/setup.sh"
    );
    let redis = RedisServer::start().unwrap();
    let mut serve = Serve::start(&redis.url(), &[]);
    let workdir = tempfile::tempdir().unwrap();
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli");
    let started = Instant::now();
    let mut child = schemathesis()
        .args([
            "run",
            &serve.url("/research/openapi.json"),
            "--url",
            &serve.url(""),
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            // One worker: the seed then fixes the order of requests too.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            "--no-color",
        ])
        // Its hooks teach it what a well-formed list cursor is (see the file).
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "contract_hooks")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(workdir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 -m schemathesis");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if started.elapsed() >= RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    let (_, serve_log) = serve.kill();
    let status = status.unwrap_or_else(|| panic!("schemathesis ran past {RUN_LIMIT:?}:\n{output}"));
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{output}\n--- taskstore serve's log:\n{serve_log}"
    );
    // Every phase ran, the stateful one along the document's links.
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(output.contains(phase), "no {phase} phase:\n{output}");
    }
    let links = output
        .split("API Links:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|covered| covered.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no stateful link coverage:\n{output}"));
    assert!(links >= 8, "only {links} links were followed:\n{output}");
}

/// The document is served as JSON, the same under every host, and `export` writes it out.
#[test]
fn the_contract_is_served_and_exported_alike() {
    let redis = RedisServer::start().unwrap();
    let serve = Serve::start(&redis.url(), &[]);
    let agent = agent();
    let served = get(&agent, &serve.url("/research/openapi.json"));
    assert_eq!(served.status, 200, "{served:?}");
    let document: serde_json::Value = serde_json::from_str(&served.body).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/research/tasks/{id}"]["patch"].is_object());
    for probe in ["/healthz", "/readyz"] {
        let reply = get(&agent, &serve.url(probe));
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"status":"ok"}"#)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = taskstore(&["export", out.to_str().unwrap()], &[], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exported = std::fs::read_to_string(out.join("openapi.json")).expect("openapi.json");
    assert_eq!(exported, served.body);
    assert!(run.stdout.contains("openapi.json"), "{}", run.stdout);
}
