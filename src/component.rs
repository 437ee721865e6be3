//! WIT bindings: the exported `store` resource, and the single place where this crate's
//! errors become the WIT `error` variant.

use std::cell::RefCell;

use crate::config::{StoreOptions, StoreSettings};
use crate::store::{ListOptions, ListingMode, Store, Task, TimeToLive, TtlPolicy, UpdateOptions};
use crate::wasi_tcp::WasiConnector;
use crate::{ErrorKind, TaskError};

/// What the store connects with: plain TCP, or TLS over it when built with `tls`.
#[cfg(feature = "tls")]
type StoreConnector = crate::tls::MaybeTlsConnector<WasiConnector>;
#[cfg(not(feature = "tls"))]
type StoreConnector = WasiConnector;

// The world's WASI imports are the `wasi` crate's bindings, which the code calls (a second,
// generated copy would be dead weight); only the exported interface is generated here.
wit_bindgen::generate!({
    path: "wit",
    world: "redis-task-store",
    with: {
        "wasi:sockets/network@0.2.12": wasi::sockets::network,
        "wasi:sockets/instance-network@0.2.12": wasi::sockets::instance_network,
        "wasi:sockets/tcp-create-socket@0.2.12": wasi::sockets::tcp_create_socket,
        "wasi:sockets/tcp@0.2.12": wasi::sockets::tcp,
        "wasi:sockets/ip-name-lookup@0.2.12": wasi::sockets::ip_name_lookup,
        "wasi:io/error@0.2.12": wasi::io::error,
        "wasi:io/poll@0.2.12": wasi::io::poll,
        "wasi:io/streams@0.2.12": wasi::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": wasi::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": wasi::clocks::wall_clock,
        "wasi:random/insecure-seed@0.2.12": wasi::random::insecure_seed,
        "wasi:random/random@0.2.12": wasi::random::random,
        "wasi:cli/environment@0.2.12": wasi::cli::environment,
        "wasi:cli/exit@0.2.12": wasi::cli::exit,
        "wasi:cli/stdin@0.2.12": wasi::cli::stdin,
        "wasi:cli/stdout@0.2.12": wasi::cli::stdout,
        "wasi:cli/stderr@0.2.12": wasi::cli::stderr,
        "wasi:cli/terminal-input@0.2.12": wasi::cli::terminal_input,
        "wasi:cli/terminal-output@0.2.12": wasi::cli::terminal_output,
        "wasi:cli/terminal-stdin@0.2.12": wasi::cli::terminal_stdin,
        "wasi:cli/terminal-stdout@0.2.12": wasi::cli::terminal_stdout,
        "wasi:cli/terminal-stderr@0.2.12": wasi::cli::terminal_stderr,
    },
});

use exports::taskstore::storage::task_storage::{self as wit, Guest, GuestStore};

struct Component;

impl Guest for Component {
    type Store = StoreResource;
}

/// The WIT resource: calls take `&self`, and are sequential within one instance.
struct StoreResource(RefCell<Store<StoreConnector>>);

impl GuestStore for StoreResource {
    fn open(options: wit::Options) -> Result<wit::Store, wit::Error> {
        let listing = options.listing;
        let options = StoreOptions {
            url: options.url,
            key_prefix: options.key_prefix,
            default_ttl_seconds: options.default_ttl_seconds,
            timeout_ms: options.timeout_ms,
            max_document_bytes: options.max_document_bytes,
            tls_ca_certificates: options.tls_ca_certificates,
            danger_accept_invalid_certificates: options
                .danger_accept_invalid_certificates
                .unwrap_or(false),
        };
        let settings =
            StoreSettings::from_options(&options).map_err(|err| to_wit(TaskError::from(err)))?;
        let connector = connector_for(&settings).map_err(to_wit)?;
        let mut store = Store::open_with_settings(settings, connector).map_err(to_wit)?;
        store.set_listing_mode(match listing {
            None | Some(wit::ListingMode::Scan) => ListingMode::Scan,
            Some(wit::ListingMode::Index) => ListingMode::Index,
        });
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

    fn create(
        &self,
        id: String,
        document: String,
        ttl_seconds: Option<u64>,
    ) -> Result<bool, wit::Error> {
        self.0
            .borrow_mut()
            .create(&id, &document, ttl_seconds)
            .map_err(to_wit)
    }

    fn update(
        &self,
        id: String,
        patch: String,
        options: wit::UpdateOptions,
    ) -> Result<Option<String>, wit::Error> {
        let options = UpdateOptions {
            expect_status: options.expect_status,
            ttl: match options.ttl {
                None | Some(wit::TtlPolicy::Keep) => TtlPolicy::Keep,
                Some(wit::TtlPolicy::Set(seconds)) => TtlPolicy::Set(seconds),
            },
        };
        self.0
            .borrow_mut()
            .update(&id, &patch, &options)
            .map_err(to_wit)
    }

    fn expire(&self, id: String, ttl_seconds: u64) -> Result<bool, wit::Error> {
        self.0.borrow_mut().expire(&id, ttl_seconds).map_err(to_wit)
    }

    fn list(&self, options: wit::ListOptions) -> Result<wit::Page, wit::Error> {
        let options = ListOptions {
            status: options.status,
            limit: options.limit,
            cursor: options.cursor,
        };
        let page = self.0.borrow_mut().list(&options).map_err(to_wit)?;
        Ok(wit::Page {
            tasks: page.tasks.into_iter().map(to_wit_task).collect(),
            cursor: page.cursor,
        })
    }

    fn get_many(&self, ids: Vec<String>) -> Result<Vec<Option<String>>, wit::Error> {
        self.0.borrow_mut().get_many(&ids).map_err(to_wit)
    }

    fn set_many(
        &self,
        tasks: Vec<wit::Task>,
        ttl_seconds: Option<u64>,
    ) -> Result<Vec<Result<(), wit::Error>>, wit::Error> {
        let tasks: Vec<Task> = tasks
            .into_iter()
            .map(|task| Task {
                id: task.id,
                document: task.document,
            })
            .collect();
        let results = self
            .0
            .borrow_mut()
            .set_many(&tasks, ttl_seconds)
            .map_err(to_wit)?;
        Ok(results
            .into_iter()
            .map(|result| result.map_err(to_wit))
            .collect())
    }

    fn delete_many(&self, ids: Vec<String>) -> Result<Vec<bool>, wit::Error> {
        self.0.borrow_mut().delete_many(&ids).map_err(to_wit)
    }

    fn exists(&self, id: String) -> Result<bool, wit::Error> {
        self.0.borrow_mut().exists(&id).map_err(to_wit)
    }

    fn ping(&self) -> Result<(), wit::Error> {
        self.0.borrow_mut().ping().map_err(to_wit)
    }

    fn reindex(
        &self,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<wit::ReindexPage, wit::Error> {
        let page = self.0.borrow_mut().reindex(cursor, limit).map_err(to_wit)?;
        Ok(wit::ReindexPage {
            visited: page.visited,
            indexed: page.indexed,
            cursor: page.cursor,
        })
    }
}

#[cfg(feature = "tls")]
fn connector_for(settings: &StoreSettings) -> Result<StoreConnector, TaskError> {
    Ok(crate::tls::MaybeTlsConnector::new(
        WasiConnector,
        settings.tls.as_ref(),
    )?)
}

#[cfg(not(feature = "tls"))]
fn connector_for(settings: &StoreSettings) -> Result<StoreConnector, TaskError> {
    if settings.tls.is_some() {
        return Err(TaskError::invalid_input(
            "rediss:// (TLS) needs the TLS build of the component (taskstore-tls.wasm, \
             built with the `tls` feature); this build speaks plaintext redis:// only",
        ));
    }
    Ok(WasiConnector)
}

fn to_wit_task(task: Task) -> wit::Task {
    wit::Task {
        id: task.id,
        document: task.document,
    }
}

/// The one mapping of the shared error model onto the WIT variant, case for case.
fn to_wit(err: TaskError) -> wit::Error {
    let kind = err.kind();
    let message = err.into_message();
    match kind {
        ErrorKind::Connection => wit::Error::Connection(message),
        ErrorKind::Timeout => wit::Error::Timeout(message),
        ErrorKind::Authentication => wit::Error::Authentication(message),
        ErrorKind::Protocol => wit::Error::Protocol(message),
        ErrorKind::Server => wit::Error::Server(message),
        ErrorKind::InvalidInput => wit::Error::InvalidInput(message),
        ErrorKind::CorruptData => wit::Error::CorruptData(message),
        ErrorKind::Conflict => wit::Error::Conflict(message),
        ErrorKind::Contended => wit::Error::Contended(message),
        // The component never makes a `host` error (only an embedding can); should one
        // arise, `other` is the WIT's case for a failure outside the named ones.
        ErrorKind::Other | ErrorKind::Host => wit::Error::Other(message),
    }
}

export!(Component);
