//! `taskstore`: research tasks in Redis from the command line, through the component.
//!
//! Exit codes: 0 success; 1 not found; 2 usage error or invalid input; 3 any other failure
//! (connection, timeout, authentication, protocol, server, corrupt data, contention, host);
//! 4 the task exists (`set --if-absent`) or is not in the expected state (`update
//! --expect-status`).
//!
//! # Layout
//!
//! A user of the `taskstore-host` library's public API, nothing more:
//!
//! - `main.rs`: the command line (clap), the task commands over [`TaskStore`], `demo`,
//!   `export`, and `serve`: its flags turned into a [`ServeConfig`] for the library's
//!   server, and the shutdown signals.
//! - `bench`: `taskstore bench`, the component against a native build of the same client
//!   and the `redis` crate.
//! - `keyvalue`: `taskstore compose` and `taskstore run`, for applications written against
//!   `wasi:keyvalue`.
//!
//! The throwaway `redis-server` of `demo`, `serve --throwaway-redis` and `bench` is the test
//! fixture of the workspace's `taskstore-testing` crate, used as a program would use it. The
//! CLI's tests (`tests/cli/`, one binary) run the built `taskstore` as a user would.
//!
//! [`ServeConfig`]: taskstore_host::serve::ServeConfig

mod bench;
mod keyvalue;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use research_api::settings;
use serde_json::{json, Value};
use taskstore_host::read_tls_ca_file;
use taskstore_host::{
    ErrorKind, ListOptions, Options, Runtime, TaskError, TaskStore, TimeToLive, TtlPolicy,
    UpdateOptions,
};
// `demo` and `serve --throwaway-redis` run on a throwaway server: the test fixture's guard,
// the one private-redis-server implementation in the workspace.
use taskstore_testing::redis_server::RedisServer;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// Pages `list --all` reads at most, so that a keyspace that keeps changing underneath it
/// cannot keep it going forever.
const MAX_LIST_PAGES: usize = 100_000;

#[derive(Parser)]
#[command(
    name = "taskstore",
    version,
    about = "Store research tasks in Redis through a WebAssembly component"
)]
struct Cli {
    // The value may hold a password: never show it in --help. (`help` rather than a doc
    // comment, whose brackets rustdoc would read as links.)
    #[arg(
        long,
        help = "Redis URL: redis://[[user]:password@]host[:port][/db], rediss://... for TLS, redis+cluster://host:port[,host:port...] for a Redis Cluster (rediss+cluster:// over TLS), redis+sentinel://host:port[,host:port...]/service[/db] for Redis Sentinel (rediss+sentinel:// over TLS) [default: redis://127.0.0.1:6379]",
        value_name = "URL",
        env = "REDIS_URL",
        hide_env_values = true,
        global = true
    )]
    redis: Option<String>,

    /// File holding the Redis password (one line; a trailing newline is ignored), kept out
    /// of the URL, the command line and `ps`. Without it, the REDIS_PASSWORD environment
    /// variable is read. The URL must then hold no password; a user name in it is kept
    #[arg(long, value_name = "PATH", global = true)]
    redis_password_file: Option<std::path::PathBuf>,

    /// redis+sentinel:// only: file holding the sentinels' own password (their
    /// `requirepass`; one line), separate from the Redis password, which goes to the data
    /// nodes only. Without it, the REDIS_SENTINEL_PASSWORD environment variable is read
    #[arg(long, value_name = "PATH", global = true)]
    sentinel_password_file: Option<std::path::PathBuf>,

    /// Key prefix [default: research_task:]
    #[arg(long, value_name = "P", global = true)]
    prefix: Option<String>,

    /// Deadline for connecting and for each command, in milliseconds [default: 5000]
    #[arg(long, value_name = "MS", global = true)]
    timeout_ms: Option<u32>,

    /// rediss:// and rediss+cluster:// only: PEM file of the CA certificate(s) that sign the
    /// server's (every node's) certificate, trusted instead of the built-in web PKI roots
    #[arg(
        long,
        value_name = "PATH",
        env = "TASKSTORE_TLS_CA_FILE",
        global = true
    )]
    tls_ca_file: Option<std::path::PathBuf>,

    /// rediss:// and rediss+cluster:// only. DANGER, development only: accept any server
    /// certificate (anyone who can intercept the connection can then impersonate Redis and
    /// read the password)
    #[arg(long, global = true)]
    danger_accept_invalid_certificates: bool,

    /// Cluster and Sentinel URLs only: a network (and ports) where nodes the cluster (or the
    /// sentinels) report may be reached, besides the seeds' (sentinels') own addresses:
    /// `CIDR[:PORTS]`, e.g. `10.0.0.0/8`,
    /// `10.1.2.3:7000-7005`, `[fd00::/8]:7000`. Repeatable. Link-local and cloud metadata
    /// addresses are refused whatever this says
    #[arg(long, value_name = "CIDR[:PORTS]", global = true)]
    cluster_allow: Vec<taskstore_host::ClusterAllow>,

    /// How `list --status` finds tasks: `scan` reads every task (never misses one, whoever
    /// wrote it); `index` reads the status index, which this program's writes keep in this
    /// mode (tasks written otherwise need `taskstore reindex` first) [default: scan]
    #[arg(long, value_name = "MODE", value_enum, global = true)]
    listing: Option<Listing>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Task(TaskCommand),
    /// Walk a research task through its life; without --redis or REDIS_URL, on a throwaway
    /// redis-server
    Demo,
    /// Measure the component against a native build of the same client (release builds
    /// only); without --redis, REDIS_URL or --port, on a private redis-server
    Bench(bench::BenchArgs),
    /// Serve the research-task HTTP API (the composed wasi:http function) until Ctrl-C
    Serve(ServeArgs),
    /// Enter every task in the status index (`--listing index`), e.g. tasks written by the
    /// Python service or redis-cli: one pass over the keys, progress on stderr, resumable
    /// with the `--cursor` it prints
    Reindex {
        /// Continue from the cursor a previous run printed
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
        /// Tasks read per round trip batch, 1..=10000
        #[arg(long, value_name = "N", default_value_t = 1000)]
        batch: u32,
    },
    /// Write the embedded components, and the HTTP API's OpenAPI document, to a directory, for
    /// other hosts (`wasmtime serve`, ...) and client generators
    Export {
        /// Directory to write `taskstore.wasm`, `taskstore-tls.wasm`, `research-api.wasm`,
        /// `taskstore-kv.wasm` and `openapi.json` into (created if missing)
        #[arg(value_name = "DIR")]
        out_dir: std::path::PathBuf,
    },
    /// Plug the key-value component (wasi:keyvalue over Redis) into an application's
    /// wasi:keyvalue imports
    Compose(keyvalue::ComposeArgs),
    /// Run a wasi:cli command that uses wasi:keyvalue, storing in Redis, in the store's
    /// sandbox (TCP to the Redis addresses only); exits with the command's exit code
    Run(keyvalue::RunArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the first line printed says which)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Serve this component instead of the embedded one (a wasi:http proxy component that
    /// reads its settings from wasi:config/store)
    #[arg(long, value_name = "PATH")]
    component: Option<std::path::PathBuf>,
    /// Requests handled at once, and so the most Redis connections held
    #[arg(long, value_name = "N", default_value_t = taskstore_host::serve::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    max_concurrent_requests: usize,
    /// Requests one instance serves before it is replaced (1: a fresh instance, and Redis
    /// connection, per request)
    #[arg(long, value_name = "N", default_value_t = taskstore_host::serve::DEFAULT_MAX_REQUESTS_PER_INSTANCE)]
    max_requests_per_instance: u32,
    /// Deadline of one request in milliseconds; past it the client gets 503
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Linear-memory limit of one request's instance, in MiB; it must hold the function's
    /// documents (max-document-bytes, 1 MiB by default) with room to spare, or serve refuses
    /// to start
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory_limit_mib: usize,
    /// Open client connections at most; one more is answered 503 and closed
    #[arg(long, value_name = "N", default_value_t = taskstore_host::serve::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// A client must send a complete request head within this many milliseconds of
    /// connecting or of its previous response (also the keep-alive idle timeout)
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// Longest wait for the next bytes of a request body, in milliseconds (then 408)
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    body_read_timeout_ms: u64,
    /// A response write that makes no progress for this many milliseconds closes the
    /// connection
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    write_timeout_ms: u64,
    /// File holding the API key (bearer token) every request must present; or set
    /// TASKSTORE_API_KEY. Required when --listen is not a loopback address
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<std::path::PathBuf>,
    /// Another host name requests may address in Host (repeatable; localhost and the listen
    /// address are always allowed)
    #[arg(long = "allow-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Start a private, throwaway redis-server for this run instead of using --redis
    #[arg(long, conflicts_with = "redis")]
    throwaway_redis: bool,
    /// Extra wasi:config/store variable for the function, KEY=VALUE (repeatable)
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config_vars: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, on a listener of their own (a
    /// non-loopback address needs an API key to be set, as --listen does)
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Format of the log lines on stderr, one access-log line per request among them; `off`
    /// drops the access log (the other lines stay, as logfmt). RUST_LOG filters them
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = AccessLog::Logfmt)]
    access_log: AccessLog,
}

/// `--listing`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Listing {
    Scan,
    Index,
}

impl Listing {
    fn mode(self) -> taskstore_host::ListingMode {
        match self {
            Listing::Scan => taskstore_host::ListingMode::Scan,
            Listing::Index => taskstore_host::ListingMode::Index,
        }
    }

    fn config_value(self) -> &'static str {
        match self {
            Listing::Scan => "scan",
            Listing::Index => "index",
        }
    }
}

/// `serve --access-log`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AccessLog {
    Logfmt,
    Json,
    Off,
}

/// The commands that act on one task.
#[derive(Subcommand)]
enum TaskCommand {
    /// Store a task's JSON document (replacing any previous one)
    Set {
        id: String,
        /// The document; `-` or nothing reads it from stdin (one trailing newline dropped)
        document: Option<String>,
        /// Expire after this many seconds [default: 604800, 7 days]
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
        /// Only create the task: if it exists, leave it unchanged and exit with code 4
        #[arg(long)]
        if_absent: bool,
    },
    /// Apply a JSON merge patch (RFC 7386) to a task atomically and print the new document
    ///
    /// Members the patch does not name keep their exact text; `null` removes a member. With
    /// --expect-status, a task whose "status" differs is left unchanged, its current
    /// document printed, and the exit code is 4.
    Update {
        id: String,
        /// The patch, a JSON object; `-` reads it from stdin (one trailing newline dropped)
        patch: String,
        /// Apply the patch only if the task's top-level "status" is this string
        #[arg(long, value_name = "S")]
        expect_status: Option<String>,
        /// Expire this many seconds from now [default: keep the time left]
        #[arg(long, value_name = "SECS")]
        ttl: Option<u64>,
    },
    /// Make a task expire this many seconds from now, without rewriting it
    Expire {
        id: String,
        #[arg(value_name = "SECS")]
        seconds: u64,
    },
    /// Print tasks, one JSON document per line; `next-cursor: C` on stderr when more remain
    ///
    /// Line breaks in a document, which JSON allows only as whitespace between tokens, are
    /// printed as spaces so that each document stays on one line.
    List {
        /// Only tasks whose top-level "status" is this string
        #[arg(long, value_name = "S")]
        status: Option<String>,
        /// Most tasks per page, 1..=10000 [default: 100]
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Continue from the `next-cursor` a previous run printed
        #[arg(long, value_name = "C")]
        cursor: Option<String>,
        /// Follow the cursors to the end, printing every page
        #[arg(long)]
        all: bool,
    },
    /// Print a task's document
    Get { id: String },
    /// Delete a task
    Delete { id: String },
    /// Print the seconds until a task expires, or `persistent`
    Ttl { id: String },
    /// Print whether a task exists (`true`, or `false` with exit code 1)
    Exists { id: String },
}

/// How a command ended when it did not simply succeed; each maps to one exit code.
enum Failure {
    /// No such task (exit 1).
    NotFound(String),
    /// No such task, and stdout already says so (exit 1, no message).
    Absent,
    /// The task exists, or is not in the expected state (exit 4).
    Conflict(String),
    /// Input the CLI itself rejects (exit 2).
    Usage(String),
    /// The store's error: exit 2 for invalid input, else 3.
    Task(TaskError),
    /// Anything else the CLI could not do (exit 3).
    Other(String),
}

impl From<TaskError> for Failure {
    fn from(error: TaskError) -> Failure {
        Failure::Task(error)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::NotFound(message) => (1, message),
                Failure::Absent => return ExitCode::from(1),
                Failure::Usage(message) => (2, message),
                Failure::Conflict(message) => (4, message),
                Failure::Task(error) if error.kind() == ErrorKind::InvalidInput => {
                    (2, error.to_string())
                }
                Failure::Task(error) if error.kind() == ErrorKind::Conflict => {
                    (4, error.to_string())
                }
                Failure::Task(error) => (3, error.to_string()),
                Failure::Other(message) => (3, message),
            };
            eprintln!("taskstore: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Demo => demo(&cli),
        Command::Bench(args) => bench::run(args, cli.redis.clone(), cli.prefix.clone())
            .map_err(|e| Failure::Other(format!("bench: {e:#}"))),
        Command::Serve(args) => serve(&cli, args),
        Command::Export { out_dir } => export(out_dir),
        Command::Reindex { cursor, batch } => {
            let url = cli.redis.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
            let mut store = open(&cli, url)?;
            reindex(&mut store, cursor.clone(), *batch)
        }
        Command::Compose(args) => keyvalue::compose_command(args),
        Command::Run(args) => match keyvalue::run_app(&cli, args)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::Task(command) => {
            let url = cli.redis.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
            let mut store = open(&cli, url)?;
            execute(&mut store, command)
        }
    }
}

fn execute(store: &mut TaskStore, command: &TaskCommand) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match command {
        TaskCommand::Set {
            id,
            document,
            ttl,
            if_absent,
        } => {
            let document = match document.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(text) => text.to_owned(),
            };
            if !*if_absent {
                store.set(id, &document, *ttl)?;
            } else if !store.create(id, &document, *ttl)? {
                return Err(Failure::Conflict(format!(
                    "task {id:?} already exists; left unchanged"
                )));
            }
        }
        TaskCommand::Update {
            id,
            patch,
            expect_status,
            ttl,
        } => {
            let patch = match patch.as_str() {
                "-" => read_stdin()?,
                text => text.to_owned(),
            };
            let options = UpdateOptions {
                expect_status: expect_status.clone(),
                ttl: ttl.map_or(TtlPolicy::Keep, TtlPolicy::Set),
            };
            match store.update(id, &patch, &options) {
                Ok(Some(document)) => print(&mut stdout, &document)?,
                Ok(None) => return Err(not_found(id)),
                Err(conflict) if conflict.kind() == ErrorKind::Conflict => {
                    let current = conflict.into_message();
                    print(&mut stdout, &current)?;
                    let expected = expect_status.as_deref().unwrap_or_default();
                    return Err(Failure::Conflict(format!(
                        "task {id:?} {}, not {expected:?}; left unchanged",
                        describe_status(&current)
                    )));
                }
                Err(error) => return Err(error.into()),
            }
        }
        TaskCommand::Expire { id, seconds } => {
            if !store.expire(id, *seconds)? {
                return Err(not_found(id));
            }
        }
        TaskCommand::List {
            status,
            limit,
            cursor,
            all,
        } => {
            let mut options = ListOptions {
                status: status.clone(),
                limit: *limit,
                cursor: cursor.clone(),
            };
            let mut pages = 0;
            loop {
                let page = store.list(&options)?;
                pages += 1;
                for task in &page.tasks {
                    print(&mut stdout, &task.document.replace(['\r', '\n'], " "))?;
                }
                match page.cursor {
                    None => break,
                    Some(next) if *all && pages < MAX_LIST_PAGES => options.cursor = Some(next),
                    Some(next) => {
                        stdout
                            .flush()
                            .map_err(|e| Failure::Other(format!("cannot write to stdout: {e}")))?;
                        eprintln!("next-cursor: {next}");
                        if *all {
                            return Err(Failure::Other(format!(
                                "stopped after {MAX_LIST_PAGES} pages; continue with --cursor"
                            )));
                        }
                        break;
                    }
                }
            }
        }
        TaskCommand::Get { id } => match store.get(id)? {
            Some(document) => print(&mut stdout, &document)?,
            None => return Err(not_found(id)),
        },
        TaskCommand::Delete { id } => {
            if !store.delete(id)? {
                return Err(not_found(id));
            }
        }
        TaskCommand::Ttl { id } => match store.ttl(id)? {
            Some(TimeToLive::ExpiresIn(seconds)) => print(&mut stdout, &seconds.to_string())?,
            Some(TimeToLive::Persistent) => print(&mut stdout, "persistent")?,
            None => return Err(not_found(id)),
        },
        TaskCommand::Exists { id } => {
            let exists = store.exists(id)?;
            print(&mut stdout, &exists.to_string())?;
            if !exists {
                return Err(Failure::Absent);
            }
        }
    }
    Ok(())
}

/// Pages `reindex` reads at most (10,000 tasks each by the largest batch: 10^9 tasks).
const MAX_REINDEX_PAGES: usize = 1_000_000;
/// Progress lines on stderr at most this often.
const REINDEX_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn reindex(store: &mut TaskStore, mut cursor: Option<String>, batch: u32) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let mut last_report = started;
    let (mut visited, mut indexed) = (0u64, 0u64);
    for _ in 0..MAX_REINDEX_PAGES {
        let page = match store.reindex(cursor.as_deref(), Some(batch)) {
            Ok(page) => page,
            Err(error) => {
                if let Some(cursor) = &cursor {
                    eprintln!("reindex: stopped; resume with --cursor {cursor}");
                }
                return Err(error.into());
            }
        };
        visited += u64::from(page.visited);
        indexed += u64::from(page.indexed);
        let Some(next) = page.cursor else {
            eprintln!(
                "reindex: done: {visited} tasks read, {indexed} indexed in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        };
        if last_report.elapsed() >= REINDEX_PROGRESS_EVERY {
            last_report = std::time::Instant::now();
            eprintln!("reindex: {visited} tasks read, {indexed} indexed; --cursor {next}");
        }
        cursor = Some(next);
    }
    Err(Failure::Other(format!(
        "reindex stopped after {MAX_REINDEX_PAGES} pages; continue with --cursor {}",
        cursor.unwrap_or_default()
    )))
}

fn serve(cli: &Cli, args: &ServeArgs) -> Result<(), Failure> {
    use taskstore_host::serve::{describe_redis, ServeConfig, Server};

    let throwaway = match args.throwaway_redis {
        true => Some(
            RedisServer::start()
                .map_err(|e| Failure::Other(format!("cannot start a redis-server: {e:#}")))?,
        ),
        false => None,
    };
    let url = match &throwaway {
        Some(server) => server.url(),
        None => {
            let url = cli.redis.clone().unwrap_or_else(|| DEFAULT_URL.to_owned());
            // The function reads one `redis-url`; the password joins it only there, and
            // every message scrubs it (`ServeConfig`'s secrets are read from that URL).
            let url = match redis_password(cli)? {
                Some(password) => taskstore::config::url_with_password(&url, &password)
                    .map_err(|e| Failure::Usage(e.to_string()))?,
                None => url,
            };
            match sentinel_password(cli)? {
                Some(password) => taskstore::config::url_with_sentinel_password(&url, &password)
                    .map_err(|e| Failure::Usage(e.to_string()))?,
                None => url,
            }
        }
    };
    let mut config = ServeConfig::new(url);
    config.listen = args.listen;
    config.component = args.component.clone();
    config.max_concurrent_requests = args.max_concurrent_requests;
    config.max_requests_per_instance = args.max_requests_per_instance;
    config.request_timeout = std::time::Duration::from_millis(args.request_timeout_ms);
    config.memory_limit = args.memory_limit_mib.saturating_mul(1024 * 1024);
    config.max_connections = args.max_connections;
    config.header_timeout = std::time::Duration::from_millis(args.header_timeout_ms);
    config.body_read_timeout = std::time::Duration::from_millis(args.body_read_timeout_ms);
    config.write_timeout = std::time::Duration::from_millis(args.write_timeout_ms);
    config.allowed_hosts = args.allowed_hosts.clone();
    config.cluster_allow = cli.cluster_allow.clone();
    config.api_key = api_key(args)?;
    config.metrics_listen = args.metrics_listen;
    config.access_log = !matches!(args.access_log, AccessLog::Off);
    let log_format = match args.access_log {
        AccessLog::Json => taskstore_host::serve::LogFormat::Json,
        AccessLog::Logfmt | AccessLog::Off => taskstore_host::serve::LogFormat::Logfmt,
    };
    // Declared before the runtime, so dropped after it: the lines of the last requests are
    // written out once nothing can log any more.
    let _log_flush = taskstore_host::serve::logging::install(log_format)
        .map_err(|e| Failure::Other(format!("serve: {e:#}")))?;
    if let Some(prefix) = &cli.prefix {
        config
            .config_vars
            .insert(settings::KEY_PREFIX.into(), prefix.clone());
    }
    if let Some(timeout) = cli.timeout_ms {
        config
            .config_vars
            .insert(settings::TIMEOUT_MS.into(), timeout.to_string());
    }
    if let Some(listing) = cli.listing {
        config
            .config_vars
            .insert(settings::LISTING.into(), listing.config_value().into());
    }
    if let Some(pem) = tls_ca_certificates(cli)? {
        config
            .config_vars
            .insert(settings::TLS_CA_CERTIFICATES.into(), pem);
    }
    if cli.danger_accept_invalid_certificates {
        warn_unverified_tls();
        config.config_vars.insert(
            settings::DANGER_ACCEPT_INVALID_CERTIFICATES.into(),
            "true".into(),
        );
    }
    for pair in &args.config_vars {
        let Some((key, value)) = pair.split_once('=') else {
            // The value may be a secret: say what is wrong without echoing it.
            return Err(Failure::Usage(
                "--config takes KEY=VALUE (no `=` found)".into(),
            ));
        };
        config.config_vars.insert(key.to_owned(), value.to_owned());
    }
    if args.max_concurrent_requests == 0 {
        return Err(Failure::Usage(
            "--max-concurrent-requests must be at least 1".into(),
        ));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let cache = taskstore_host::ComponentCache::from_env();
        let redis = describe_redis(&config);
        let max = config.max_concurrent_requests;
        let server = Server::bind(config, cache.as_ref())
            .await
            .map_err(|e| Failure::Other(format!("serve: {e:#}")))?;
        let addr = server
            .local_addr()
            .map_err(|e| Failure::Other(format!("serve: {e}")))?;
        let metrics = match server
            .metrics_addr()
            .map_err(|e| Failure::Other(format!("serve: {e}")))?
        {
            Some(metrics) => format!("\nmetrics on http://{metrics}/metrics"),
            None => String::new(),
        };
        let mut stdout = std::io::stdout().lock();
        let banner = format!(
            "listening on http://{addr}{metrics}\nredis: {redis}{}; up to {max} concurrent \
             requests; Ctrl-C stops",
            if throwaway.is_some() {
                " (throwaway)"
            } else {
                ""
            }
        );
        print(&mut stdout, &banner)?;
        drop(stdout);
        let remaining = server
            .run(shutdown_signal())
            .await
            .map_err(|e| Failure::Other(format!("serve: {e:#}")))?;
        if remaining > 0 {
            tracing::warn!(
                target: "taskstore::serve",
                "stopped with {remaining} connection(s) cut off"
            );
        } else {
            tracing::info!(target: "taskstore::serve", "stopped");
        }
        Ok(())
    })
}

/// The API key from `--api-key-file` or the environment; both at once is ambiguous.
fn api_key(args: &ServeArgs) -> Result<Option<taskstore_host::serve::ApiKey>, Failure> {
    use taskstore_host::serve::{ApiKey, API_KEY_ENV};
    let from_env = std::env::var_os(API_KEY_ENV);
    match (&args.api_key_file, from_env) {
        (Some(_), Some(_)) => Err(Failure::Usage(format!(
            "give the API key either with --api-key-file or in {API_KEY_ENV}, not both"
        ))),
        (Some(path), None) => ApiKey::from_file(path)
            .map(Some)
            .map_err(|e| Failure::Usage(format!("{e:#}"))),
        (None, Some(value)) => {
            let value = value
                .into_string()
                .map_err(|_| Failure::Usage(format!("{API_KEY_ENV} is not UTF-8")))?;
            ApiKey::new(&value)
                .map(Some)
                .map_err(|e| Failure::Usage(format!("{API_KEY_ENV}: {e:#}")))
        }
        (None, None) => Ok(None),
    }
}

fn export(out_dir: &std::path::Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Failure::Other(format!("cannot create {}: {e}", out_dir.display())))?;
    let mut stdout = std::io::stdout().lock();
    for (name, bytes) in [
        ("taskstore.wasm", taskstore_host::COMPONENT),
        ("taskstore-tls.wasm", taskstore_host::TLS_COMPONENT),
        ("research-api.wasm", taskstore_host::serve::HTTP_COMPONENT),
        ("taskstore-kv.wasm", taskstore_host::keyvalue::KV_COMPONENT),
        // The function's contract, as it serves it at /research/openapi.json.
        ("openapi.json", research_api::openapi::DOCUMENT.as_bytes()),
    ] {
        let path = out_dir.join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| Failure::Other(format!("cannot write {}: {e}", path.display())))?;
        print(
            &mut stdout,
            &format!("{} ({} bytes)", path.display(), bytes.len()),
        )?;
    }
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn open(cli: &Cli, url: String) -> Result<TaskStore, Failure> {
    let runtime = Runtime::builder()
        .cache_from_env()
        .build()
        .map_err(|e| Failure::Other(format!("cannot load the component: {e:#}")))?;
    if cli.danger_accept_invalid_certificates {
        warn_unverified_tls();
    }
    let options = Options {
        password: redis_password(cli)?,
        sentinel_password: sentinel_password(cli)?,
        key_prefix: cli.prefix.clone(),
        timeout_ms: cli.timeout_ms,
        tls_ca_certificates: tls_ca_certificates(cli)?,
        danger_accept_invalid_certificates: cli.danger_accept_invalid_certificates,
        cluster_allow: cli.cluster_allow.clone(),
        listing: cli.listing.map(Listing::mode),
        ..Options::new(url)
    };
    Ok(TaskStore::open(&runtime, options)?)
}

/// The PEM text of `--tls-ca-file`, if given.
fn tls_ca_certificates(cli: &Cli) -> Result<Option<String>, Failure> {
    cli.tls_ca_file
        .as_deref()
        .map(|path| read_tls_ca_file(path).map_err(|e| Failure::Usage(format!("{e:#}"))))
        .transpose()
}

fn warn_unverified_tls() {
    eprintln!(
        "taskstore: WARNING: --danger-accept-invalid-certificates: the server's TLS \
         certificate is not verified; use this for development only"
    );
}

/// The Redis password given apart from the URL: `--redis-password-file`, else
/// `REDIS_PASSWORD`, else none. Messages name the file, never its content.
fn redis_password(cli: &Cli) -> Result<Option<String>, Failure> {
    password_apart(
        cli.redis_password_file.as_deref(),
        "REDIS_PASSWORD",
        "Redis password",
    )
}

/// The sentinels' password: `--sentinel-password-file`, else `REDIS_SENTINEL_PASSWORD`,
/// else none.
fn sentinel_password(cli: &Cli) -> Result<Option<String>, Failure> {
    password_apart(
        cli.sentinel_password_file.as_deref(),
        "REDIS_SENTINEL_PASSWORD",
        "sentinel password",
    )
}

/// A password from `file` (one line), else from the environment variable `env`, else none.
/// Messages name the file or variable, never the content.
fn password_apart(
    file: Option<&std::path::Path>,
    env: &str,
    what: &str,
) -> Result<Option<String>, Failure> {
    let password = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            Failure::Usage(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?,
        None => match std::env::var(env) {
            Ok(password) => password,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Failure::Usage(format!("{env} is not UTF-8")))
            }
        },
    };
    let password = password
        .strip_suffix('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .unwrap_or(&password);
    if password.is_empty() {
        return Err(Failure::Usage(format!("the {what} is empty")));
    }
    Ok(Some(password.to_owned()))
}

fn not_found(id: &str) -> Failure {
    Failure::NotFound(format!("no task {id:?}"))
}

/// `has status "x"` or `has no string status`, read from a document for a message.
fn describe_status(document: &str) -> String {
    match serde_json::from_str::<Value>(document)
        .ok()
        .as_ref()
        .and_then(|document| document.get("status"))
        .and_then(Value::as_str)
    {
        Some(status) => format!("has status {status:?}"),
        None => "has no string status".to_owned(),
    }
}

/// The document from stdin, minus one trailing newline so that `get | set` round-trips.
fn read_stdin() -> Result<String, Failure> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| Failure::Usage("stdin is not UTF-8 text".to_owned()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

fn print(out: &mut impl Write, line: &str) -> Result<(), Failure> {
    writeln!(out, "{line}").map_err(|e| Failure::Other(format!("cannot write to stdout: {e}")))
}

/// Runs the demo on the given Redis, or on a throwaway server when none is given.
fn demo(cli: &Cli) -> Result<(), Failure> {
    let (server, url, id) = match &cli.redis {
        Some(url) => {
            // Someone else's Redis: an id no other run uses.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let id = format!("demo-{}-{nanos}", std::process::id());
            (None, url.clone(), id)
        }
        None => {
            let server = RedisServer::start().map_err(|e| {
                Failure::Other(format!("cannot start a throwaway redis-server: {e:#}"))
            })?;
            println!(
                "started a throwaway redis-server on 127.0.0.1:{}",
                server.port()
            );
            let url = server.url();
            (
                Some(server),
                url,
                "7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned(),
            )
        }
    };
    let mut store = open(cli, url)?;
    let outcome = demo_steps(&mut store, &id);
    store.close();
    if let Some(server) = server {
        drop(server);
        println!("stopped the throwaway redis-server");
    }
    outcome
}

fn demo_steps(store: &mut TaskStore, id: &str) -> Result<(), Failure> {
    let task = json!({
        "id": id,
        "status": "pending",
        "query": "Compare cold-start latency of WebAssembly components and containers for edge functions",
        "created_at": rfc3339_now(),
        "progress": 0,
        "sources": [],
        "result": null,
    });
    if !store.create(id, &task.to_string(), None)? {
        return Err(Failure::Conflict(format!("task {id} already exists")));
    }
    println!("1. created task {id}: status pending, progress 0");

    // Each step moves the task on only from the state it expects, as a worker would: a
    // second worker picking up the same task gets a conflict instead of overwriting it.
    let running = json!({
        "status": "running",
        "progress": 40,
        "sources": [
            {"url": "https://example.org/papers/wasm-edge", "title": "Wasm at the Edge",
             "snippet": "Cold starts below 1 ms.", "relevance": 0.93},
            {"url": "https://example.org/bench/containers", "title": "Containers vs Wasm",
             "snippet": "Containers: 300-900 ms.", "relevance": 0.81},
        ],
    });
    advance(store, id, "pending", &running)?;
    println!("2. running: progress 40, 2 sources found");

    let completed = json!({
        "status": "completed",
        "progress": 100,
        "result": "Wasm components start 10-100x faster than containers and use far less memory; \
                   containers remain simpler for full POSIX workloads.",
    });
    advance(store, id, "running", &completed)?;
    println!("3. completed: progress 100, result written");
    match advance(store, id, "running", &completed) {
        Err(Failure::Task(error)) if error.kind() == ErrorKind::Conflict => {
            println!("   a second \"running -> completed\" update is refused: conflict")
        }
        Ok(()) => {
            return Err(Failure::Other(format!(
                "task {id} was completed twice: the status precondition did not hold"
            )))
        }
        Err(other) => return Err(other),
    }

    let stored = store
        .get(id)?
        .ok_or_else(|| Failure::Other(format!("task {id} vanished right after it was written")))?;
    let read: Value = serde_json::from_str(&stored)
        .map_err(|e| Failure::Other(format!("task {id} came back as invalid JSON: {e}")))?;
    println!(
        "4. read back: status {}, progress {}, {} sources, result: {}",
        read["status"],
        read["progress"],
        read["sources"].as_array().map_or(0, Vec::len),
        read["result"]
    );

    match store.ttl(id)? {
        Some(TimeToLive::ExpiresIn(seconds)) => {
            println!(
                "5. expires in {seconds} s (about {:.1} days)",
                seconds as f64 / 86_400.0
            )
        }
        Some(TimeToLive::Persistent) => println!("5. never expires"),
        None => return Err(Failure::Other(format!("task {id} has no TTL: it is gone"))),
    }

    let deleted = store.delete(id)?;
    println!("6. deleted: {deleted}");

    let exists = store.exists(id)?;
    let document = store.get(id)?;
    println!(
        "7. exists afterwards: {exists}; get returns {}",
        if document.is_some() {
            "a document"
        } else {
            "nothing"
        }
    );
    if exists || document.is_some() {
        return Err(Failure::Other(format!(
            "task {id} is still there after delete"
        )));
    }
    Ok(())
}

/// Applies `patch` to task `id` only if its status is `from`.
fn advance(store: &mut TaskStore, id: &str, from: &str, patch: &Value) -> Result<(), Failure> {
    let options = UpdateOptions {
        expect_status: Some(from.to_owned()),
        ttl: TtlPolicy::Keep,
    };
    match store.update(id, &patch.to_string(), &options)? {
        Some(_) => Ok(()),
        None => Err(Failure::Other(format!(
            "task {id} vanished while it was {from}"
        ))),
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS+00:00`, the shape of `created_at`.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm, for dates from 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
