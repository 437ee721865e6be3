//! What both consumers share: argument handling and how results are reported. Every line a
//! test checks goes to stdout; a failed check prints `FAIL <step>: <detail>` and exits 1.

use std::process::exit;

/// The command line after the program name.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// `args[index]`, or a usage error (exit 2).
pub fn arg(args: &[String], index: usize, what: &str) -> String {
    match args.get(index) {
        Some(value) => value.clone(),
        None => {
            eprintln!("missing argument {index}: {what}");
            exit(2)
        }
    }
}

/// `args[index]` as a number, or a usage error (exit 2).
pub fn number<T: std::str::FromStr>(args: &[String], index: usize, what: &str) -> T {
    match arg(args, index, what).parse() {
        Ok(value) => value,
        Err(_) => {
            eprintln!("argument {index} ({what}) is not a number");
            exit(2)
        }
    }
}

/// Fails the run when `ok` is false.
pub fn check(step: &str, ok: bool, detail: impl FnOnce() -> String) {
    if !ok {
        println!("FAIL {step}: {}", detail());
        exit(1);
    }
}

/// The value of a `Result`, or a failed step.
pub fn expect<T, E: std::fmt::Debug>(step: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => {
            println!("FAIL {step}: {err:?}");
            exit(1)
        }
    }
}

/// Every byte value, several times over: a binary value no text encoding survives.
pub fn binary_value() -> Vec<u8> {
    (0..1024).map(|i| (i % 256) as u8).collect()
}

/// A value of `len` bytes with a pattern that shows truncation or reordering.
pub fn large_value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Milliseconds of sleep (wasi:clocks through std).
pub fn pause(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}
