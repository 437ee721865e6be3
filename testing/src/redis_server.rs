//! A private `redis-server` for tests and demos.
//!
//! [`RedisServer`] is a guard object: it runs one `redis-server` process on its own free
//! loopback port with its own temporary directory (data files and log inside), and kills and
//! reaps that process when dropped. Nothing is persisted unless the caller asks for it
//! (`--save ""` and `--appendonly no` are the defaults; later arguments override them).
//!
//! Every wait is bounded: startup gives up after [`READY_TIMEOUT`] and reports the tail of the
//! server's log, and a graceful [`RedisServer::stop`] falls back to `SIGKILL` after
//! [`STOP_TIMEOUT`].

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::PLAIN_TIMEOUT;
use anyhow::{anyhow, bail, Context as _};

/// How long a started server may take to answer `PING`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::stop`] waits after `SIGTERM` before it sends `SIGKILL`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Fresh ports tried when `redis-server` cannot bind the one picked for it (another process
/// took it between our probe and redis's bind).
const PORT_ATTEMPTS: usize = 5;
/// Log lines attached to a startup error and returned by [`RedisServer::log_tail`].
const LOG_TAIL_LINES: usize = 40;
const LOG_FILE: &str = "redis.log";
/// Whatever redis writes to stdout/stderr before its log file is open (config errors).
const STDIO_FILE: &str = "redis.stdio";
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Redis logs this once it listens and has loaded its data.
const READY_MARKER: &str = "Ready to accept connections";

/// Builds a [`RedisServer`] with extra `redis-server` arguments.
///
/// ```no_run
/// # use taskstore_testing::redis_server::RedisServer;
/// let server = RedisServer::builder().arg("--requirepass").arg("secret").start()?;
/// # anyhow::Ok(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct RedisServerBuilder {
    args: Vec<OsString>,
    tls: Option<TlsFiles>,
}

/// PEM texts a TLS-enabled server is started with (written into its own directory).
#[derive(Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub certificate: String,
    /// The server certificate's private key.
    pub private_key: String,
    /// The CA that Redis requires for client certificates; unused, since the server is
    /// started with `--tls-auth-clients no`, but Redis refuses to start without one.
    pub ca_certificate: String,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

impl RedisServerBuilder {
    /// Appends one argument, passed to `redis-server` after the defaults, so it overrides them
    /// (`.arg("--appendonly").arg("yes")`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments, as [`RedisServerBuilder::arg`] does.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Also listens for TLS on a second loopback port ([`RedisServer::tls_port`]), with
    /// these certificates and no client certificates required. The plaintext port stays
    /// open: readiness checks and tests' own checks use it.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Errors
    /// `redis-server` is not on `PATH`; the temporary directory cannot be created; the
    /// process cannot be spawned, exits early (a bad argument, say), or does not answer within
    /// [`READY_TIMEOUT`]. The error carries the tail of the server's log.
    pub fn start(self) -> anyhow::Result<RedisServer> {
        let program = find_redis_server()?;
        let dir = tempfile::Builder::new()
            .prefix("taskstore-redis-")
            .tempdir()
            .context("cannot create a temporary directory for redis-server")?;
        let mut args = Vec::new();
        if let Some(files) = &self.tls {
            for (name, flag, pem) in [
                ("server.crt", "--tls-cert-file", &files.certificate),
                ("server.key", "--tls-key-file", &files.private_key),
                ("ca.crt", "--tls-ca-cert-file", &files.ca_certificate),
            ] {
                let path = dir.path().join(name);
                fs::write(&path, pem).with_context(|| format!("cannot write {name}"))?;
                args.push(OsString::from(flag));
                args.push(path.into_os_string());
            }
            args.extend(["--tls-auth-clients", "no"].map(OsString::from));
        }
        args.extend(self.args);
        let mut server = RedisServer {
            program,
            args,
            dir,
            port: 0,
            tls_port: None,
            child: None,
        };
        let mut attempt = 1;
        loop {
            server.port = free_loopback_port()?;
            if self.tls.is_some() {
                server.tls_port = Some(free_loopback_port()?);
            }
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(SpawnError::PortTaken(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(SpawnError::PortTaken(e) | SpawnError::Other(e)) => return Err(e),
            }
        }
    }
}

/// One `redis-server` process on `127.0.0.1`, killed and reaped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    args: Vec<OsString>,
    dir: tempfile::TempDir,
    port: u16,
    /// The TLS port, when started with [`RedisServerBuilder::tls`].
    tls_port: Option<u16>,
    child: Option<Child>,
}

enum SpawnError {
    /// Redis could not bind its port; another port may work.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl RedisServer {
    /// Starts a server with the default arguments only; see [`RedisServerBuilder::start`].
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`].
    pub fn start() -> anyhow::Result<Self> {
        Self::builder().start()
    }

    /// A builder for a server with extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The loopback port the server listens on; it stays the same across restarts.
    /// Makes the next load of the dataset slow, for tests of `LOADING`: adds `keys` filler
    /// keys (`DEBUG POPULATE`) and makes loading each take `per_key` (`key-load-delay`),
    /// answering other clients (with `-LOADING`) every KiB loaded. A `DEBUG RELOAD` then keeps
    /// the server loading for about `keys × per_key`, whatever the machine's speed. Needs a
    /// server started with `--enable-debug-command local`.
    ///
    /// # Errors
    /// A command fails or is refused.
    pub fn prepare_slow_reload(&self, keys: u64, per_key: Duration) -> anyhow::Result<()> {
        let keys = keys.to_string();
        let micros = per_key.as_micros().to_string();
        let commands: [&[&[u8]]; 3] = [
            &[b"DEBUG", b"POPULATE", keys.as_bytes(), b"filler"],
            &[b"CONFIG", b"SET", b"key-load-delay", micros.as_bytes()],
            &[
                b"CONFIG",
                b"SET",
                b"loading-process-events-interval-bytes",
                b"1024",
            ],
        ];
        for args in commands {
            let reply = command(self.addr(), args, Instant::now() + PLAIN_TIMEOUT)?;
            if !reply.starts_with(b"+OK") {
                bail!(
                    "{} refused: {}",
                    String::from_utf8_lossy(args[0]),
                    String::from_utf8_lossy(&reply).trim_end()
                );
            }
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:<port>` (no credentials, database 0).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TLS port, if the server was started with [`RedisServerBuilder::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>`, if the server was started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("rediss://127.0.0.1:{port}"))
    }

    /// The server's working directory: data files and the log live here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running (it has not been stopped and has not died).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines of the server's log (and of anything it wrote to stdout/stderr).
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path(), LOG_TAIL_LINES)
    }

    /// Shuts the server down gracefully (`SIGTERM`, so it writes its RDB/AOF as configured),
    /// falling back to `SIGKILL` after [`STOP_TIMEOUT`], and reaps it. Does nothing if it is
    /// not running.
    ///
    /// # Errors
    /// The process cannot be signalled or waited for.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if terminate(&child).is_err() {
            return kill_and_reap(&mut child);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL);
        }
        child.kill().context("cannot kill redis-server")?;
        child.wait().context("cannot reap redis-server")?;
        Ok(())
    }

    /// Kills the server at once (`SIGKILL`, as a crash would) and reaps it. Does nothing if it
    /// is not running.
    ///
    /// # Errors
    /// The process cannot be killed or waited for.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Stops the server if it runs ([`RedisServer::stop`]), then starts it again on the same
    /// port, with the same directory and arguments, and waits until it answers `PING`.
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`]; also if another process has taken the port meanwhile.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn_and_wait()
            .map_err(|(SpawnError::PortTaken(e) | SpawnError::Other(e))| e)
    }

    fn spawn_and_wait(&mut self) -> Result<(), SpawnError> {
        let mark = LogMark::now(self.dir.path());
        let child = self.spawn().map_err(SpawnError::Other)?;
        self.child = Some(child);
        match self.wait_ready(mark) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Best effort: the startup error is what the caller needs to see.
                let _ = self.kill();
                let port_taken =
                    log_since(self.dir.path(), mark).contains("Address already in use");
                let tail = self.log_tail();
                let e = anyhow!(
                    "redis-server on 127.0.0.1:{} did not start: {e:#}\n{tail}",
                    self.port
                );
                Err(if port_taken {
                    SpawnError::PortTaken(e)
                } else {
                    SpawnError::Other(e)
                })
            }
        }
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let dir = self.dir.path();
        let stdio = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(STDIO_FILE))
            .context("cannot create redis-server's stdio file")?;
        let mut command = Command::new(&self.program);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(
                self.tls_port
                    .map(|port| ["--tls-port".to_owned(), port.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join(LOG_FILE))
            .args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdio.try_clone()?))
            .stderr(Stdio::from(stdio));
        command
            .spawn()
            .with_context(|| format!("cannot run {}", self.program.display()))
    }

    /// Waits until this process has logged that it is ready and the port answers `PING`.
    /// Checking the log as well as the port makes sure the answer comes from our process,
    /// not from another server that took the port.
    fn wait_ready(&mut self, mark: LogMark) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_ping = String::from("no PING sent yet");
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!("redis-server exited during startup ({status})");
            }
            if log_since(self.dir.path(), mark).contains(READY_MARKER) {
                let tls_listens = || match self.tls_port {
                    // Redis opens both ports before it logs readiness; a connect proves ours.
                    Some(port) => TcpStream::connect_timeout(
                        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        POLL_INTERVAL * 10,
                    )
                    .map(drop)
                    .map_err(|e| anyhow!("TLS port: {e}")),
                    None => Ok(()),
                };
                match ping(self.addr(), deadline).and_then(|()| tls_listens()) {
                    Ok(()) => return Ok(()),
                    Err(e) => last_ping = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not become ready within {READY_TIMEOUT:?} (last PING: {last_ping})"
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill_and_reap(&mut child);
        }
    }
}

fn kill_and_reap(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_none() {
        // `kill` fails only if the process has already exited; `wait` below reaps either way.
        let _ = child.kill();
    }
    child.wait().context("cannot reap redis-server")?;
    Ok(())
}

fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("redis-server pid out of range")?;
    // SAFETY: `kill` has no memory effects; `pid` is our unreaped child, so it cannot have
    // been reused by another process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error()).context("cannot send SIGTERM to redis-server");
    }
    Ok(())
}

/// Finds `redis-server` on `PATH`.
fn find_redis_server() -> anyhow::Result<PathBuf> {
    find_redis_server_in(&std::env::var_os("PATH").unwrap_or_default())
}

fn find_redis_server_in(path: &OsStr) -> anyhow::Result<PathBuf> {
    find_program("redis-server", path).ok_or_else(|| {
        anyhow!("redis-server not found on PATH; run scripts/setup.sh to install it")
    })
}

pub(crate) fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A port that was free on 127.0.0.1 a moment ago. Redis may still lose it to another
/// process; [`RedisServerBuilder::start`] then retries with another.
pub(crate) fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Sends one `PING` and accepts any reply but `-LOADING`: with `--requirepass` the server
/// is ready although it answers `-NOAUTH`.
fn ping(addr: SocketAddr, deadline: Instant) -> anyhow::Result<()> {
    let reply = command(addr, &[b"PING"], deadline)?;
    if reply.starts_with(b"-LOADING") {
        bail!("server is loading its data");
    }
    if reply.starts_with(b"+") || reply.starts_with(b"-") {
        return Ok(());
    }
    bail!(
        "unexpected PING reply {:?}",
        String::from_utf8_lossy(&reply)
    )
}

/// Sends one command as a RESP array of bulk strings and returns the raw bytes of its reply.
///
/// # Errors
/// The connection or an I/O fails, `deadline` passes, or the server closes the connection
/// before a complete reply.
pub fn command(addr: SocketAddr, args: &[&[u8]], deadline: Instant) -> anyhow::Result<Vec<u8>> {
    let remaining = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("deadline passed before {what}"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, remaining("connect")?)?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.set_write_timeout(Some(remaining("write")?))?;
    stream.write_all(&request)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = frame_len(&reply) {
            reply.truncate(end);
            return Ok(reply);
        }
        stream.set_read_timeout(Some(remaining("reply")?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before a complete reply");
        }
        reply.extend_from_slice(&buf[..n]);
    }
}

/// Length of the complete RESP2 frame (a reply, or a request the fault proxy reads) at the
/// start of `buf`, if all of it is there.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let count = || -> Option<i64> {
        std::str::from_utf8(&buf[1..line_end - 2])
            .ok()?
            .parse()
            .ok()
    };
    match buf.first()? {
        b'$' => match usize::try_from(count()?) {
            Err(_) => Some(line_end),
            Ok(len) => {
                let end = line_end + len + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' => {
            let mut end = line_end;
            for _ in 0..count()?.max(0) {
                end += frame_len(&buf[end..])?;
            }
            Some(end)
        }
        _ => Some(line_end),
    }
}

/// Where the log files ended before a spawn, so a restart looks only at what it logged.
#[derive(Clone, Copy)]
struct LogMark {
    log: u64,
    stdio: u64,
}

impl LogMark {
    fn now(dir: &Path) -> Self {
        let len = |name| fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
        Self {
            log: len(LOG_FILE),
            stdio: len(STDIO_FILE),
        }
    }
}

/// What the log and stdio files gained since `mark` (redis appends to both).
fn log_since(dir: &Path, mark: LogMark) -> String {
    let mut text = read_lossy(&dir.join(LOG_FILE), mark.log);
    text.push_str(&read_lossy(&dir.join(STDIO_FILE), mark.stdio));
    text
}

fn read_lossy(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn log_tail(dir: &Path, lines: usize) -> String {
    let mut out = String::new();
    for name in [STDIO_FILE, LOG_FILE] {
        let text = read_lossy(&dir.join(name), 0);
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        if !tail.is_empty() {
            out.push_str(&format!("--- {name} ---\n"));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A loopback port where every connection is refused, for as long as this guard lives.
///
/// A port bound and released at once ("closed") can be taken by another test's server or
/// connection before it is used. This guard keeps a socket bound to the port and never
/// listening: Linux answers a connect to it with a reset (connection refused), and since the
/// socket has no `SO_REUSEADDR`, no other socket can bind the port, nor get it as an
/// ephemeral port, until the guard is dropped.
#[derive(Debug)]
pub struct RefusingPort {
    /// Held, never read: the port stays bound until this closes.
    _socket: std::os::fd::OwnedFd,
    port: u16,
}

impl RefusingPort {
    /// Binds a fresh loopback port without listening on it.
    ///
    /// # Errors
    /// Creating or binding the socket fails.
    pub fn bind() -> anyhow::Result<RefusingPort> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: `socket` takes no pointers; a valid descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("socket");
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid `sockaddr_in` (port 0: the kernel picks one).
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` is a `sockaddr_in` of `len` bytes, alive for the call.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error()).context("bind 127.0.0.1:0");
        }
        // SAFETY: `addr` has room for `len` bytes, and `len` is updated by the call.
        let named = unsafe {
            libc::getsockname(
                socket.as_raw_fd(),
                (&raw mut addr).cast::<libc::sockaddr>(),
                &mut len,
            )
        };
        if named != 0 {
            return Err(io::Error::last_os_error()).context("getsockname");
        }
        Ok(RefusingPort {
            _socket: socket,
            port: u16::from_be(addr.sin_port),
        })
    }

    /// The refusing port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &RedisServer, args: &[&[u8]]) -> Vec<u8> {
        command(server.addr(), args, Instant::now() + Duration::from_secs(5)).unwrap()
    }

    fn refuses_connections(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    }

    #[test]
    fn started_server_answers_ping_on_its_loopback_port() {
        let server = RedisServer::start().unwrap();
        assert_ne!(server.port(), 0);
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        assert_eq!(
            server.addr().to_string(),
            format!("127.0.0.1:{}", server.port())
        );
        assert_eq!(run(&server, &[b"PING"]), b"+PONG\r\n");
    }

    #[test]
    fn server_keeps_its_files_in_its_own_temp_dir_with_nothing_persisted() {
        let server = RedisServer::start().unwrap();
        assert!(server.dir().join(LOG_FILE).is_file());
        assert!(
            server.log_tail().contains(READY_MARKER),
            "{}",
            server.log_tail()
        );
        assert_eq!(
            run(&server, &[b"CONFIG", b"GET", b"save"]),
            b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            run(&server, &[b"CONFIG", b"GET", b"appendonly"]),
            b"*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        let dir = run(&server, &[b"CONFIG", b"GET", b"dir"]);
        let dir = String::from_utf8_lossy(&dir).into_owned();
        let canonical = server.dir().canonicalize().unwrap();
        assert!(dir.contains(canonical.to_str().unwrap()), "{dir}");
    }

    #[test]
    fn reply_len_waits_for_a_whole_reply() {
        assert_eq!(frame_len(b"+PONG\r\n"), Some(7));
        assert_eq!(frame_len(b"$-1\r\n"), Some(5));
        assert_eq!(frame_len(b"$3\r\nab"), None);
        assert_eq!(frame_len(b"$3\r\nabc\r\n"), Some(9));
        assert_eq!(frame_len(b"+PON"), None);
        assert_eq!(frame_len(b"*-1\r\n"), Some(5));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n"), None);
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n:1\r\nextra"), Some(15));
    }

    #[test]
    fn two_servers_get_different_ports_and_dirs() {
        let a = RedisServer::start().unwrap();
        let b = RedisServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir(), b.dir());
    }

    #[test]
    fn builder_args_reach_the_server() {
        let server = RedisServer::builder()
            .arg("--requirepass")
            .arg("s3cret")
            .start()
            .unwrap();
        assert!(run(&server, &[b"PING"]).starts_with(b"-NOAUTH"));
    }

    #[test]
    fn bad_argument_fails_fast_with_the_log_tail() {
        let started = Instant::now();
        let err = RedisServer::builder()
            .arg("--no-such-option")
            .arg("1")
            .start()
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("did not start"), "{message}");
        assert!(message.contains("no-such-option"), "{message}");
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn server_that_cannot_bind_its_port_is_reported_as_port_taken() {
        let holder = RedisServer::start().unwrap();
        let mut server = RedisServer::start().unwrap();
        server.stop().unwrap();
        server.port = holder.port();
        match server.spawn_and_wait() {
            Err(SpawnError::PortTaken(e)) => {
                let message = format!("{e:#}");
                assert!(message.contains("Address already in use"), "{message}");
            }
            Err(SpawnError::Other(e)) => panic!("expected PortTaken, got {e:#}"),
            Ok(()) => panic!("two servers bound one port"),
        }
        assert!(!server.is_running());
    }

    #[test]
    fn drop_kills_and_reaps_the_process() {
        let mut server = RedisServer::start().unwrap();
        let pid = server.child.as_ref().unwrap().id();
        let addr = server.addr();
        assert!(server.is_running());
        drop(server);
        // A reaped process has no /proc entry (a zombie would keep one).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(refuses_connections(addr));
    }

    #[test]
    fn stop_frees_the_port_and_restart_reuses_port_and_dir() {
        let mut server = RedisServer::start().unwrap();
        let (port, dir) = (server.port(), server.dir().to_path_buf());
        server.stop().unwrap();
        assert!(!server.is_running());
        assert!(refuses_connections(server.addr()));
        server.stop().unwrap();
        server.restart().unwrap();
        assert!(server.is_running());
        assert_eq!((server.port(), server.dir()), (port, dir.as_path()));
        assert_eq!(run(&server, &[b"PING"]), b"+PONG\r\n");
    }

    #[test]
    fn restart_keeps_data_when_persistence_is_enabled() {
        let mut server = RedisServer::builder()
            .args(["--appendonly", "yes"])
            .start()
            .unwrap();
        assert_eq!(run(&server, &[b"SET", b"k", b"v 1"]), b"+OK\r\n");
        server.restart().unwrap();
        assert_eq!(run(&server, &[b"GET", b"k"]), b"$3\r\nv 1\r\n");
    }

    #[test]
    fn restart_without_persistence_starts_empty() {
        let mut server = RedisServer::start().unwrap();
        assert_eq!(run(&server, &[b"SET", b"k", b"v"]), b"+OK\r\n");
        server.restart().unwrap();
        assert_eq!(run(&server, &[b"GET", b"k"]), b"$-1\r\n");
    }

    #[test]
    fn kill_stops_the_server_at_once() {
        let mut server = RedisServer::start().unwrap();
        server.kill().unwrap();
        assert!(!server.is_running());
        assert!(refuses_connections(server.addr()));
    }

    #[test]
    fn missing_program_is_not_found_on_path() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(find_program("redis-server", empty.path().as_os_str()), None);
        let not_executable = empty.path().join("redis-server");
        fs::write(&not_executable, "").unwrap();
        assert_eq!(find_program("redis-server", empty.path().as_os_str()), None);
    }

    #[test]
    fn missing_redis_server_error_says_to_run_setup() {
        let message = find_redis_server_in(OsStr::new(""))
            .unwrap_err()
            .to_string();
        assert!(message.contains("scripts/setup.sh"), "{message}");
    }

    #[test]
    fn a_refusing_port_refuses_and_cannot_be_taken_while_held() {
        let refusing = RefusingPort::bind().unwrap();
        for _ in 0..3 {
            let error = TcpStream::connect(refusing.addr()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        }
        let taken = TcpListener::bind(refusing.addr()).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
    }
}
