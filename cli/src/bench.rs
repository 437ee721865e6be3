//! `taskstore bench`: one workload through the component in this host, through a native
//! build of the same client and store code (`taskstore::store::Store<StdConnector>`), and
//! through the `redis` crate (the client Rust programs use), side by side: the ratio
//! component/native is what the WebAssembly layer costs, and the ratios against the `redis`
//! crate what the whole store costs over the commands it sends.
//!
//! # Workload
//! One connection per client, sequential calls, `--n` distinct ids per repetition after a
//! warm-up: `set` (7-day TTL), `get`, `lifecycle` (`update` with a merge patch setting
//! `status` and `progress`), `delete`; then `set-many` and `get-many` in batches of 100;
//! then `list`: every page (100 tasks each) of a filtered listing (`status = "running"`,
//! a quarter of them) over `--list-tasks` tasks. Each repetition rotates which client goes
//! first. Each line reads `<client>:<op> <ops_per_s> <p50_us> <p99_us>`; for batches and
//! `list`, ops/s counts tasks and the latencies are per call. `big-document` times `update`
//! and a status-filtered `list` of one 1.2 MB task of 80,000 members (document work must
//! stay linear in its size).
//!
//! The component runs as [`AsyncTaskStore`] on a current-thread tokio runtime, each
//! repetition inside one `block_on` on the thread that drives it (no thread hop per socket
//! operation). The blocking [`TaskStore`] is the same with one `block_on` per call.
//!
//! The `redis` crate client sends what the store sends, on one synchronous connection, one
//! round trip per call: `SETEX` with the same TTL; `GET`; for `update`, `WATCH` + `GET`
//! pipelined, the same merge code, then `MULTI` / `SET … KEEPTTL` / `EXEC` pipelined; `DEL`;
//! batches as one pipeline of `SETEX`s or `DEL`s, or one `MGET`; `list` as `SCAN … MATCH
//! TYPE string`, pipelined `STRLEN`s and `MGET` per chunk, filtered by the same status code.
//! It does not validate documents or ids, which the store does on every write.
//!
//! It also reports the component's size, compile and cache-load times, instantiation from
//! `InstancePre`, cold and warm CLI starts (separate processes), and memory per idle store.
//!
//! Timings on a shared 2-core machine vary: unpinned, cross-core wake-ups can triple every
//! latency. Compare the clients within one run; `--pin` puts this process and a private
//! `redis-server` on one CPU.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;
use taskstore::config::{RedisUrl, StoreOptions, StoreSettings};
use taskstore::std_tcp::StdConnector;
use taskstore::store::PAGE_BYTE_BUDGET;
// The host library builds the client with its `tls` feature, so the native build here has
// rustls too: the `tls-open` baseline.
use taskstore::tls::MaybeTlsConnector;
use taskstore_host::cache::{new_engine, CacheOutcome, ComponentCache, CACHE_DIR_ENV};
use taskstore_host::probe::InstanceProbe;
use taskstore_host::{
    AsyncTaskStore, ListOptions, ListingMode, Options, Runtime, Task, TaskStore, UpdateOptions,
    COMPONENT,
};
// Without --redis or --port the benchmark runs on a throwaway server (the test fixture's guard).
use taskstore_testing::redis_server::{RedisServer, TlsFiles};
use wasmtime::component::Component;

type NativeStore = taskstore::store::Store<StdConnector>;

/// The research task the benchmark stores unless `--doc` names another (1 KiB).
pub const DEFAULT_DOCUMENT: &str = include_str!("../benches/task.json");

/// TTL of every task written: 7 days.
const TTL_SECONDS: u64 = 604_800;
const BATCH: usize = 100;
/// Members of the `big-document` task: about 1.2 MB of JSON.
const BIG_DOCUMENT_MEMBERS: usize = 80_000;
/// Timed `update` + `list` rounds on the big task.
const BIG_DOCUMENT_ROUNDS: usize = 5;
const LIST_PAGE: u32 = 100;
const LIST_STATUSES: [&str; 4] = ["pending", "running", "completed", "failed"];
const LIST_FILTER: &str = "running";
/// Sequential calls of each kind before the timed ones, per client.
const WARM_UP: usize = 1_000;
/// Stores opened to measure memory per idle store.
const IDLE_STORES: usize = 100;
/// Every CLI process the benchmark starts gets this timeout, so none can hang.
const CLI_TIMEOUT_MS: &str = "5000";

/// The clients of the workload, in the order of the first repetition.
const KINDS: [Kind; 3] = [Kind::Component, Kind::Native, Kind::RedisCrate];

/// Arguments of `taskstore bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Port of a Redis on 127.0.0.1, instead of --redis [default: a private redis-server]
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Distinct task ids per sequential op and repetition
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub n: usize,
    /// JSON object to store [default: the embedded 1 KiB research task]
    #[arg(long, value_name = "FILE")]
    pub doc: Option<PathBuf>,
    /// Repetitions; each rotates which client goes first
    #[arg(long, value_name = "R", default_value_t = 3)]
    pub reps: usize,
    /// What to run, comma-separated [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub ops: Vec<Section>,
    /// Tasks the `list` op lists
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub list_tasks: usize,
    /// Pin this process, its threads and children, and a private redis-server to CPU C
    /// (default 0)
    #[arg(long, value_name = "C", num_args = 0..=1, default_missing_value = "0")]
    pub pin: Option<usize>,
    /// Tasks the `status-index` section loads (1% of them pending)
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub index_tasks: usize,
    /// Internal: open a native store, get ID, exit (the baseline of the CLI start figures)
    #[arg(long, value_name = "ID", hide = true)]
    pub native_get: Option<String>,
}

/// What `--ops` selects: the workload's operations, and the other measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Section {
    Set,
    Get,
    Lifecycle,
    Delete,
    SetMany,
    GetMany,
    List,
    /// `update` and a status-filtered `list` of one 1 MB task with 80,000 members.
    BigDocument,
    /// Component size, compile and cache-load times, instantiation, CLI starts.
    Start,
    /// Memory per idle store.
    Memory,
    /// Listing the pending 1% of `--index-tasks` tasks by the status index against a scan,
    /// and what the index adds to `set` and `update` (not run by default: it loads 1M
    /// tasks).
    StatusIndex,
    /// Opening a store (instantiate, connect, TLS handshake, `PING`) over `rediss://`
    /// against `redis://`, component and native, on a private TLS redis-server (not run by
    /// default: it needs `openssl` to make the server's certificate).
    TlsOpen,
}

const WORKLOAD: [Section; 7] = [
    Section::Set,
    Section::Get,
    Section::Lifecycle,
    Section::Delete,
    Section::SetMany,
    Section::GetMany,
    Section::List,
];
const SEQUENTIAL: [Section; 4] = [
    Section::Set,
    Section::Get,
    Section::Lifecycle,
    Section::Delete,
];

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Set => "set",
            Section::Get => "get",
            Section::Lifecycle => "lifecycle",
            Section::Delete => "delete",
            Section::SetMany => "set-many",
            Section::GetMany => "get-many",
            Section::List => "list",
            Section::BigDocument => "big-document",
            Section::Start => "start",
            Section::Memory => "memory",
            Section::StatusIndex => "status-index",
            Section::TlsOpen => "tls-open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Component,
    Native,
    /// The `redis` crate, sending the store's commands itself.
    RedisCrate,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Component => "component",
            Kind::Native => "native",
            Kind::RedisCrate => "redis-crate",
        }
    }

    /// First letter of this client's ids: all write ids of the same length.
    fn tag(self) -> char {
        match self {
            Kind::Component => 'c',
            Kind::Native => 'n',
            Kind::RedisCrate => 'r',
        }
    }
}

/// Runs `taskstore bench`. `redis` is the CLI's `--redis` (or `REDIS_URL`), `prefix` its
/// `--prefix`.
///
/// # Errors
/// Bad arguments, a Redis that is not on this machine or cannot be reached, a failed
/// operation, or an operation that returned something other than what was written.
pub fn run(args: &BenchArgs, redis: Option<String>, prefix: Option<String>) -> anyhow::Result<()> {
    if let Some(cpu) = args.pin {
        pin_to_cpu(cpu)?;
    }
    if let Some(id) = &args.native_get {
        return native_get(redis.as_deref(), args.port, id);
    }
    ensure!(args.n > 0, "--n must be at least 1");
    ensure!(args.reps > 0, "--reps must be at least 1");
    ensure!(
        args.list_tasks <= 1_000_000,
        "--list-tasks must be at most 1000000"
    );
    let sections: Vec<Section> = if args.ops.is_empty() {
        let mut all = WORKLOAD.to_vec();
        all.extend([Section::BigDocument, Section::Start, Section::Memory]);
        all
    } else {
        args.ops.clone()
    };
    let document = match &args.doc {
        None => DEFAULT_DOCUMENT.trim_end().to_owned(),
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim_end()
            .to_owned(),
    };
    ensure!(
        serde_json::from_str::<Value>(&document).is_ok_and(|v| v.is_object()),
        "the document must be one JSON object"
    );

    let (server, url) = match (redis, args.port) {
        (Some(_), Some(_)) => bail!("give either --redis (or REDIS_URL) or --port, not both"),
        (Some(url), None) => (None, url),
        (None, Some(port)) => (None, format!("redis://127.0.0.1:{port}")),
        (None, None) => {
            let server = RedisServer::start().context("cannot start a private redis-server")?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let where_ = check_loopback(&url)?;
    let prefix = prefix.unwrap_or_else(|| format!("taskstore-bench-{}:", std::process::id()));

    println!(
        "# taskstore bench: n={} reps={} document={} B, Redis {where_}{}, {}, {} CPUs online",
        args.n,
        args.reps,
        document.len(),
        if server.is_some() { " (private)" } else { "" },
        match args.pin {
            Some(cpu) => format!("pinned to CPU {cpu}"),
            None => "unpinned".to_owned(),
        },
        online_cpus(),
    );

    ensure!(
        (100..=10_000_000).contains(&args.index_tasks),
        "--index-tasks must be between 100 and 10000000"
    );
    let bench = Bench {
        url,
        prefix,
        document,
        n: args.n,
        reps: args.reps,
        list_tasks: args.list_tasks,
        index_tasks: args.index_tasks,
        sections,
    };
    let mut report = Report::default();
    if WORKLOAD.iter().any(|op| bench.has(*op)) {
        bench.workload(&mut report)?;
        print!("{}", report.workload_table(&bench));
    }
    if bench.has(Section::BigDocument) {
        bench.big_document()?;
    }
    if bench.has(Section::Start) {
        bench.start_up(&mut report)?;
    }
    if bench.has(Section::Memory) {
        bench.memory(&mut report)?;
    }
    if bench.has(Section::StatusIndex) {
        bench.status_index()?;
    }
    if bench.has(Section::TlsOpen) {
        bench.tls_open()?;
    }
    print!("{}", report.targets());
    drop(server);
    Ok(())
}

struct Bench {
    url: String,
    prefix: String,
    document: String,
    n: usize,
    reps: usize,
    list_tasks: usize,
    index_tasks: usize,
    sections: Vec<Section>,
}

/// Latencies of one client and op, and how many tasks they covered.
#[derive(Default)]
struct Samples {
    nanos: Vec<u64>,
    tasks: u64,
}

impl Samples {
    fn record(&mut self, started: Instant, tasks: usize) {
        self.nanos.push(started.elapsed().as_nanos() as u64);
        self.tasks += tasks as u64;
    }

    /// Tasks per second over the time spent inside the calls.
    fn per_second(&self) -> f64 {
        let total: u64 = self.nanos.iter().sum();
        if total == 0 {
            0.0
        } else {
            self.tasks as f64 * 1e9 / total as f64
        }
    }

    fn percentile_us(&self, p: f64) -> f64 {
        percentile(&self.nanos, p) as f64 / 1e3
    }
}

/// The `p` quantile (0..=1) by nearest rank.
fn percentile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: &[u64]) -> u64 {
    percentile(values, 0.5)
}

#[derive(Default)]
struct Report {
    samples: HashMap<(Kind, Section), Samples>,
    component_bytes: usize,
    warm_cli_overhead_ms: Option<f64>,
    idle_linear_bytes: Option<usize>,
    idle_rss_bytes: Option<i64>,
}

impl Report {
    fn samples(&mut self, kind: Kind, op: Section) -> &mut Samples {
        self.samples.entry((kind, op)).or_default()
    }

    /// The workload's table: a line per client and op, then the ratios per op.
    fn workload_table(&self, bench: &Bench) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# <client>:<op> <ops_per_s> <p50_us> <p99_us>  (set-many, get-many, list: tasks/s, latency per call)"
        );
        for op in WORKLOAD.into_iter().filter(|op| bench.has(*op)) {
            for kind in KINDS {
                if let Some(s) = self.samples.get(&(kind, op)) {
                    let _ = writeln!(
                        out,
                        "{}:{} {:.0} {:.1} {:.1}",
                        kind.name(),
                        op.name(),
                        s.per_second(),
                        s.percentile_us(0.5),
                        s.percentile_us(0.99)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# ratios: <op> p50 <component/native> <component/redis-crate> <native/redis-crate> ops/s <same three>"
        );
        for op in WORKLOAD.into_iter().filter(|op| bench.has(*op)) {
            let (Some(c), Some(n), Some(r)) = (
                self.samples.get(&(Kind::Component, op)),
                self.samples.get(&(Kind::Native, op)),
                self.samples.get(&(Kind::RedisCrate, op)),
            ) else {
                continue;
            };
            let p50 = |a: &Samples, b: &Samples| a.percentile_us(0.5) / b.percentile_us(0.5);
            let rate = |a: &Samples, b: &Samples| a.per_second() / b.per_second();
            let _ = writeln!(
                out,
                "ratio:{} p50 {:.2} {:.2} {:.2} ops/s {:.2} {:.2} {:.2}",
                op.name(),
                p50(c, n),
                p50(c, r),
                p50(n, r),
                rate(c, n),
                rate(c, r),
                rate(n, r)
            );
        }
        out
    }

    fn pair(&self, op: Section, other: Kind) -> Option<(&Samples, &Samples)> {
        Some((
            self.samples.get(&(Kind::Component, op))?,
            self.samples.get(&(other, op))?,
        ))
    }

    /// Each measured figure against its target.
    fn targets(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# targets");
        for op in SEQUENTIAL {
            if let Some((c, n)) = self.pair(op, Kind::Native) {
                let ratio = c.percentile_us(0.5) / n.percentile_us(0.5);
                let _ = writeln!(
                    out,
                    "target:{} p50 component/native {ratio:.2} <= 1.25: {}",
                    op.name(),
                    verdict(ratio <= 1.25)
                );
            }
            if let Some((c, r)) = self.pair(op, Kind::RedisCrate) {
                let ratio = c.percentile_us(0.5) / r.percentile_us(0.5);
                let _ = writeln!(
                    out,
                    "target:{} p50 component/redis-crate {ratio:.2} <= 1.00: {}",
                    op.name(),
                    verdict(ratio <= 1.0)
                );
            }
        }
        for (batch, single) in [
            (Section::SetMany, Section::Set),
            (Section::GetMany, Section::Get),
        ] {
            for kind in KINDS {
                let (Some(b), Some(s)) = (
                    self.samples.get(&(kind, batch)),
                    self.samples.get(&(kind, single)),
                ) else {
                    continue;
                };
                let ratio = b.per_second() / s.per_second();
                let _ = writeln!(
                    out,
                    "target:{}:{} {:.0} tasks/s = {ratio:.1} x {} {:.0}/s >= 5: {}",
                    kind.name(),
                    batch.name(),
                    b.per_second(),
                    single.name(),
                    s.per_second(),
                    verdict(ratio >= 5.0)
                );
            }
        }
        if self.component_bytes > 0 {
            let kib = self.component_bytes as f64 / 1024.0;
            let _ = writeln!(
                out,
                "target:component-size {kib:.1} KiB <= 160 KiB: {}",
                verdict(kib <= 160.0)
            );
        }
        if let Some(ms) = self.warm_cli_overhead_ms {
            let _ = writeln!(
                out,
                "target:warm-cli host time beyond the native process {ms:.2} ms < 5 ms: {}",
                verdict(ms < 5.0)
            );
        }
        if let Some(bytes) = self.idle_linear_bytes {
            let rss = self.idle_rss_bytes.unwrap_or(0);
            let worst = (bytes as i64).max(rss) as f64 / (1024.0 * 1024.0);
            let _ = writeln!(
                out,
                "target:idle-store {worst:.2} MiB (larger of linear memory and RSS per store) <= 2 MiB: {}",
                verdict(worst <= 2.0)
            );
        }
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

/// The three clients behind one interface. Native and `redis` crate calls are synchronous;
/// running them inside the same async code costs a poll of a ready future.
enum Client {
    Component(Box<AsyncTaskStore>),
    Native(Box<NativeStore>),
    RedisCrate(Box<RedisCrateClient>),
}

/// Ids and documents of one batch, built for both clients before the clock starts.
struct Batch {
    ids: Vec<String>,
    host: Vec<Task>,
    native: Vec<taskstore::store::Task>,
}

impl Batch {
    fn new(ids: Vec<String>, document: impl Fn(usize) -> String) -> Batch {
        let host: Vec<Task> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Task {
                id: id.clone(),
                document: document(i),
            })
            .collect();
        let native = host
            .iter()
            .map(|task| taskstore::store::Task {
                id: task.id.clone(),
                document: task.document.clone(),
            })
            .collect();
        Batch { ids, host, native }
    }
}

impl Client {
    async fn open(
        kind: Kind,
        runtime: &Runtime,
        url: &str,
        prefix: &str,
    ) -> anyhow::Result<Client> {
        Ok(match kind {
            Kind::Component => {
                let options = Options {
                    key_prefix: Some(prefix.to_owned()),
                    ..Options::new(url)
                };
                Client::Component(Box::new(runtime.open_async(options).await?))
            }
            Kind::Native => {
                let options = StoreOptions {
                    key_prefix: Some(prefix.to_owned()),
                    ..StoreOptions::new(url)
                };
                Client::Native(Box::new(NativeStore::open(&options, StdConnector)?))
            }
            Kind::RedisCrate => Client::RedisCrate(Box::new(RedisCrateClient::open(url, prefix)?)),
        })
    }

    async fn set(&mut self, id: &str, document: &str) -> anyhow::Result<()> {
        match self {
            Client::Component(s) => s.set(id, document, Some(TTL_SECONDS)).await?,
            Client::Native(s) => s.set(id, document, Some(TTL_SECONDS))?,
            Client::RedisCrate(c) => c.set(id, document)?,
        }
        Ok(())
    }

    async fn get(&mut self, id: &str) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Client::Component(s) => s.get(id).await?,
            Client::Native(s) => s.get(id)?,
            Client::RedisCrate(c) => c.get(id)?,
        })
    }

    async fn update(&mut self, id: &str, patch: &str) -> anyhow::Result<Option<String>> {
        Ok(match self {
            Client::Component(s) => s.update(id, patch, &UpdateOptions::default()).await?,
            Client::Native(s) => s.update(id, patch, &Default::default())?,
            Client::RedisCrate(c) => c.update(id, patch)?,
        })
    }

    async fn delete(&mut self, id: &str) -> anyhow::Result<bool> {
        Ok(match self {
            Client::Component(s) => s.delete(id).await?,
            Client::Native(s) => s.delete(id)?,
            Client::RedisCrate(c) => c.delete(id)?,
        })
    }

    async fn set_many(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let failed = match self {
            Client::Component(s) => s
                .set_many(&batch.host, Some(TTL_SECONDS))
                .await?
                .into_iter()
                .filter(Result::is_err)
                .count(),
            Client::Native(s) => s
                .set_many(&batch.native, Some(TTL_SECONDS))?
                .into_iter()
                .filter(Result::is_err)
                .count(),
            // The pipeline fails as a whole on any error reply.
            Client::RedisCrate(c) => {
                c.set_many(&batch.host)?;
                0
            }
        };
        ensure!(failed == 0, "{failed} writes of a set-many failed");
        Ok(())
    }

    async fn get_many(&mut self, ids: &[String]) -> anyhow::Result<usize> {
        let found = match self {
            Client::Component(s) => s.get_many(ids).await?,
            Client::Native(s) => s.get_many(ids)?,
            Client::RedisCrate(c) => c.get_many(ids)?,
        };
        Ok(found.iter().filter(|d| d.is_some()).count())
    }

    async fn delete_many(&mut self, ids: &[String]) -> anyhow::Result<()> {
        match self {
            Client::Component(s) => {
                s.delete_many(ids).await?;
            }
            Client::Native(s) => {
                s.delete_many(ids)?;
            }
            Client::RedisCrate(c) => c.delete_many(ids)?,
        }
        Ok(())
    }

    /// One page of the filtered listing: how many tasks it held, and the next cursor.
    async fn list_page(
        &mut self,
        cursor: Option<String>,
    ) -> anyhow::Result<(usize, Option<String>)> {
        Ok(match self {
            Client::Component(s) => {
                let options = ListOptions {
                    status: Some(LIST_FILTER.to_owned()),
                    limit: Some(LIST_PAGE),
                    cursor,
                };
                let page = s.list(&options).await?;
                (page.tasks.len(), page.cursor)
            }
            Client::Native(s) => {
                let options = taskstore::store::ListOptions {
                    status: Some(LIST_FILTER.to_owned()),
                    limit: Some(LIST_PAGE),
                    cursor,
                };
                let page = s.list(&options)?;
                (page.tasks.len(), page.cursor)
            }
            Client::RedisCrate(c) => c.list_page(cursor.is_none())?,
        })
    }

    async fn close(self) {
        if let Client::Component(s) = self {
            s.close().await;
        }
    }
}

/// The `redis` crate on one synchronous connection, sending for each call the commands the
/// store sends (see the module's documentation), with `update`'s merge done by the same code.
struct RedisCrateClient {
    connection: redis::Connection,
    prefix: String,
    /// `<prefix>*`, the prefix's glob characters taken literally.
    pattern: Vec<u8>,
    /// The listing in progress: where its `SCAN` goes on (`None` once it is over), and keys
    /// scanned but not read yet. Kept here rather than in a cursor text: this client lists
    /// within one process.
    scan_position: Option<u64>,
    pending: Vec<Vec<u8>>,
}

impl RedisCrateClient {
    fn open(url: &str, prefix: &str) -> anyhow::Result<RedisCrateClient> {
        // The URL stays out of the message: it may hold a password.
        let connection = redis::Client::open(url)
            .and_then(|client| client.get_connection())
            .map_err(|e| anyhow::anyhow!("the redis crate cannot connect: {e}"))?;
        let mut pattern = Vec::with_capacity(prefix.len() + 1);
        for &byte in prefix.as_bytes() {
            if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
                pattern.push(b'\\');
            }
            pattern.push(byte);
        }
        pattern.push(b'*');
        Ok(RedisCrateClient {
            connection,
            prefix: prefix.to_owned(),
            pattern,
            scan_position: None,
            pending: Vec::new(),
        })
    }

    fn key(&self, id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + id.len());
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(id.as_bytes());
        key
    }

    fn set(&mut self, id: &str, document: &str) -> redis::RedisResult<()> {
        redis::cmd("SETEX")
            .arg(self.key(id))
            .arg(TTL_SECONDS)
            .arg(document)
            .query(&mut self.connection)
    }

    fn get(&mut self, id: &str) -> redis::RedisResult<Option<String>> {
        redis::cmd("GET")
            .arg(self.key(id))
            .query(&mut self.connection)
    }

    /// The store's optimistic transaction: `WATCH` + `GET` in one round trip, the merge,
    /// then `MULTI` / `SET … KEEPTTL` / `EXEC` in another, again if someone wrote in between.
    fn update(&mut self, id: &str, patch: &str) -> anyhow::Result<Option<String>> {
        let key = self.key(id);
        for _ in 0..100 {
            let (_, current): (redis::Value, Option<String>) = redis::pipe()
                .cmd("WATCH")
                .arg(&key)
                .cmd("GET")
                .arg(&key)
                .query(&mut self.connection)?;
            let Some(current) = current else {
                redis::cmd("UNWATCH").query::<()>(&mut self.connection)?;
                return Ok(None);
            };
            let merged = taskstore::document::merge_patch(&current, patch)
                .map_err(|e| anyhow::anyhow!("update {id}: {}", e.0))?;
            let written: Option<Vec<redis::Value>> = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&merged)
                .arg("KEEPTTL")
                .query(&mut self.connection)?;
            if written.is_some() {
                return Ok(Some(merged));
            }
        }
        bail!("update {id}: gave up after 100 concurrent modifications")
    }

    fn delete(&mut self, id: &str) -> redis::RedisResult<bool> {
        let removed: i64 = redis::cmd("DEL")
            .arg(self.key(id))
            .query(&mut self.connection)?;
        Ok(removed > 0)
    }

    fn set_many(&mut self, tasks: &[Task]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for task in tasks {
            pipe.cmd("SETEX")
                .arg(self.key(&task.id))
                .arg(TTL_SECONDS)
                .arg(&task.document);
        }
        pipe.query(&mut self.connection)
    }

    fn get_many(&mut self, ids: &[String]) -> redis::RedisResult<Vec<Option<String>>> {
        let mut mget = redis::cmd("MGET");
        for id in ids {
            mget.arg(self.key(id));
        }
        mget.query(&mut self.connection)
    }

    fn delete_many(&mut self, ids: &[String]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("DEL").arg(self.key(id));
        }
        pipe.query(&mut self.connection)
    }

    /// One page of the filtered listing as the store fills it on one server: `SCAN`s sized
    /// by what the page has room for, pipelined `STRLEN`s and one `MGET` per chunk of
    /// scanned keys (within the store's byte budget), at most 64 `SCAN`s per page. How many
    /// tasks it held, and a cursor while the listing goes on.
    fn list_page(&mut self, start: bool) -> anyhow::Result<(usize, Option<String>)> {
        if start {
            self.scan_position = Some(0);
            self.pending.clear();
        }
        let mut page = PageFill::default();
        let mut scans = 0;
        loop {
            if !self.pending.is_empty() {
                if self.read_pending(&mut page)? {
                    break;
                }
                continue;
            }
            if scans == 64 || page.listed == LIST_PAGE as usize {
                break;
            }
            let Some(position) = self.scan_position else {
                return Ok((page.listed, None));
            };
            scans += 1;
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(position)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(page.keys_per_call())
                .arg("TYPE")
                .arg("string")
                .query(&mut self.connection)?;
            self.scan_position = (next != 0).then_some(next);
            self.pending.extend(keys);
        }
        let finished = self.scan_position.is_none() && self.pending.is_empty();
        Ok((page.listed, (!finished).then(String::new)))
    }

    /// Reads pending keys into `page` until none is pending (`false`) or the page is full
    /// (`true`).
    fn read_pending(&mut self, page: &mut PageFill) -> anyhow::Result<bool> {
        while !self.pending.is_empty() {
            if page.listed == LIST_PAGE as usize {
                return Ok(true);
            }
            let chunk = page.keys_per_call().min(self.pending.len());
            let mut strlen = redis::pipe();
            for key in &self.pending[..chunk] {
                strlen.cmd("STRLEN").arg(key);
            }
            let lengths: Vec<usize> = strlen.query(&mut self.connection)?;
            let (mut take, mut planned) = (0, page.bytes);
            for length in lengths {
                if (page.listed > 0 || take > 0) && planned + length > PAGE_BYTE_BUDGET {
                    break;
                }
                planned += length;
                take += 1;
            }
            let take = take.max(1);
            let mut mget = redis::cmd("MGET");
            for key in &self.pending[..take] {
                mget.arg(key);
            }
            let values: Vec<Option<String>> = mget.query(&mut self.connection)?;
            let mut consumed = 0;
            for value in values {
                if page.listed == LIST_PAGE as usize {
                    break;
                }
                consumed += 1;
                page.read += 1;
                let Some(document) = value else { continue };
                if taskstore::document::top_level_status(&document).as_deref() == Some(LIST_FILTER)
                {
                    page.listed += 1;
                    page.bytes += document.len();
                }
            }
            self.pending.drain(..consumed);
            if take < chunk {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A page the `redis` crate client is filling: what sizes its next `SCAN` and `MGET`, as in
/// the store.
#[derive(Default)]
struct PageFill {
    listed: usize,
    /// Bytes of the listed documents.
    bytes: usize,
    /// Keys read so far, listed or not.
    read: usize,
}

impl PageFill {
    /// What the page still has room for, scaled by the keys it took per listed task so far.
    fn keys_per_call(&self) -> usize {
        let room = LIST_PAGE as usize - self.listed;
        let per_task = (self.read + 1) / (self.listed + 1);
        (room.max(1) * per_task.clamp(1, 16)).min(1000)
    }
}

impl Bench {
    fn has(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    fn workload(&self, report: &mut Report) -> anyhow::Result<()> {
        let runtime = Runtime::builder().build()?;
        let tokio = current_thread()?;
        let list_ids: Vec<String> = (0..self.list_tasks)
            .map(|i| format!("list-{i:07}"))
            .collect();
        let list_set = if self.has(Section::List) {
            let template: serde_json::Map<String, Value> = serde_json::from_str(&self.document)?;
            Some(Batch::new(list_ids.clone(), |i| {
                let mut document = template.clone();
                document.insert("id".into(), Value::from(list_ids[i].clone()));
                document.insert("status".into(), Value::from(LIST_STATUSES[i % 4]));
                Value::Object(document).to_string()
            }))
        } else {
            None
        };

        tokio.block_on(async {
            let mut clients = Vec::new();
            for kind in KINDS {
                clients.push((
                    kind,
                    Client::open(kind, &runtime, &self.url, &self.prefix).await?,
                ));
            }
            if let Some(batch) = &list_set {
                let native = native_client(&mut clients);
                for (ids, chunk) in batch.ids.chunks(BATCH).zip(batch.native.chunks(BATCH)) {
                    let part = Batch {
                        ids: ids.to_vec(),
                        host: Vec::new(),
                        native: chunk.to_vec(),
                    };
                    native.set_many(&part).await?;
                }
            }
            for (kind, client) in &mut clients {
                eprintln!("# warming up {}", kind.name());
                self.warm_up(*kind, client).await?;
            }
            for rep in 0..self.reps {
                for (kind, client) in &mut clients {
                    eprintln!("# rep {}/{}: {}", rep + 1, self.reps, kind.name());
                    self.repetition(*kind, client, rep, report).await?;
                }
                // Each client goes first, second and last in turn.
                clients.rotate_left(1);
            }
            if list_set.is_some() {
                for chunk in list_ids.chunks(BATCH) {
                    native_client(&mut clients).delete_many(chunk).await?;
                }
            }
            for (_, client) in clients {
                client.close().await;
            }
            anyhow::Ok(())
        })
    }

    async fn warm_up(&self, kind: Kind, client: &mut Client) -> anyhow::Result<()> {
        let patch = r#"{"status":"running","progress":1}"#;
        for i in 0..WARM_UP.min(self.n) {
            let id = format!("{}w-{i:07}", kind.tag());
            client.set(&id, &self.document).await?;
            client.get(&id).await?;
            client.update(&id, patch).await?;
            client.delete(&id).await?;
        }
        let batch = Batch::new(
            (0..BATCH)
                .map(|i| format!("{}w-b{i:06}", kind.tag()))
                .collect(),
            |_| self.document.clone(),
        );
        client.set_many(&batch).await?;
        client.get_many(&batch.ids).await?;
        client.delete_many(&batch.ids).await?;
        Ok(())
    }

    /// One repetition of the workload for one client.
    async fn repetition(
        &self,
        kind: Kind,
        client: &mut Client,
        rep: usize,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let tag = kind.tag();
        if SEQUENTIAL.iter().any(|op| self.has(*op)) {
            let ids: Vec<String> = (0..self.n).map(|i| format!("{tag}{rep}-{i:07}")).collect();
            let mut set = Samples::default();
            for id in &ids {
                let started = Instant::now();
                client.set(id, &self.document).await?;
                set.record(started, 1);
            }
            if self.has(Section::Set) {
                merge(report.samples(kind, Section::Set), set);
            }
            if self.has(Section::Get) {
                let samples = report.samples(kind, Section::Get);
                for id in &ids {
                    let started = Instant::now();
                    let document = client.get(id).await?;
                    samples.record(started, 1);
                    ensure!(
                        document.is_some_and(|d| d.len() == self.document.len()),
                        "get {id} did not return what was set"
                    );
                }
            }
            if self.has(Section::Lifecycle) {
                let samples = report.samples(kind, Section::Lifecycle);
                for (i, id) in ids.iter().enumerate() {
                    let patch = format!(r#"{{"status":"running","progress":{}}}"#, i % 100);
                    let started = Instant::now();
                    let updated = client.update(id, &patch).await?;
                    samples.record(started, 1);
                    ensure!(updated.is_some(), "update {id}: the task is gone");
                }
            }
            if self.has(Section::Delete) {
                let samples = report.samples(kind, Section::Delete);
                for id in &ids {
                    let started = Instant::now();
                    let deleted = client.delete(id).await?;
                    samples.record(started, 1);
                    ensure!(deleted, "delete {id}: the task was not there");
                }
            } else {
                for chunk in ids.chunks(BATCH) {
                    client.delete_many(chunk).await?;
                }
            }
        }

        if self.has(Section::SetMany) || self.has(Section::GetMany) {
            let batches: Vec<Batch> = (0..self.n.div_ceil(BATCH))
                .map(|b| {
                    let ids = (b * BATCH..((b + 1) * BATCH).min(self.n))
                        .map(|i| format!("{tag}{rep}-b{i:06}"))
                        .collect();
                    Batch::new(ids, |_| self.document.clone())
                })
                .collect();
            let mut set_many = Samples::default();
            for batch in &batches {
                let started = Instant::now();
                client.set_many(batch).await?;
                set_many.record(started, batch.ids.len());
            }
            if self.has(Section::SetMany) {
                merge(report.samples(kind, Section::SetMany), set_many);
            }
            if self.has(Section::GetMany) {
                let samples = report.samples(kind, Section::GetMany);
                for batch in &batches {
                    let started = Instant::now();
                    let found = client.get_many(&batch.ids).await?;
                    samples.record(started, batch.ids.len());
                    ensure!(found == batch.ids.len(), "get-many missed tasks");
                }
            }
            for batch in &batches {
                client.delete_many(&batch.ids).await?;
            }
        }

        if self.has(Section::List) {
            let samples = report.samples(kind, Section::List);
            let (mut cursor, mut listed) = (None, 0);
            // Bounded: a page holds at least one task unless a scan budget ran out; the
            // listing over a keyspace that does not change ends well within this.
            for _ in 0..self.list_tasks + 100 {
                let started = Instant::now();
                let (tasks, next) = client.list_page(cursor).await?;
                samples.record(started, tasks);
                listed += tasks;
                cursor = next;
                if cursor.is_none() {
                    break;
                }
            }
            let expected = (0..self.list_tasks)
                .filter(|i| LIST_STATUSES[i % 4] == LIST_FILTER)
                .count();
            ensure!(
                cursor.is_none() && listed == expected,
                "list returned {listed} tasks with status {LIST_FILTER:?}, expected {expected}"
            );
        }
        Ok(())
    }

    /// One task of [`BIG_DOCUMENT_MEMBERS`] members (about 1.2 MB): `update` (a merge patch
    /// touching one member, so the whole document is scanned, merged and written) and a
    /// status-filtered `list` that reads it, through the component and natively.
    fn big_document(&self) -> anyhow::Result<()> {
        let id = "big-document";
        let members: Vec<String> = (0..BIG_DOCUMENT_MEMBERS)
            .map(|i| format!("\"k{i}\": {i}"))
            .collect();
        let document = format!("{{\"status\": \"running\", {}}}", members.join(", "));
        let options = Options {
            key_prefix: Some(self.prefix.clone()),
            ..Options::new(&self.url)
        };
        let runtime = Runtime::builder().build()?;
        let mut component = TaskStore::open(&runtime, options)?;
        let mut native_options = StoreOptions::new(&self.url);
        native_options.key_prefix = Some(self.prefix.clone());
        let mut native = NativeStore::open(&native_options, StdConnector)?;
        component.set(id, &document, Some(TTL_SECONDS))?;
        let list = ListOptions {
            status: Some("running".into()),
            limit: Some(10),
            cursor: None,
        };
        let native_list = taskstore::store::ListOptions {
            status: list.status.clone(),
            limit: list.limit,
            cursor: None,
        };
        let (mut update, mut listing, mut native_update, mut native_listing) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..BIG_DOCUMENT_ROUNDS {
            let patch = format!("{{\"progress\": {round}}}");
            let updated = timed(&mut update, || {
                component.update(id, &patch, &UpdateOptions::default())
            })?;
            ensure!(updated.is_some(), "the big task vanished");
            let page = timed(&mut listing, || component.list(&list))?;
            ensure!(
                page.tasks.iter().any(|task| task.id == id) || page.cursor.is_some(),
                "list --status running missed the big task"
            );

            timed(&mut native_update, || {
                native.update(id, &patch, &taskstore::store::UpdateOptions::default())
            })?;
            timed(&mut native_listing, || native.list(&native_list))?;
        }
        component.delete(id)?;
        component.close();
        let bytes = document.len();
        let [update, native_update, listing, native_listing] =
            [update, native_update, listing, native_listing].map(|nanos| ms(median(&nanos)));
        println!(
            "big-document: {bytes} bytes, {BIG_DOCUMENT_MEMBERS} members: update component {update:.1} ms, native {native_update:.1} ms; list --status (first page) component {listing:.1} ms, native {native_listing:.1} ms (medians of {BIG_DOCUMENT_ROUNDS})"
        );
        Ok(())
    }

    /// Size, compile and load times, instantiation, CLI starts.
    fn start_up(&self, report: &mut Report) -> anyhow::Result<()> {
        report.component_bytes = COMPONENT.len();
        println!(
            "component:size {} bytes ({:.1} KiB)",
            COMPONENT.len(),
            COMPONENT.len() as f64 / 1024.0
        );

        let engine = new_engine()?;
        let mut compile = Vec::new();
        let mut compiled = None;
        for _ in 0..5 {
            compiled = Some(
                timed(&mut compile, || Component::new(&engine, COMPONENT))
                    .map_err(wasmtime_error)?,
            );
        }
        let serialized = compiled
            .expect("compiled at least once")
            .serialize()
            .map_err(wasmtime_error)?;
        let mut deserialize = Vec::new();
        for _ in 0..20 {
            // SAFETY: these bytes were serialized just above by an engine of this
            // configuration, in this process.
            timed(&mut deserialize, || unsafe {
                Component::deserialize(&engine, &serialized)
            })
            .map_err(wasmtime_error)?;
        }
        let dir = tempfile::tempdir()?;
        let cache = ComponentCache::new(dir.path().join("cache"));
        cache.load_or_compile(&engine, COMPONENT)?;
        let mut cached = Vec::new();
        for _ in 0..20 {
            let (_, outcome) = timed(&mut cached, || cache.load_or_compile(&engine, COMPONENT))?;
            ensure!(outcome == CacheOutcome::Hit, "cache load: {outcome:?}");
        }
        let mut runtime_cached = Vec::new();
        for _ in 0..20 {
            let (runtime, outcome) = timed(&mut runtime_cached, || load_cached(&cache))?;
            ensure!(outcome == CacheOutcome::Hit, "cache load: {outcome:?}");
            drop(runtime);
        }
        println!(
            "component:compile Component::new {:.1} ms (median of 5); precompiled {} bytes ({:.0} KiB)",
            ms(median(&compile)),
            serialized.len(),
            serialized.len() as f64 / 1024.0
        );
        println!(
            "component:deserialize Component::deserialize {:.2} ms; from the cache file (read, SHA-256, deserialize) {:.2} ms; whole Runtime from the cache (engine, load, link) {:.2} ms (medians of 20)",
            ms(median(&deserialize)),
            ms(median(&cached)),
            ms(median(&runtime_cached))
        );

        self.instantiation()?;
        self.cli_starts(report)?;
        Ok(())
    }

    /// Instantiation from `InstancePre`, and opening a whole store.
    fn instantiation(&self) -> anyhow::Result<()> {
        let runtime = Runtime::builder().build()?;
        let tokio = current_thread()?;
        let (instantiate, with_store, open) = tokio.block_on(async {
            let probe = InstanceProbe::new(&runtime, &self.url).await?;
            let (mut instantiate, mut with_store) = (Vec::new(), Vec::new());
            for _ in 0..200 {
                let time = probe.instantiate().await?;
                instantiate.push(time.instantiate.as_nanos() as u64);
                with_store.push(time.with_store.as_nanos() as u64);
            }
            let mut open = Vec::new();
            for _ in 0..50 {
                let started = Instant::now();
                let store = runtime.open_async(Options::new(&self.url)).await?;
                open.push(started.elapsed().as_nanos() as u64);
                store.close().await;
            }
            anyhow::Ok((instantiate, with_store, open))
        })?;
        println!(
            "component:instantiate InstancePre {:.1} us (p99 {:.1}); with a new Store and WASI context {:.1} us; open a store (resolve, instantiate, connect, handshake) {:.1} us (medians)",
            us(median(&instantiate)),
            us(percentile(&instantiate, 0.99)),
            us(median(&with_store)),
            us(median(&open))
        );
        Ok(())
    }

    /// Separate `taskstore get <absent id>` processes: cold (compiling) and warm (cached)
    /// against a native process of the same binary doing the same get.
    fn cli_starts(&self, report: &mut Report) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let id = "bench-absent-task";
        let run = |args: &[&str], cache_dir: Option<&std::path::Path>| -> anyhow::Result<u64> {
            let mut command = Command::new(&exe);
            command
                .args(["--timeout-ms", CLI_TIMEOUT_MS])
                .args(args)
                .env("REDIS_URL", &self.url)
                .env_remove(CACHE_DIR_ENV)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            match cache_dir {
                Some(dir) => command.env(CACHE_DIR_ENV, dir),
                None => command.env(CACHE_DIR_ENV, ""),
            };
            let started = Instant::now();
            let output = command.output().context("cannot run taskstore")?;
            let elapsed = started.elapsed().as_nanos() as u64;
            // `get` of an absent task exits with 1; the native probe with 0.
            ensure!(
                matches!(output.status.code(), Some(0 | 1)),
                "taskstore {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            Ok(elapsed)
        };
        let get = ["get", id];
        let mut cold = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir()?;
            cold.push(run(&get, Some(&dir.path().join("cache")))?);
        }
        let mut uncached = Vec::new();
        for _ in 0..5 {
            uncached.push(run(&get, None)?);
        }
        let warm_dir = tempfile::tempdir()?;
        let warm_cache = warm_dir.path().join("cache");
        run(&get, Some(&warm_cache))?;
        let (mut warm, mut native) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            warm.push(run(&get, Some(&warm_cache))?);
            native.push(run(&["bench", "--native-get", id], None)?);
        }
        let overhead = ms(median(&warm)) - ms(median(&native));
        report.warm_cli_overhead_ms = Some(overhead);
        println!(
            "cli:get cold (empty cache: compile, store) {:.1} ms; cache off {:.1} ms; warm {:.1} ms (min {:.1}); native process, same get {:.1} ms (min {:.1}); warm host time beyond the native process {:.2} ms (medians; process spawn to exit)",
            ms(median(&cold)),
            ms(median(&uncached)),
            ms(median(&warm)),
            ms(*warm.iter().min().unwrap_or(&0)),
            ms(median(&native)),
            ms(*native.iter().min().unwrap_or(&0)),
            overhead
        );

        // The same steps in this process, to see where a warm start goes.
        let cache = ComponentCache::new(&warm_cache);
        let (mut load, mut open, mut first_get, mut native_total) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..20 {
            let (runtime, outcome) = timed(&mut load, || load_cached(&cache))?;
            ensure!(outcome == CacheOutcome::Hit, "warm cache: {outcome:?}");
            let mut store = timed(&mut open, || {
                TaskStore::open(&runtime, Options::new(&self.url))
            })?;
            timed(&mut first_get, || store.get(id))?;
            store.close();

            let _native = timed(&mut native_total, || {
                let mut native = NativeStore::open(&StoreOptions::new(&self.url), StdConnector)?;
                native.get(id)?;
                anyhow::Ok(native)
            })?;
        }
        let [load, open, first_get, native_total] =
            [load, open, first_get, native_total].map(|nanos| ms(median(&nanos)));
        println!(
            "cli:in-process warm load (engine, cache file, link) {load:.2} ms; open (tokio, instantiate, connect) {open:.2} ms; first get {first_get:.3} ms; native open + get {native_total:.3} ms (medians of 20)"
        );
        Ok(())
    }

    /// Memory per idle store: wasm linear memory, and the process's RSS growth.
    fn memory(&self, report: &mut Report) -> anyhow::Result<()> {
        let runtime = Runtime::builder().build()?;
        let tokio = current_thread()?;
        let (linear, rss) = tokio.block_on(async {
            let probe = InstanceProbe::new(&runtime, &self.url).await?;
            let mut idle = Vec::new();
            for _ in 0..IDLE_STORES {
                idle.push(probe.open_idle().await?);
            }
            let linear: usize = idle.iter().map(|i| i.linear_memory_bytes()).sum();
            drop(idle);

            // Warm the allocator and the runtime's shared state before the baseline.
            runtime
                .open_async(Options::new(&self.url))
                .await?
                .close()
                .await;
            let before = rss_bytes();
            let mut stores = Vec::new();
            for _ in 0..IDLE_STORES {
                stores.push(runtime.open_async(Options::new(&self.url)).await?);
            }
            let after = rss_bytes();
            for store in stores {
                store.close().await;
            }
            let rss = match (before, after) {
                (Some(b), Some(a)) => Some((a as i64 - b as i64) / IDLE_STORES as i64),
                _ => None,
            };
            anyhow::Ok((linear / IDLE_STORES, rss))
        })?;
        report.idle_linear_bytes = Some(linear);
        report.idle_rss_bytes = rss;
        let mut line = format!(
            "memory:idle-store linear memory {} KiB per instance",
            linear / 1024
        );
        if let Some(rss) = rss {
            let _ = write!(
                line,
                "; RSS growth {:.0} KiB per store",
                rss as f64 / 1024.0
            );
        }
        let _ = write!(line, " ({IDLE_STORES} open stores)");
        println!("{line}");
        Ok(())
    }
}

fn native_client(clients: &mut [(Kind, Client)]) -> &mut Client {
    let (_, client) = clients
        .iter_mut()
        .find(|(kind, _)| *kind == Kind::Native)
        .expect("both clients are open");
    client
}

/// The embedded component's runtime, loaded through `cache`.
fn load_cached(cache: &ComponentCache) -> anyhow::Result<(Runtime, CacheOutcome)> {
    Runtime::builder()
        .component(COMPONENT)
        .cache(cache)
        .build_reporting_cache()
}

/// Runs `step`, adding the nanoseconds it took to `nanos`.
fn timed<T>(nanos: &mut Vec<u64>, step: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = step();
    nanos.push(started.elapsed().as_nanos() as u64);
    result
}

fn merge(into: &mut Samples, from: Samples) {
    into.nanos.extend(from.nanos);
    into.tasks += from.tasks;
}

fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / 1e3
}

/// wasmtime's own error as `anyhow`, its causes kept.
fn wasmtime_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(error.into_boxed_dyn_error())
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// CPUs online on the machine, whatever this process is pinned to.
fn online_cpus() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The process's resident set, from `/proc/self/statm` (Linux only).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Refuses a Redis that is not on this machine: the benchmark floods it and deletes keys.
/// Small documents for the `status-index` section (42 to 52 bytes): what is measured is
/// enumeration and round trips, not document transfer.
fn index_doc(id: &str, status: &str) -> String {
    format!(r#"{{"id": "{id}", "status": "{status}"}}"#)
}

/// Writes timed per mode in the `status-index` section, and pipelined writes per batch
/// while loading.
const INDEX_WRITES: usize = 2_000;
const INDEX_LOAD_BATCH: usize = 10_000;
/// Listings timed per mode; the median is reported.
const INDEX_LISTINGS: usize = 3;

impl Bench {
    /// `status-index`: loads `index_tasks` tasks (1% `pending`, the rest `done`) with
    /// pipelined `SETEX`es of the `redis` crate, the pending ones written again by an
    /// index-mode store's `set-many` (entering them in the index); times `list --status
    /// pending --all` (pages of 1000) through the component by index and by scan; then `set`
    /// and `update` (a status change) through index-mode and scan-mode stores, alternating;
    /// then one `reindex` of every task.
    fn status_index(&self) -> anyhow::Result<()> {
        let runtime = Runtime::builder().build()?;
        let prefix = format!("{}idx:", self.prefix);
        let open = |mode: ListingMode| {
            TaskStore::open(
                &runtime,
                Options {
                    key_prefix: Some(prefix.clone()),
                    listing: Some(mode),
                    ..Options::new(&self.url)
                },
            )
        };
        let mut indexed = open(ListingMode::Index)?;
        let mut scan = open(ListingMode::Scan)?;
        let mut plain = redis::Client::open(self.url.as_str())?.get_connection()?;
        let total = self.index_tasks;
        let started = Instant::now();
        let mut pending_ids = Vec::with_capacity(total / 100 + 1);
        for first in (0..total).step_by(INDEX_LOAD_BATCH) {
            let mut pipe = redis::pipe();
            for i in first..(first + INDEX_LOAD_BATCH).min(total) {
                let id = format!("t{i:08}");
                let status = if i % 100 == 0 { "pending" } else { "done" };
                if status == "pending" {
                    pending_ids.push(id.clone());
                }
                pipe.cmd("SETEX")
                    .arg(format!("{prefix}{id}"))
                    .arg(TTL_SECONDS)
                    .arg(index_doc(&id, status))
                    .ignore();
            }
            pipe.query::<()>(&mut plain)?;
        }
        let loaded_s = started.elapsed().as_secs_f64();
        // Only the pending tasks need entries for this listing; a full `reindex` of every
        // task is timed below on its own.
        let pending: Vec<Task> = pending_ids
            .iter()
            .map(|id| Task {
                id: id.clone(),
                document: index_doc(id, "pending"),
            })
            .collect();
        for chunk in pending.chunks(1000) {
            for result in indexed.set_many(chunk, Some(TTL_SECONDS))? {
                result?;
            }
        }
        let used_memory = redis::cmd("INFO")
            .arg("memory")
            .query::<String>(&mut plain)?
            .lines()
            .find_map(|line| line.strip_prefix("used_memory_human:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        println!(
            "# status-index: {total} tasks ({} pending), documents of 42-52 B, loaded in {loaded_s:.1} s; Redis uses {used_memory}",
            pending_ids.len()
        );

        let expected: std::collections::BTreeSet<&str> =
            pending_ids.iter().map(String::as_str).collect();
        let list_us = |store: &mut TaskStore, what: &str| -> anyhow::Result<u64> {
            let mut times = Vec::new();
            for _ in 0..INDEX_LISTINGS {
                let started = Instant::now();
                let mut ids = Vec::with_capacity(expected.len());
                let mut cursor = None;
                loop {
                    let page = store.list(&ListOptions {
                        status: Some("pending".into()),
                        limit: Some(1000),
                        cursor,
                    })?;
                    ids.extend(page.tasks.into_iter().map(|task| task.id));
                    match page.cursor {
                        None => break,
                        next => cursor = next,
                    }
                }
                times.push(started.elapsed().as_micros() as u64);
                let listed: std::collections::BTreeSet<&str> =
                    ids.iter().map(String::as_str).collect();
                ensure!(
                    listed == expected,
                    "{what} listed {} tasks, not the {} pending",
                    listed.len(),
                    expected.len()
                );
            }
            Ok(median(&times))
        };
        let by_index = list_us(&mut indexed, "the index listing")?;
        let by_scan = list_us(&mut scan, "the scan listing")?;
        println!(
            "status-index:list-pending index {:.1} ms, scan {:.1} ms: {:.0}x faster (target >= 50x)",
            by_index as f64 / 1e3,
            by_scan as f64 / 1e3,
            by_scan as f64 / by_index.max(1) as f64
        );

        let mut set = [Vec::new(), Vec::new()];
        let mut update = [Vec::new(), Vec::new()];
        let running = UpdateOptions::default();
        for i in 0..INDEX_WRITES {
            for (slot, store) in [&mut indexed, &mut scan].into_iter().enumerate() {
                let id = format!("w{slot}-{i:06}");
                let document = index_doc(&id, "pending");
                let started = Instant::now();
                store.set(&id, &document, Some(TTL_SECONDS))?;
                set[slot].push(started.elapsed().as_nanos() as u64);
                let started = Instant::now();
                store.update(&id, r#"{"status": "running"}"#, &running)?;
                update[slot].push(started.elapsed().as_nanos() as u64);
            }
        }
        for (name, samples) in [("set", &set), ("update", &update)] {
            let (index_us, scan_us) = (
                median(&samples[0]) as f64 / 1e3,
                median(&samples[1]) as f64 / 1e3,
            );
            println!(
                "status-index:{name} p50 index {index_us:.0} us, scan {scan_us:.0} us: +{:.0}% (target <= 15%)",
                (index_us / scan_us - 1.0) * 100.0
            );
        }

        let started = Instant::now();
        let (mut cursor, mut indexed_total) = (None, 0u64);
        loop {
            let page = scan.reindex(cursor.as_deref(), Some(1000))?;
            indexed_total += u64::from(page.indexed);
            match page.cursor {
                None => break,
                next => cursor = next,
            }
        }
        println!(
            "status-index:reindex {indexed_total} tasks in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // Leave nothing behind: the tasks and the index keys.
        let base = prefix.trim_end_matches(':');
        let mut keys: Vec<String> = Vec::new();
        for status in ["pending", "done", "running"] {
            keys.push(format!("{base}_status:{status}"));
        }
        redis::cmd("DEL").arg(&keys).query::<()>(&mut plain)?;
        let mut position = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(position)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(10_000)
                .query(&mut plain)?;
            if !found.is_empty() {
                redis::cmd("UNLINK").arg(&found).query::<()>(&mut plain)?;
            }
            if next == 0 {
                break;
            }
            position = next;
        }
        Ok(())
    }
}

/// Opens timed per opener and repetition in the `tls-open` section (fewer if `--n` is
/// smaller).
const TLS_OPENS: usize = 200;
/// The TLS open time the component should reach (instantiate, connect, handshake, `PING`).
const TLS_OPEN_TARGET_MS: f64 = 2.0;

/// Who opens the stores of the `tls-open` section, and over which scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Opener {
    /// The TLS component (`taskstore-tls.wasm`) over `rediss://`.
    ComponentTls,
    /// The TLS component over `redis://`: what instantiating the larger component costs
    /// without the handshake.
    ComponentTlsPlain,
    /// The plain component over `redis://`.
    ComponentPlain,
    /// The same client and rustls natively over `rediss://`.
    NativeTls,
    NativePlain,
}

const OPENERS: [Opener; 5] = [
    Opener::ComponentTls,
    Opener::ComponentTlsPlain,
    Opener::ComponentPlain,
    Opener::NativeTls,
    Opener::NativePlain,
];

impl Opener {
    fn name(self) -> &'static str {
        match self {
            Opener::ComponentTls => "component-tls:open-rediss",
            Opener::ComponentTlsPlain => "component-tls:open-redis",
            Opener::ComponentPlain => "component:open-redis",
            Opener::NativeTls => "native:open-rediss",
            Opener::NativePlain => "native:open-redis",
        }
    }

    fn is_tls(self) -> bool {
        matches!(self, Opener::ComponentTls | Opener::NativeTls)
    }
}

impl Bench {
    /// `tls-open`: on a private redis-server with a plaintext and a TLS port (an ECDSA P-256
    /// certificate for 127.0.0.1 from a private CA, as the tests use), opens and closes
    /// stores one after the other, each open timed from the call to a store that has
    /// answered `PING`: the TLS component over `rediss://` and `redis://`, the plain
    /// component, and the native build of the same client and rustls over both schemes.
    /// Each round opens one store per opener, their order rotating, so a load change on a
    /// shared machine hits them all alike. Also times instantiating the TLS component
    /// alone, to split the open into instantiation and the rest. Returns the timings.
    fn tls_open(&self) -> anyhow::Result<HashMap<Opener, Vec<u64>>> {
        let opens = TLS_OPENS.min(self.n);
        let certificates = tempfile::tempdir()?;
        let (files, ca_pem) = bench_certificates(certificates.path())?;
        let server = RedisServer::builder()
            .tls(files)
            .start()
            .context("cannot start a private redis-server with TLS")?;
        let tls_url = server.tls_url().context("the server has no TLS port")?;
        let plain_url = server.url();

        let plain_runtime = Runtime::builder().build()?;
        let started = Instant::now();
        let tls_runtime = Runtime::builder().tls().build()?;
        let compile = started.elapsed();
        let options = |opener: Opener| {
            if opener.is_tls() {
                Options {
                    tls_ca_certificates: Some(ca_pem.clone()),
                    ..Options::new(&tls_url)
                }
            } else {
                Options::new(&plain_url)
            }
        };
        let native_options = |opener: Opener| {
            let mut native = StoreOptions::new(if opener.is_tls() {
                &tls_url
            } else {
                &plain_url
            });
            if opener.is_tls() {
                native.tls_ca_certificates = Some(ca_pem.clone());
            }
            native
        };

        let tokio = current_thread()?;
        let (samples, instantiate) = tokio.block_on(async {
            let mut samples: HashMap<Opener, Vec<u64>> = HashMap::new();
            let mut order = OPENERS;
            // One untimed round: first connections, first TLS session setup.
            for round in 0..1 + opens * self.reps {
                for opener in order {
                    let started = Instant::now();
                    let elapsed = match opener {
                        Opener::ComponentTls
                        | Opener::ComponentTlsPlain
                        | Opener::ComponentPlain => {
                            let runtime = if opener == Opener::ComponentPlain {
                                &plain_runtime
                            } else {
                                &tls_runtime
                            };
                            let store = runtime.open_async(options(opener)).await?;
                            let elapsed = started.elapsed();
                            store.close().await;
                            elapsed
                        }
                        Opener::NativeTls | Opener::NativePlain => {
                            let store = native_tls_open(&native_options(opener))?;
                            let elapsed = started.elapsed();
                            drop(store);
                            elapsed
                        }
                    };
                    if round > 0 {
                        samples
                            .entry(opener)
                            .or_default()
                            .push(elapsed.as_nanos() as u64);
                    }
                }
                order.rotate_left(1);
            }
            let probe = InstanceProbe::new(&tls_runtime, &tls_url).await?;
            let mut instantiate = Vec::new();
            for _ in 0..opens {
                instantiate.push(probe.instantiate().await?.instantiate.as_nanos() as u64);
            }
            anyhow::Ok((samples, instantiate))
        })?;

        println!(
            "# tls-open: {} opens per opener, instantiate + connect (+ TLS 1.3 handshake, ECDSA P-256 certificate) + PING; TLS component compiled in {:.0} ms",
            opens * self.reps,
            compile.as_secs_f64() * 1e3
        );
        for opener in OPENERS {
            let nanos = &samples[&opener];
            let total: u64 = nanos.iter().sum();
            println!(
                "{} {:.0} {:.1} {:.1}",
                opener.name(),
                nanos.len() as f64 / (total as f64 / 1e9),
                us(percentile(nanos, 0.5)),
                us(percentile(nanos, 0.99))
            );
        }
        println!(
            "component-tls:instantiate InstancePre {:.1} us (p99 {:.1})",
            us(percentile(&instantiate, 0.5)),
            us(percentile(&instantiate, 0.99))
        );
        let p50 = |opener: Opener| percentile(&samples[&opener], 0.5) as f64;
        println!(
            "ratio:tls-open p50 component/native {:.2}; handshake (rediss - redis) component {:.1} us, native {:.1} us",
            p50(Opener::ComponentTls) / p50(Opener::NativeTls),
            (p50(Opener::ComponentTls) - p50(Opener::ComponentTlsPlain)) / 1e3,
            (p50(Opener::NativeTls) - p50(Opener::NativePlain)) / 1e3
        );
        let component_ms = p50(Opener::ComponentTls) / 1e6;
        println!(
            "target:tls-open p50 component {component_ms:.2} ms <= {TLS_OPEN_TARGET_MS:.0} ms: {}",
            verdict(component_ms <= TLS_OPEN_TARGET_MS)
        );
        drop(server);
        Ok(samples)
    }
}

/// A native store over `rediss://` or `redis://`, as the component opens one.
type NativeTlsStore = taskstore::store::Store<MaybeTlsConnector<StdConnector>>;

/// Opens a native store the way the component does: TLS exactly when the URL says so.
fn native_tls_open(options: &StoreOptions) -> anyhow::Result<NativeTlsStore> {
    let settings = StoreSettings::from_options(options)?;
    let connector = MaybeTlsConnector::new(StdConnector, settings.tls.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(NativeTlsStore::open_with_settings(settings, connector)?)
}

/// A CA and a server certificate for 127.0.0.1 signed by it, ECDSA P-256 as the test
/// fixtures make them, written into `dir` by the `openssl` command (the CLI ships without
/// the tests' certificate generator). Returns the server's files and the CA's PEM.
fn bench_certificates(dir: &Path) -> anyhow::Result<(TlsFiles, String)> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("cannot run openssl (the tls-open section makes its certificates with it)")?;
        ensure!(
            output.status.success(),
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &p256,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=taskstore bench CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &p256,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=taskstore bench server",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ])?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("cannot read {name}"))
    };
    let ca_pem = read("ca.crt")?;
    let files = TlsFiles {
        certificate: read("server.crt")?,
        private_key: read("server.key")?,
        ca_certificate: ca_pem.clone(),
    };
    Ok((files, ca_pem))
}

fn check_loopback(url: &str) -> anyhow::Result<String> {
    let parsed = RedisUrl::parse(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let endpoint = parsed.endpoint;
    let addresses: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", endpoint.host))?
        .collect();
    ensure!(
        !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback()),
        "the benchmark runs only against a Redis on this machine (a loopback address), not {}",
        endpoint.host
    );
    Ok(format!("{}:{}", endpoint.host, endpoint.port))
}

/// `--native-get`: what a CLI process does, natively: open a store, get `id`, exit.
fn native_get(redis: Option<&str>, port: Option<u16>, id: &str) -> anyhow::Result<()> {
    let url = match (redis, port) {
        (Some(url), _) => url.to_owned(),
        (None, Some(port)) => format!("redis://127.0.0.1:{port}"),
        (None, None) => "redis://127.0.0.1:6379".to_owned(),
    };
    let mut store = NativeStore::open(&StoreOptions::new(url), StdConnector)?;
    store.get(id)?;
    Ok(())
}

/// Pins the calling thread, and so every thread and process it starts afterwards, to `cpu`.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET checks nothing but writes
    // within the set, and `cpu` is checked against its size first.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        ensure!(
            cpu < 8 * std::mem::size_of::<libc::cpu_set_t>(),
            "no such CPU: {cpu}"
        );
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn default_document_is_a_json_object_of_about_a_kibibyte() {
        let document: Value = serde_json::from_str(DEFAULT_DOCUMENT).unwrap();
        assert!(document.is_object());
        assert!((900..1200).contains(&DEFAULT_DOCUMENT.trim_end().len()));
    }

    #[test]
    fn redis_off_this_machine_is_refused() {
        assert!(check_loopback("redis://127.0.0.1:6379").is_ok());
        assert!(check_loopback("redis://localhost:6379").is_ok());
        let error = check_loopback("redis://192.0.2.1:6379").unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
    }

    #[test]
    fn a_short_run_of_every_section_completes() {
        let server = RedisServer::start().unwrap();
        let args = BenchArgs {
            port: Some(server.port()),
            n: 20,
            doc: None,
            reps: 2,
            ops: WORKLOAD.to_vec(),
            list_tasks: 250,
            index_tasks: 1_000_000,
            pin: None,
            native_get: None,
        };
        run(&args, None, None).unwrap();
    }

    #[test]
    fn a_short_status_index_run_lists_the_same_tasks_both_ways_and_leaves_nothing() {
        let server = RedisServer::start().unwrap();
        let bench = Bench {
            url: server.url(),
            prefix: "bench-test:".to_owned(),
            document: DEFAULT_DOCUMENT.to_owned(),
            n: 1,
            reps: 1,
            list_tasks: 0,
            index_tasks: 500,
            sections: vec![Section::StatusIndex],
        };
        // It checks that both listings return exactly the pending tasks.
        bench.status_index().unwrap();
        let mut redis = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let left: i64 = redis::cmd("DBSIZE").query(&mut redis).unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn every_client_runs_every_op_and_the_table_compares_all_three() {
        let server = RedisServer::start().unwrap();
        let (n, reps, list_tasks) = (20, 3, 250);
        let bench = Bench {
            url: server.url(),
            prefix: "bench-test:".to_owned(),
            document: DEFAULT_DOCUMENT.trim_end().to_owned(),
            n,
            reps,
            list_tasks,
            index_tasks: 0,
            sections: WORKLOAD.to_vec(),
        };
        let mut report = Report::default();
        bench.workload(&mut report).unwrap();

        // Not timings: how many tasks each client's calls covered, over every repetition.
        let listed = (0..list_tasks)
            .filter(|i| LIST_STATUSES[i % 4] == LIST_FILTER)
            .count();
        for kind in KINDS {
            for op in WORKLOAD {
                let per_rep = if op == Section::List { listed } else { n };
                let samples = &report.samples[&(kind, op)];
                assert_eq!(
                    samples.tasks,
                    (per_rep * reps) as u64,
                    "{}:{}",
                    kind.name(),
                    op.name()
                );
            }
        }
        let mut redis = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let left: i64 = redis::cmd("DBSIZE").query(&mut redis).unwrap();
        assert_eq!(left, 0, "the workload leaves no task behind");

        let output = report.workload_table(&bench) + &report.targets();
        for op in WORKLOAD {
            assert!(
                output.contains(&format!("\nredis-crate:{} ", op.name())),
                "{output}"
            );
            let ratio = format!("ratio:{} p50 ", op.name());
            let line = output.lines().find(|line| line.starts_with(&ratio));
            // The op, "p50", three ratios, "ops/s", three ratios.
            assert_eq!(
                line.map(|line| line.split_whitespace().count()),
                Some(9),
                "{output}"
            );
        }
        for op in SEQUENTIAL {
            let target = format!("target:{} p50 component/redis-crate ", op.name());
            assert!(output.contains(&target), "{output}");
        }
        assert!(!output.to_lowercase().contains("issue"), "{output}");
    }

    #[test]
    fn the_redis_crate_client_updates_as_the_store_does() {
        let server = RedisServer::start().unwrap();
        let mut client = RedisCrateClient::open(&server.url(), "bench-test:").unwrap();
        let mut native_options = StoreOptions::new(server.url());
        native_options.key_prefix = Some("bench-test:".to_owned());
        let mut native = NativeStore::open(&native_options, StdConnector).unwrap();
        let document = r#"{"id": "t", "status": "pending", "progress": 0, "tags": ["a"]}"#;
        let patch = r#"{"status":"running","progress":7,"tags":null}"#;
        client.set("r1", document).unwrap();
        native.set("n1", document, Some(TTL_SECONDS)).unwrap();

        let updated = client.update("r1", patch).unwrap();
        let expected = native.update("n1", patch, &Default::default()).unwrap();
        assert!(expected.is_some());
        assert_eq!(updated, expected);
        assert_eq!(client.get("r1").unwrap(), expected, "the merge was written");
        let ttl: i64 = redis::cmd("TTL")
            .arg("bench-test:r1")
            .query(&mut client.connection)
            .unwrap();
        assert!(ttl > 0 && ttl <= TTL_SECONDS as i64, "TTL kept: {ttl}");

        assert_eq!(client.update("absent", patch).unwrap(), None);
        assert_eq!(client.get("absent").unwrap(), None);
        assert!(client.delete("r1").unwrap());
        assert!(!client.delete("r1").unwrap());
    }

    #[test]
    fn every_opener_of_the_tls_open_section_opens_its_stores() {
        let (n, reps) = (3, 2);
        let bench = Bench {
            url: String::new(),
            prefix: "bench-test:".to_owned(),
            document: DEFAULT_DOCUMENT.to_owned(),
            n,
            reps,
            list_tasks: 0,
            index_tasks: 0,
            sections: vec![Section::TlsOpen],
        };
        // It starts its own TLS server; an open that fails (a certificate refused, say)
        // fails the section.
        let samples = bench.tls_open().unwrap();
        for opener in OPENERS {
            // Not timings: one per timed open.
            assert_eq!(samples[&opener].len(), n * reps, "{}", opener.name());
        }
    }

    #[test]
    fn instantiation_and_memory_measurements_complete() {
        let server = RedisServer::start().unwrap();
        let bench = Bench {
            url: server.url(),
            prefix: "bench-test:".to_owned(),
            document: DEFAULT_DOCUMENT.to_owned(),
            n: 1,
            reps: 1,
            list_tasks: 0,
            index_tasks: 0,
            sections: vec![Section::Memory],
        };
        bench.instantiation().unwrap();
        let mut report = Report::default();
        bench.memory(&mut report).unwrap();
        // Not a timing: a store's memory is at least the guest's one 64 KiB page.
        assert!(report.idle_linear_bytes.unwrap() >= 64 * 1024);
    }
}
