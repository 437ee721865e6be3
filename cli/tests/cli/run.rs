//! Runs the `taskstore` binary as a user would, within a deadline, capturing its output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Any one run of the binary ends within this, or the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// This test process's own component cache (`TASKSTORE_CACHE_DIR`), removed at exit.
static CACHE_DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

/// The component cache every `taskstore` this test process runs uses: its own, so that no
/// test reads or fills the user's `~/.cache/taskstore`, or another test run's files.
pub fn cache_dir() -> &'static Path {
    CACHE_DIR
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temp dir for the component cache");
            // Statics are never dropped; the dir goes when the process exits.
            // SAFETY: registers a plain `extern "C"` function that touches only the static.
            let registered = unsafe { libc::atexit(remove_cache_dir) };
            assert_eq!(registered, 0, "atexit");
            dir
        })
        .path()
}

extern "C" fn remove_cache_dir() {
    if let Some(dir) = CACHE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// Runs `taskstore` with `args`, `stdin` as input and `env` on top of this process's
/// environment minus `REDIS_URL`, `REDIS_PASSWORD` and `TASKSTORE_TLS_CA_FILE` (so a developer's settings
/// cannot leak in), with this process's own component cache ([`cache_dir`]). `RUST_BACKTRACE=1` unless `env` says otherwise: a panic would print as
/// much as it can, which the secret-scrubbing tests want to see.
pub fn taskstore(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let out = tempfile::tempdir().expect("temp dir for the binary's output");
    let (stdout_path, stderr_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskstore"))
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("TASKSTORE_TLS_CA_FILE")
        .env_remove("REDIS_PASSWORD")
        .env("RUST_BACKTRACE", "1")
        .env("TASKSTORE_CACHE_DIR", cache_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        // Files, not pipes: a full pipe cannot stall the child while we wait for it.
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run the taskstore binary");
    {
        let mut input = child.stdin.take().expect("piped stdin");
        // The binary may exit without reading stdin; a broken pipe is then expected.
        let _ = input.write_all(stdin.as_bytes());
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for taskstore") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("taskstore {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status
            .code()
            .expect("taskstore exited normally, not by a signal"),
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    }
}

fn read(path: &Path) -> String {
    String::from_utf8(std::fs::read(path).expect("read captured output")).expect("UTF-8 output")
}
