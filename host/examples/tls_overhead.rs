//! What `rediss://` costs: component sizes and compile times, connect + handshake time, and
//! per-operation time over TLS against plain TCP, on one private redis-server that listens
//! on both. Prints figures; asserts nothing. Run in release:
//!
//! ```sh
//! cargo run --release -p taskstore-host --example tls_overhead
//! ```

use std::time::{Duration, Instant};

use taskstore_host::{Options, Runtime, TaskStore, COMPONENT, TLS_COMPONENT};
use taskstore_testing::pki;
use taskstore_testing::redis_server::RedisServer;

const OPS: usize = 5_000;
const OPENS: usize = 50;
const REPS: usize = 3;
const DOC: &str =
    r#"{"status": "pending", "query": "what does TLS cost per operation?", "progress": 0}"#;

/// A measured configuration: its name, the runtime, and the options each store opens with.
type Case<'a> = (&'a str, &'a Runtime, Box<dyn Fn() -> Options + 'a>);

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> anyhow::Result<()> {
    println!("plain component: {} bytes", COMPONENT.len());
    println!("TLS component:   {} bytes", TLS_COMPONENT.len());
    let started = Instant::now();
    let plain_runtime = Runtime::builder().build()?;
    println!("compile plain component: {:?}", started.elapsed());
    let started = Instant::now();
    let tls_runtime = Runtime::builder().tls().build()?;
    println!("compile TLS component:   {:?}", started.elapsed());

    let pki = pki::pki("taskstore bench CA", &["127.0.0.1"]);
    let server = RedisServer::builder().tls(pki.server.clone()).start()?;
    let tls_options = || Options {
        tls_ca_certificates: Some(pki.ca_pem.clone()),
        ..Options::new(server.tls_url().expect("TLS port"))
    };
    let cases: [Case; 3] = [
        (
            "plain component, redis://",
            &plain_runtime,
            Box::new(|| Options::new(server.url())),
        ),
        (
            "TLS component, redis://",
            &tls_runtime,
            Box::new(|| Options::new(server.url())),
        ),
        (
            "TLS component, rediss://",
            &tls_runtime,
            Box::new(tls_options),
        ),
    ];

    println!("\nopen = instantiate + connect (+ TLS handshake) + PING; median of {OPENS}");
    for (name, runtime, options) in &cases {
        let mut samples = Vec::with_capacity(OPENS);
        for _ in 0..OPENS {
            let started = Instant::now();
            let store = TaskStore::open(runtime, options())?;
            samples.push(started.elapsed());
            drop(store);
        }
        println!(
            "  {name:<28} {:>8.0} µs",
            median(samples).as_secs_f64() * 1e6
        );
    }

    println!("\nper operation, {OPS} sequential ops, median of {REPS} runs");
    for (name, runtime, options) in &cases {
        let mut store = TaskStore::open(runtime, options())?;
        let ids: Vec<String> = (0..OPS).map(|i| format!("bench-{i}")).collect();
        let (mut sets, mut gets) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            let started = Instant::now();
            for id in &ids {
                store.set(id, DOC, None)?;
            }
            sets.push(started.elapsed() / OPS as u32);
            let started = Instant::now();
            for id in &ids {
                store.get(id)?;
            }
            gets.push(started.elapsed() / OPS as u32);
        }
        println!(
            "  {name:<28} SET {:>6.1} µs   GET {:>6.1} µs",
            median(sets).as_secs_f64() * 1e6,
            median(gets).as_secs_f64() * 1e6
        );
    }
    Ok(())
}
