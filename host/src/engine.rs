//! The engine every instance runs on, and the compiled component: the engine
//! configuration, the epoch ticker that enforces call deadlines, compilation, the embedded
//! components, and the compiled component kept on disk ([`ComponentCache`]).

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// The component built from this workspace's root package (`wasm32-wasip2`, release),
/// embedded at compile time by `build.rs`. It speaks plaintext `redis://` to one server
/// only: it refuses `rediss://`, cluster and Sentinel URLs, naming [`TLS_COMPONENT`].
pub static COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_COMPONENT"));

/// The full build of the same component, with the `tls` and `topologies` features:
/// `rediss://` (rustls in the guest), Redis Cluster and Redis Sentinel. Several times larger
/// than [`COMPONENT`], so it is compiled only when a store opens a URL that needs it; see
/// [`RuntimeBuilder::tls`](crate::RuntimeBuilder::tls).
pub static TLS_COMPONENT: &[u8] = include_bytes!(env!("TASKSTORE_TLS_COMPONENT"));

/// How often the engine's epoch advances; the granularity of every call deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Environment variable naming the cache directory; set but empty, it turns the cache off.
pub const CACHE_DIR_ENV: &str = "TASKSTORE_CACHE_DIR";

const MAGIC: &[u8; 16] = b"taskstore-cwasm\x01";
const HEADER_BYTES: usize = 16 + 32 + 32 + 8;
/// A cache file larger than this is not read (the component compiles to ~1 MiB).
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A directory of precompiled components.
///
/// The compiled component is kept on disk so that a short-lived process (the CLI) loads its
/// machine code in about a millisecond instead of compiling it for tens of milliseconds.
///
/// # Key
/// One file per key: the SHA-256 of the engine's
/// [`precompile_compatibility_hash`](wasmtime::Engine::precompile_compatibility_hash)
/// (target, CPU features, compiler settings, wasm features and the wasmtime version, which
/// wasmtime hashes as its `module_version`), this crate's version and the SHA-256 of the
/// component's bytes. Another wasmtime, engine configuration, CPU or component gets another
/// file; files of other versions are left alone (delete the directory to reclaim them).
///
/// # Why a file is trusted
/// [`Component::deserialize`] trusts its input: bytes that are not what wasmtime wrote for
/// this engine are undefined behaviour, not an error. So a file is deserialized only after
/// - the directory and the file are owned by this user and writable by no one else, so no
///   other user can have planted it;
/// - its header names this file's key, so it is not another engine's or component's;
/// - the SHA-256 of its payload matches the header, so it is not truncated or corrupt.
///
/// Anything else (no file, a short, corrupt, stale or foreign one, one wasmtime refuses) is
/// a miss: the component is compiled and the file replaced. A file is written to a
/// temporary file in the same directory and renamed into place, so a reader never sees half
/// of one. It is not synced: after a crash a torn file fails its checksum and is rewritten.
/// No failure of the cache is an error of the load; only a component that does not compile
/// is.
///
/// # Format
/// `MAGIC` (16 bytes), key (32), SHA-256 of the payload (32), payload length (u64, little
/// endian), then the payload: what [`Component::serialize`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentCache {
    dir: PathBuf,
}

/// What [`ComponentCache::load_or_compile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache was used: the component was compiled.
    Disabled,
    /// The component was loaded from the cache.
    Hit,
    /// The component was compiled, because of `reason`; `write_error` says why the result
    /// could not be stored, if it could not.
    Miss {
        reason: MissReason,
        write_error: Option<String>,
    },
}

/// Why a cache file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// There is no file for this key.
    Absent,
    /// The directory or the file could be written by someone else; nothing there is read,
    /// nor written.
    Untrusted(String),
    /// The file is truncated, corrupt, or names another key.
    Invalid(String),
    /// The file checked out, but wasmtime refused it.
    Refused(String),
    /// The file could not be read.
    Unreadable(String),
}

impl ComponentCache {
    /// A cache in `dir`, created (mode 0700) when the first file is stored.
    pub fn new(dir: impl Into<PathBuf>) -> ComponentCache {
        ComponentCache { dir: dir.into() }
    }

    /// The cache the CLI uses: `$TASKSTORE_CACHE_DIR` (set but empty: none), else
    /// `$XDG_CACHE_HOME/taskstore`, else `$HOME/.cache/taskstore`; `None` if none applies.
    pub fn from_env() -> Option<ComponentCache> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<ComponentCache> {
        if let Some(dir) = var(CACHE_DIR_ENV) {
            return (!dir.is_empty()).then(|| ComponentCache::new(dir));
        }
        // The XDG spec says to ignore a relative XDG_CACHE_HOME.
        if let Some(xdg) = var("XDG_CACHE_HOME").map(PathBuf::from) {
            if xdg.is_absolute() {
                return Some(ComponentCache::new(xdg.join("taskstore")));
            }
        }
        let home = var("HOME").map(PathBuf::from)?;
        home.is_absolute()
            .then(|| ComponentCache::new(home.join(".cache").join("taskstore")))
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `component` compiled by `engine`.
    pub fn path_for(&self, engine: &Engine, component: &[u8]) -> PathBuf {
        self.file_path(&cache_key(engine, component))
    }

    fn file_path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("component-{}.cwasm", hex(&key[..16])))
    }

    /// `component` compiled by `engine`: from the cache if it holds a file that checks
    /// out, else compiled and stored.
    ///
    /// # Errors
    /// Only if the component does not compile; every failure of the cache is a
    /// [`CacheOutcome::Miss`].
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        component: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let key = cache_key(engine, component);
        let path = self.file_path(&key);
        let reason = match self.read_verified(&path, &key) {
            // SAFETY: `payload` is what `Component::serialize` wrote for an engine with the
            // same compatibility hash and for these component bytes (key and checksum
            // verified above), in a file only this user can have written. It was read into
            // memory, so it cannot change between the checks and this call.
            Ok(file) => match unsafe { Component::deserialize(engine, &file[HEADER_BYTES..]) } {
                Ok(loaded) => return Ok((loaded, CacheOutcome::Hit)),
                Err(e) => MissReason::Refused(one_line(&to_anyhow(e))),
            },
            Err(reason) => reason,
        };
        let compiled = compile(engine, component)?;
        let write_error = match &reason {
            MissReason::Untrusted(_) => Some("the cache directory is not private".to_owned()),
            _ => self.store(&path, &key, &compiled).err(),
        };
        Ok((
            compiled,
            CacheOutcome::Miss {
                reason,
                write_error,
            },
        ))
    }

    /// The whole file at `path`, once it checked out (see the module docs); the payload
    /// starts at `HEADER_BYTES`.
    fn read_verified(&self, path: &Path, key: &[u8; 32]) -> Result<Vec<u8>, MissReason> {
        match fs::metadata(&self.dir) {
            Ok(meta) => {
                check_private(&meta, "the cache directory").map_err(MissReason::Untrusted)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MissReason::Absent),
            Err(e) => return Err(MissReason::Unreadable(e.to_string())),
        }
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MissReason::Absent),
            Err(e) => return Err(MissReason::Unreadable(e.to_string())),
        };
        // The open file's own metadata: the path may have been replaced since.
        let meta = file
            .metadata()
            .map_err(|e| MissReason::Unreadable(e.to_string()))?;
        check_private(&meta, "the cache file").map_err(MissReason::Untrusted)?;
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return Err(MissReason::Invalid("not a cache file".to_owned()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&file)
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| MissReason::Unreadable(e.to_string()))?;
        verify(&bytes, key).map_err(MissReason::Invalid)?;
        Ok(bytes)
    }

    /// Writes `component` under `path` through a temporary file and a rename.
    fn store(&self, path: &Path, key: &[u8; 32], component: &Component) -> Result<(), String> {
        let payload = component.serialize().map_err(|e| {
            format!(
                "cannot serialize the component: {}",
                one_line(&to_anyhow(e))
            )
        })?;
        create_private_dir(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let meta = fs::metadata(&self.dir).map_err(|e| e.to_string())?;
        check_private(&meta, "the cache directory")?;
        let mut temp = tempfile::Builder::new()
            .prefix(".component-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(|e| format!("cannot create a file in {}: {e}", self.dir.display()))?;
        temp.write_all(&encode_header(key, &payload))
            .and_then(|()| temp.write_all(&payload))
            .map_err(|e| format!("cannot write {}: {e}", temp.path().display()))?;
        temp.persist(path)
            .map_err(|e| format!("cannot rename into {}: {}", path.display(), e.error))?;
        Ok(())
    }
}

/// The engine configuration every instance runs under. Code compiled under another
/// configuration (a precompiled component, say) must match it.
pub(crate) fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Without the concurrent call path every call is ~1 µs cheaper, and nothing here
    // uses component-model async.
    config.concurrency_support(false);
    // Guest code checks the epoch at function entries and loop heads, so a call that runs
    // past its deadline traps instead of holding the thread forever (~2k instructions per
    // call, unmeasurable in timings).
    config.epoch_interruption(true);
    config
}

/// A new engine under the configuration every instance runs under: the one
/// [`ComponentCache::load_or_compile`] must be given for its files to be the ones a
/// [`Runtime`](crate::Runtime) loads.
///
/// # Errors
/// wasmtime refuses the configuration on this machine.
pub fn new_engine() -> anyhow::Result<Engine> {
    Engine::new(&engine_config()).map_err(to_anyhow)
}

/// `component` compiled for `engine`, through `cache` when there is one.
///
/// # Errors
/// The component does not compile; never a failure of the cache.
pub(crate) fn load_component(
    engine: &Engine,
    component: &[u8],
    cache: Option<&ComponentCache>,
) -> anyhow::Result<(Component, CacheOutcome)> {
    match cache {
        Some(cache) => cache.load_or_compile(engine, component),
        None => Ok((compile(engine, component)?, CacheOutcome::Disabled)),
    }
}

/// Epoch ticks that cover `deadline`: rounded up, plus one because the tick in progress
/// may be about to end.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = deadline.as_nanos().div_ceil(tick) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// A thread that increments an engine's epoch every [`EPOCH_TICK`]; it ends when this is
/// dropped (with the last owner of the engine's instances: a runtime or a server).
pub(crate) struct EpochTicker {
    /// Dropping it disconnects the channel, which wakes and ends the thread.
    _stop: mpsc::Sender<()>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> anyhow::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("taskstore-epoch".into())
            // Nothing is ever sent: only a disconnect (or a message) ends the loop.
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker thread: {e}"))?;
        Ok(EpochTicker { _stop: stop })
    }
}

/// `wasmtime::Error` keeps its cause chain through the boxed form; `anyhow` is what the
/// constructors promise.
pub(crate) fn to_anyhow(error: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(error.into_boxed_dyn_error())
}

/// Compiles `component` in process.
pub(crate) fn compile(engine: &Engine, component: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, component)
        .map_err(|e| to_anyhow(e).context("cannot compile the component"))
}

/// The key of `component` compiled by `engine`; see the module docs.
fn cache_key(engine: &Engine, component: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(MAGIC);
    digest.update(env!("CARGO_PKG_VERSION").as_bytes());
    digest.update([0]);
    engine
        .precompile_compatibility_hash()
        .hash(&mut DigestHasher(&mut digest));
    digest.update(Sha256::digest(component));
    digest.finalize().into()
}

/// Feeds what a `Hash` impl writes into a SHA-256, for a key that is the same in every
/// process (std's `DefaultHasher` promises no such thing across Rust versions).
struct DigestHasher<'a>(&'a mut Sha256);

impl Hasher for DigestHasher<'_> {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Only the bytes written matter; the key is the digest, not this.
        0
    }
}

fn encode_header(key: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(key);
    header.extend_from_slice(&Sha256::digest(payload));
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header
}

/// Checks a whole cache file against `key`: magic, key, length and checksum.
fn verify(file: &[u8], key: &[u8; 32]) -> Result<(), String> {
    if file.len() < HEADER_BYTES {
        return Err(format!("{} bytes: shorter than the header", file.len()));
    }
    let (header, payload) = file.split_at(HEADER_BYTES);
    if &header[..16] != MAGIC {
        return Err("not a taskstore cache file".to_owned());
    }
    if &header[16..48] != key {
        return Err("written for another engine or component".to_owned());
    }
    let mut length = [0; 8];
    length.copy_from_slice(&header[80..88]);
    if u64::from_le_bytes(length) != payload.len() as u64 {
        return Err(format!(
            "truncated or extended: {} payload bytes, header says {}",
            payload.len(),
            u64::from_le_bytes(length)
        ));
    }
    if header[48..80] != Sha256::digest(payload)[..] {
        return Err("checksum mismatch".to_owned());
    }
    Ok(())
}

#[cfg(unix)]
fn check_private(meta: &fs::Metadata, what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!("{what} belongs to another user"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("{what} is writable by other users"));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_meta: &fs::Metadata, _what: &str) -> Result<(), String> {
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    /// The engine the runtime compiles with.
    fn engine() -> Engine {
        new_engine().unwrap()
    }

    /// An engine whose code the runtime's engine must not load: it counts fuel.
    fn other_engine() -> Engine {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.concurrency_support(false);
        config.consume_fuel(true);
        Engine::new(&config).unwrap()
    }

    /// A cache in a fresh private directory, filled once.
    fn filled() -> (tempfile::TempDir, ComponentCache, Engine, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path().join("cache"));
        let engine = engine();
        let (_, outcome) = cache.load_or_compile(&engine, COMPONENT).unwrap();
        assert_eq!(
            outcome,
            CacheOutcome::Miss {
                reason: MissReason::Absent,
                write_error: None
            }
        );
        let path = cache.path_for(&engine, COMPONENT);
        assert!(path.is_file());
        (dir, cache, engine, path)
    }

    fn reload(cache: &ComponentCache, engine: &Engine) -> CacheOutcome {
        cache.load_or_compile(engine, COMPONENT).unwrap().1
    }

    fn assert_invalid_then_rewritten(cache: &ComponentCache, engine: &Engine) {
        match reload(cache, engine) {
            CacheOutcome::Miss {
                reason: MissReason::Invalid(_),
                write_error: None,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(reload(cache, engine), CacheOutcome::Hit);
    }

    #[test]
    fn second_load_is_a_hit_and_the_component_works() {
        let (_dir, cache, engine, _) = filled();
        let (component, outcome) = cache.load_or_compile(&engine, COMPONENT).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        linker.define_unknown_imports_as_traps(&component).unwrap();
        linker.instantiate_pre(&component).unwrap();
    }

    #[test]
    fn truncated_file_is_recompiled_and_rewritten() {
        let (_dir, cache, engine, path) = filled();
        let bytes = fs::read(&path).unwrap();
        for length in [0, 10, HEADER_BYTES, bytes.len() - 1] {
            fs::write(&path, &bytes[..length]).unwrap();
            assert_invalid_then_rewritten(&cache, &engine);
        }
    }

    #[test]
    fn corrupt_payload_fails_the_checksum_and_is_rewritten() {
        let (_dir, cache, engine, path) = filled();
        let mut bytes = fs::read(&path).unwrap();
        let middle = HEADER_BYTES + (bytes.len() - HEADER_BYTES) / 2;
        bytes[middle] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match reload(&cache, &engine) {
            CacheOutcome::Miss {
                reason: MissReason::Invalid(why),
                ..
            } => assert!(why.contains("checksum"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reload(&cache, &engine), CacheOutcome::Hit);
    }

    #[test]
    fn garbage_and_foreign_files_are_rewritten() {
        let (_dir, cache, engine, path) = filled();
        fs::write(&path, vec![0xa5; 4096]).unwrap();
        assert_invalid_then_rewritten(&cache, &engine);
        // A valid file for another key (another component, say) under this file's name.
        let mut bytes = fs::read(&path).unwrap();
        bytes[16] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_invalid_then_rewritten(&cache, &engine);
    }

    #[test]
    fn stale_artifact_from_another_engine_is_refused_by_wasmtime_and_rewritten() {
        let (_dir, cache, engine, path) = filled();
        // A well-formed file whose payload another engine configuration compiled: only
        // wasmtime's own header check can tell, and it must fail cleanly.
        let payload = compile(&other_engine(), COMPONENT)
            .unwrap()
            .serialize()
            .unwrap();
        let key = cache_key(&engine, COMPONENT);
        let mut file = encode_header(&key, &payload);
        file.extend_from_slice(&payload);
        fs::write(&path, &file).unwrap();
        match reload(&cache, &engine) {
            CacheOutcome::Miss {
                reason: MissReason::Refused(_),
                write_error: None,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(reload(&cache, &engine), CacheOutcome::Hit);
    }

    #[test]
    fn another_engine_configuration_uses_another_file() {
        let cache = ComponentCache::new("/unused");
        assert_ne!(
            cache.path_for(&engine(), COMPONENT),
            cache.path_for(&other_engine(), COMPONENT)
        );
        assert_eq!(
            cache.path_for(&engine(), COMPONENT),
            cache.path_for(&engine(), COMPONENT)
        );
    }

    #[cfg(unix)]
    #[test]
    fn directory_writable_by_others_is_neither_read_nor_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let cache = ComponentCache::new(dir.path());
        for _ in 0..2 {
            match reload(&cache, &engine()) {
                CacheOutcome::Miss {
                    reason: MissReason::Untrusted(_),
                    write_error: Some(_),
                } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn file_writable_by_others_is_not_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, cache, engine, path) = filled();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            reload(&cache, &engine),
            CacheOutcome::Miss {
                reason: MissReason::Untrusted(_),
                ..
            }
        ));
    }

    #[test]
    fn unwritable_location_still_loads_the_component() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"").unwrap();
        // A directory inside a regular file cannot be created.
        let cache = ComponentCache::new(blocker.join("cache"));
        match reload(&cache, &engine()) {
            CacheOutcome::Miss {
                write_error: Some(_),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_component_that_does_not_compile_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ComponentCache::new(dir.path());
        let error = cache.load_or_compile(&engine(), b"not wasm").unwrap_err();
        assert!(format!("{error:#}").contains("cannot compile"), "{error:#}");
    }

    #[test]
    fn directory_comes_from_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let dir = |pairs| ComponentCache::from_vars(vars(pairs)).map(|c| c.dir);
        assert_eq!(
            dir(&[(CACHE_DIR_ENV, "/c"), ("HOME", "/h")]),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(dir(&[(CACHE_DIR_ENV, ""), ("HOME", "/h")]), None);
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            Some(PathBuf::from("/x/taskstore"))
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/taskstore"))
        );
        assert_eq!(dir(&[]), None);
    }

    #[test]
    fn deadline_ticks_round_up_and_add_one() {
        assert_eq!(deadline_ticks(Duration::ZERO), 1);
        assert_eq!(deadline_ticks(Duration::from_millis(10)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(11)), 3);
        assert_eq!(deadline_ticks(Duration::MAX), u64::MAX);
    }

    /// A core module exporting `run`, which returns at once.
    const RETURN_AT_ONCE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type 0: [] -> []
        0x03, 0x02, 0x01, 0x00, // func 0: type 0
        0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00, // export "run" = func 0
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // body: end
    ];

    /// The same, but `run` never returns: `loop br 0 end`.
    const SPIN_FOREVER: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, //
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, //
        0x03, 0x02, 0x01, 0x00, //
        0x07, 0x07, 0x01, 0x03, b'r', b'u', b'n', 0x00, 0x00, //
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop br 0 end
    ];

    /// Calls `run` of `module` in a store whose deadline is `ticks` epochs away from the
    /// call (compiling the module comes first: it may take ticks on a loaded machine).
    fn run(engine: &Engine, module: &[u8], ticks: u64) -> wasmtime::Result<()> {
        let mut store = wasmtime::Store::new(engine, ());
        store.epoch_deadline_trap();
        let module = wasmtime::Module::new(engine, module)?;
        let instance = wasmtime::Instance::new(&mut store, &module, &[])?;
        let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
        store.set_epoch_deadline(ticks);
        run.call(&mut store, ())
    }

    #[test]
    fn guest_code_that_never_returns_traps_at_its_deadline() {
        let engine = Engine::new(&engine_config()).unwrap();
        let _ticker = EpochTicker::start(&engine).unwrap();
        // Under a deadline it does not reach, the module runs (a second, not one 10 ms tick:
        // a thread of a loaded machine can be descheduled for longer).
        run(
            &engine,
            RETURN_AT_ONCE,
            deadline_ticks(Duration::from_secs(1)),
        )
        .unwrap();

        let started = std::time::Instant::now();
        let error = run(
            &engine,
            SPIN_FOREVER,
            deadline_ticks(Duration::from_millis(100)),
        )
        .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(
            error.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt),
            "{error:?}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
        // A bound, not a measurement: the loop was stopped, not left spinning.
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[test]
    fn epoch_stops_advancing_once_the_ticker_is_dropped() {
        let engine = Engine::new(&engine_config()).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        // Arm a deadline one tick away, let ticks pass, then call: even an empty function
        // traps if, and only if, the epoch moved meanwhile.
        let moved = |engine: &Engine| {
            let mut store = wasmtime::Store::new(engine, ());
            store.set_epoch_deadline(1);
            std::thread::sleep(EPOCH_TICK * 5);
            let module = wasmtime::Module::new(engine, RETURN_AT_ONCE).unwrap();
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let run = instance
                .get_typed_func::<(), ()>(&mut store, "run")
                .unwrap();
            run.call(&mut store, ()).is_err()
        };
        assert!(moved(&engine), "the epoch did not advance");
        drop(ticker);
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(!moved(&engine), "the epoch still advances");
    }
}
