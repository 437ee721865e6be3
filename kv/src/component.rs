//! WIT glue: both `wasi:keyvalue` versions onto `taskstore::kv`, one Redis connection per
//! instance, configuration from `wasi:config/store`.
//!
//! Errors: a bucket identifier `buckets` does not allow is `no-such-store`; every other
//! failure (configuration, connection, Redis, bad input) is `other` with one line saying
//! what failed, the password never in it.

use std::cell::RefCell;

use taskstore::kv::{BucketMap, CasOutcome, DraftCursors, KeyPage, KvConfig, KvStore};
use taskstore::tls::MaybeTlsConnector;
use taskstore::wasi_tcp::WasiConnector;
use taskstore::TaskError;

// The vendored upstream packages are read where they live (never copied); `wasi:config` is
// the function's vendored copy.
wit_bindgen::generate!({
    path: [
        "../function/wit/deps/config",
        "../wit/deps/keyvalue-0.2.0-draft2",
        "../wit/deps/keyvalue-0.2.0-draft",
        "wit",
    ],
    world: "taskstore:keyvalue/redis-keyvalue@0.1.0",
    generate_all,
});

use self::wasi::config::store as config;
use exports::wasi::keyvalue0_2_0_draft as draft;
use exports::wasi::keyvalue0_2_0_draft2 as draft2;

type Connector = MaybeTlsConnector<WasiConnector>;

/// The instance's connection, opened by the first `open` that succeeds and shared by every
/// bucket (calls into one instance are sequential).
struct Connection {
    store: KvStore<Connector>,
    buckets: BucketMap,
    secrets: Vec<String>,
    draft_cursors: DraftCursors,
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Why a call failed: the bucket is not configured, or anything else (as one line).
enum Failure {
    NoSuchStore,
    Other(String),
}

impl From<Failure> for draft2::store::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NoSuchStore => draft2::store::Error::NoSuchStore,
            Failure::Other(message) => draft2::store::Error::Other(message),
        }
    }
}

impl From<Failure> for draft::store::Error {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NoSuchStore => draft::store::Error::NoSuchStore,
            Failure::Other(message) => draft::store::Error::Other(message),
        }
    }
}

fn load_config() -> Result<KvConfig, TaskError> {
    KvConfig::load(|key| {
        config::get(key).map_err(|err| match err {
            config::Error::Upstream(message) | config::Error::Io(message) => {
                format!("wasi:config cannot read {key}: {message}")
            }
        })
    })
}

fn connect(config: &KvConfig) -> Result<KvStore<Connector>, TaskError> {
    let connector = MaybeTlsConnector::new(WasiConnector, config.settings.tls.as_ref())?;
    KvStore::open(config.settings.clone(), connector)
}

/// Opens the connection if there is none yet.
fn ensure_connection(slot: &mut Option<Connection>) -> Result<&mut Connection, Failure> {
    if slot.is_none() {
        let config = load_config().map_err(|err| Failure::Other(err.to_string()))?;
        let secrets = config.secrets();
        let store =
            connect(&config).map_err(|err| Failure::Other(err.redact(&secrets).to_string()))?;
        *slot = Some(Connection {
            store,
            buckets: config.buckets,
            secrets,
            draft_cursors: DraftCursors::default(),
        });
    }
    Ok(slot.as_mut().expect("just set"))
}

/// Runs `op` on the instance's connection.
fn with_connection<T>(
    op: impl FnOnce(&mut Connection) -> Result<T, TaskError>,
) -> Result<T, Failure> {
    CONNECTION.with(|slot| {
        let mut slot = slot.borrow_mut();
        let connection = ensure_connection(&mut slot)?;
        op(connection).map_err(|err| Failure::Other(err.redact(&connection.secrets).to_string()))
    })
}

/// The prefix of bucket `identifier`, connecting first (so a wrong URL or password shows at
/// `open`).
fn open_bucket(identifier: &str) -> Result<Bucket, Failure> {
    CONNECTION.with(|slot| {
        let mut slot = slot.borrow_mut();
        let connection = ensure_connection(&mut slot)?;
        match connection.buckets.prefix(identifier) {
            Some(prefix) => Ok(Bucket { prefix }),
            None => Err(Failure::NoSuchStore),
        }
    })
}

/// A bucket of either version: its key prefix.
struct Bucket {
    prefix: Vec<u8>,
}

/// A `@0.2.0-draft2` CAS handle: the key and the value read when it was made.
struct Cas {
    prefix: Vec<u8>,
    key: String,
    current: Option<Vec<u8>>,
}

/// What `get-many` returns: each key with its value, `None` where absent.
type KeyValues = Vec<Option<(String, Vec<u8>)>>;

fn get_many(prefix: &[u8], keys: Vec<String>) -> Result<KeyValues, Failure> {
    let values = with_connection(|c| c.store.get_many(prefix, &keys))?;
    Ok(keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| value.map(|value| (key, value)))
        .collect())
}

struct Component;

impl draft2::store::Guest for Component {
    type Bucket = Bucket;

    fn open(identifier: String) -> Result<draft2::store::Bucket, draft2::store::Error> {
        Ok(draft2::store::Bucket::new(open_bucket(&identifier)?))
    }
}

impl draft2::store::GuestBucket for Bucket {
    fn get(&self, key: String) -> Result<Option<Vec<u8>>, draft2::store::Error> {
        Ok(with_connection(|c| c.store.get(&self.prefix, &key))?)
    }

    fn set(&self, key: String, value: Vec<u8>) -> Result<(), draft2::store::Error> {
        Ok(with_connection(|c| {
            c.store.set(&self.prefix, &key, &value)
        })?)
    }

    fn delete(&self, key: String) -> Result<(), draft2::store::Error> {
        Ok(with_connection(|c| c.store.delete(&self.prefix, &key))?)
    }

    fn exists(&self, key: String) -> Result<bool, draft2::store::Error> {
        Ok(with_connection(|c| c.store.exists(&self.prefix, &key))?)
    }

    fn list_keys(
        &self,
        cursor: Option<String>,
    ) -> Result<draft2::store::KeyResponse, draft2::store::Error> {
        let KeyPage { keys, cursor } =
            with_connection(|c| c.store.list_keys(&self.prefix, cursor.as_deref()))?;
        Ok(draft2::store::KeyResponse { keys, cursor })
    }
}

impl draft2::atomics::Guest for Component {
    type Cas = Cas;

    fn increment(
        bucket: draft2::store::BucketBorrow<'_>,
        key: String,
        delta: i64,
    ) -> Result<i64, draft2::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.increment(&bucket.prefix, &key, delta)
        })?)
    }

    fn swap(cas: draft2::atomics::Cas, value: Vec<u8>) -> Result<(), draft2::atomics::CasError> {
        let cas: Cas = cas.into_inner();
        let outcome = with_connection(|c| {
            c.store
                .swap(&cas.prefix, &cas.key, cas.current.as_deref(), &value)
        })
        .map_err(|failure| draft2::atomics::CasError::StoreError(failure.into()))?;
        match outcome {
            CasOutcome::Swapped => Ok(()),
            // The spec: a failed CAS returns a handle updated to the latest value.
            CasOutcome::Failed(current) => Err(draft2::atomics::CasError::CasFailed(
                draft2::atomics::Cas::new(Cas {
                    prefix: cas.prefix,
                    key: cas.key,
                    current,
                }),
            )),
        }
    }
}

impl draft2::atomics::GuestCas for Cas {
    fn new(
        bucket: draft2::store::BucketBorrow<'_>,
        key: String,
    ) -> Result<draft2::atomics::Cas, draft2::store::Error> {
        let bucket: &Bucket = bucket.get();
        let current = with_connection(|c| c.store.get(&bucket.prefix, &key))?;
        Ok(draft2::atomics::Cas::new(Cas {
            prefix: bucket.prefix.clone(),
            key,
            current,
        }))
    }

    fn current(&self) -> Result<Option<Vec<u8>>, draft2::store::Error> {
        Ok(self.current.clone())
    }
}

impl draft2::batch::Guest for Component {
    fn get_many(
        bucket: draft2::store::BucketBorrow<'_>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, draft2::store::Error> {
        Ok(get_many(&bucket.get::<Bucket>().prefix, keys)?)
    }

    fn set_many(
        bucket: draft2::store::BucketBorrow<'_>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), draft2::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.set_many(&bucket.prefix, &key_values)
        })?)
    }

    fn delete_many(
        bucket: draft2::store::BucketBorrow<'_>,
        keys: Vec<String>,
    ) -> Result<(), draft2::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.delete_many(&bucket.prefix, &keys)
        })?)
    }
}

impl draft::store::Guest for Component {
    type Bucket = Bucket;

    fn open(identifier: String) -> Result<draft::store::Bucket, draft::store::Error> {
        Ok(draft::store::Bucket::new(open_bucket(&identifier)?))
    }
}

impl draft::store::GuestBucket for Bucket {
    fn get(&self, key: String) -> Result<Option<Vec<u8>>, draft::store::Error> {
        Ok(with_connection(|c| c.store.get(&self.prefix, &key))?)
    }

    fn set(&self, key: String, value: Vec<u8>) -> Result<(), draft::store::Error> {
        Ok(with_connection(|c| {
            c.store.set(&self.prefix, &key, &value)
        })?)
    }

    fn delete(&self, key: String) -> Result<(), draft::store::Error> {
        Ok(with_connection(|c| c.store.delete(&self.prefix, &key))?)
    }

    fn exists(&self, key: String) -> Result<bool, draft::store::Error> {
        Ok(with_connection(|c| c.store.exists(&self.prefix, &key))?)
    }

    /// The draft's `u64` cursors: see [`DraftCursors`].
    fn list_keys(
        &self,
        cursor: Option<u64>,
    ) -> Result<draft::store::KeyResponse, draft::store::Error> {
        let (keys, cursor) = with_connection(|c| {
            let cluster = c.store.is_cluster();
            let text = c.draft_cursors.from_draft(cursor, cluster)?;
            let page = c.store.list_keys(&self.prefix, text.as_deref())?;
            Ok((page.keys, c.draft_cursors.to_draft(page.cursor, cluster)))
        })?;
        Ok(draft::store::KeyResponse { keys, cursor })
    }
}

impl draft::atomics::Guest for Component {
    fn increment(
        bucket: draft::store::BucketBorrow<'_>,
        key: String,
        delta: u64,
    ) -> Result<u64, draft::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.increment_unsigned(&bucket.prefix, &key, delta)
        })?)
    }
}

impl draft::batch::Guest for Component {
    fn get_many(
        bucket: draft::store::BucketBorrow<'_>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, draft::store::Error> {
        Ok(get_many(&bucket.get::<Bucket>().prefix, keys)?)
    }

    fn set_many(
        bucket: draft::store::BucketBorrow<'_>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), draft::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.set_many(&bucket.prefix, &key_values)
        })?)
    }

    fn delete_many(
        bucket: draft::store::BucketBorrow<'_>,
        keys: Vec<String>,
    ) -> Result<(), draft::store::Error> {
        let bucket: &Bucket = bucket.get();
        Ok(with_connection(|c| {
            c.store.delete_many(&bucket.prefix, &keys)
        })?)
    }
}

export!(Component);
