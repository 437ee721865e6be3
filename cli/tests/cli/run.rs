//! Runs the `taskstore` binary as a user would, within a deadline, capturing its output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
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

/// Runs `taskstore` with `args`, `stdin` as input and `env` on top of this process's
/// environment minus `REDIS_URL`, `REDIS_PASSWORD` and `TASKSTORE_TLS_CA_FILE` (so a developer's settings
/// cannot leak in). `RUST_BACKTRACE=1` unless `env` says otherwise: a panic would print as
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
