//! WIT bindings: the exported `store` resource, and the single place where this crate's
//! errors become the WIT `error` variant.

use std::cell::RefCell;

use crate::client::ClientError;
use crate::config::StoreOptions;
use crate::store::{StoreError, TaskStore, TimeToLive};
use crate::wasi_tcp::WasiConnector;

wit_bindgen::generate!({
    path: "wit",
    world: "redis-task-store",
});

use exports::taskstore::storage::task_storage::{self as wit, Guest, GuestStore};

struct Component;

impl Guest for Component {
    type Store = StoreResource;
}

/// The WIT resource: calls take `&self`, and are sequential within one instance.
struct StoreResource(RefCell<TaskStore<WasiConnector>>);

impl GuestStore for StoreResource {
    fn open(options: wit::Options) -> Result<wit::Store, wit::Error> {
        let options = StoreOptions {
            url: options.url,
            key_prefix: options.key_prefix,
            default_ttl_seconds: options.default_ttl_seconds,
            timeout_ms: options.timeout_ms,
            max_document_bytes: options.max_document_bytes,
        };
        let store = TaskStore::open(&options, WasiConnector).map_err(to_wit)?;
        Ok(wit::Store::new(StoreResource(RefCell::new(store))))
    }

    fn get(&self, id: String) -> Result<Option<String>, wit::Error> {
        self.0.borrow_mut().get(&id).map_err(to_wit)
    }

    fn set(
        &self,
        id: String,
        document: String,
        ttl_seconds: Option<u64>,
    ) -> Result<(), wit::Error> {
        self.0
            .borrow_mut()
            .set(&id, &document, ttl_seconds)
            .map_err(to_wit)
    }

    fn delete(&self, id: String) -> Result<bool, wit::Error> {
        self.0.borrow_mut().delete(&id).map_err(to_wit)
    }

    fn ttl(&self, id: String) -> Result<Option<wit::TimeToLive>, wit::Error> {
        let ttl = self.0.borrow_mut().ttl(&id).map_err(to_wit)?;
        Ok(ttl.map(|ttl| match ttl {
            TimeToLive::ExpiresIn(seconds) => wit::TimeToLive::ExpiresIn(seconds),
            TimeToLive::Persistent => wit::TimeToLive::Persistent,
        }))
    }

    fn exists(&self, id: String) -> Result<bool, wit::Error> {
        self.0.borrow_mut().exists(&id).map_err(to_wit)
    }
}

fn to_wit(err: StoreError) -> wit::Error {
    match err {
        StoreError::InvalidInput(message) => wit::Error::InvalidInput(message),
        StoreError::CorruptData(message) => wit::Error::CorruptData(message),
        StoreError::Client(ClientError::Connection(message)) => wit::Error::Connection(message),
        StoreError::Client(ClientError::Timeout(message)) => wit::Error::Timeout(message),
        StoreError::Client(ClientError::Authentication(message)) => {
            wit::Error::Authentication(message)
        }
        StoreError::Client(ClientError::Protocol(message)) => wit::Error::Protocol(message),
        StoreError::Client(ClientError::Server(message)) => wit::Error::Server(message),
        StoreError::Conflict(message) | StoreError::Contended(message) => {
            wit::Error::Other(message)
        }
    }
}

export!(Component);
