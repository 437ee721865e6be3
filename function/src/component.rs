//! The component glue: `wasi:http/incoming-handler` export, the `task-storage` and
//! `wasi:config/store` imports, and the store kept for the life of the instance.

use std::cell::RefCell;
use std::io::Write as _;

use ::wasi::exports::http::incoming_handler::Guest;
use ::wasi::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use taskstore_model::{ErrorKind, TaskError};

use crate::error::{ApiError, Response};
use crate::request::{self, BodyError, Method, RequestHead};
use crate::service::{self, Environment, Instance};
use crate::settings::Settings;
use crate::storage::{ListQuery, Page, StoredTask, TaskStorage};

// The task-storage WIT is read from the repository's `wit/` (never copied); this crate's `wit/`
// holds the world and the vendored `wasi:config` it needs.
wit_bindgen::generate!({
    path: ["../wit", "wit"],
    world: "taskstore:research-api/research-api@0.1.0",
    with: {
        "taskstore:storage/task-storage@0.1.0": generate,
        "wasi:config/store@0.2.0-rc.1": generate,
    },
});

use self::taskstore::storage::task_storage as wit;
use self::wasi::config::store as config;

thread_local! {
    /// The open stores of this instance: a reused instance reuses its Redis connections.
    static INSTANCE: RefCell<Instance<RedisStorage>> = const { RefCell::new(Instance::new()) };
}

struct Function;

impl Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let head = request_head(&request);
        let mut env = WasiEnvironment { request };
        let response = INSTANCE.with(|instance| match instance.try_borrow_mut() {
            Ok(mut instance) => service::handle(&head, &mut env, &mut instance),
            // Calls into one instance are sequential, so this cannot happen; answer, don't trap.
            Err(_) => ApiError::internal("re-entrant request").into_response(),
        });
        send(response, response_out);
    }
}

::wasi::http::proxy::export!(Function);

fn request_head(request: &IncomingRequest) -> RequestHead {
    let method = match request.method() {
        WasiMethod::Get => Method::Get,
        WasiMethod::Post => Method::Post,
        WasiMethod::Patch => Method::Patch,
        WasiMethod::Delete => Method::Delete,
        WasiMethod::Head => Method::Other("HEAD".into()),
        WasiMethod::Put => Method::Other("PUT".into()),
        WasiMethod::Connect => Method::Other("CONNECT".into()),
        WasiMethod::Options => Method::Other("OPTIONS".into()),
        WasiMethod::Trace => Method::Other("TRACE".into()),
        WasiMethod::Other(other) => Method::Other(other),
    };
    let headers = request.headers().entries();
    RequestHead {
        method,
        path_with_query: request.path_with_query(),
        headers,
    }
}

/// Writes `response`. Failures past `ResponseOutparam::set` mean the client went away: there
/// is no one left to tell, so they are logged, never unwrapped.
fn send(response: Response, response_out: ResponseOutparam) {
    let entries: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone().into_bytes()))
        .collect();
    let headers = Fields::from_list(&entries).unwrap_or_else(|_| {
        log("research-api: a response header was refused; sending it without headers");
        Fields::new()
    });
    let outgoing = OutgoingResponse::new(headers);
    if outgoing.set_status_code(response.status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(body) = outgoing.body() else {
        log("research-api: the response body was already taken");
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    if !response.body.is_empty() {
        let Ok(mut stream) = body.write() else {
            log("research-api: the response stream was already taken");
            return;
        };
        if let Err(err) = stream
            .write_all(&response.body)
            .and_then(|()| std::io::Write::flush(&mut stream))
        {
            log(&format!("research-api: writing the response failed: {err}"));
        }
        // The stream is a child of the body: it must go first.
        drop(stream);
    }
    if OutgoingBody::finish(body, None).is_err() {
        log("research-api: finishing the response failed");
    }
}

/// stderr, best effort: `eprintln!` would panic (trap) if stderr were closed.
fn log(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

struct WasiEnvironment {
    request: IncomingRequest,
}

impl Environment for WasiEnvironment {
    type Storage = RedisStorage;

    fn config(&mut self, key: &str) -> Result<Option<String>, String> {
        config::get(key).map_err(|err| match err {
            config::Error::Upstream(message) => format!("upstream: {message}"),
            config::Error::Io(message) => format!("io: {message}"),
        })
    }

    fn open(&mut self, settings: &Settings) -> Result<RedisStorage, TaskError> {
        let options = wit::Options {
            url: settings.redis_url.clone(),
            key_prefix: settings.key_prefix.clone(),
            default_ttl_seconds: settings.default_ttl_seconds,
            timeout_ms: settings.timeout_ms,
            // The function's limit, not the store's larger default: a document the store
            // accepted but this instance cannot hold would fail only after it was written.
            max_document_bytes: u32::try_from(settings.max_document_bytes()).ok(),
            tls_ca_certificates: settings.tls_ca_certificates.clone(),
            danger_accept_invalid_certificates: settings.danger_accept_invalid_certificates,
            listing: settings.listing_by_index.map(|index| match index {
                true => wit::ListingMode::Index,
                false => wit::ListingMode::Scan,
            }),
        };
        wit::Store::open(&options)
            .map(RedisStorage)
            .map_err(from_wit)
    }

    fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let body = self
            .request
            .consume()
            .map_err(|()| BodyError::Read("the request body was already taken".into()))?;
        let mut stream = body
            .stream()
            .map_err(|()| BodyError::Read("the request body stream was already taken".into()))?;
        let result = request::read_capped(&mut stream, limit);
        // The stream is a child of the body: it must go first.
        drop(stream);
        drop(body);
        result
    }

    fn now(&mut self) -> (u64, u32) {
        let now = ::wasi::clocks::wall_clock::now();
        (now.seconds, now.nanoseconds)
    }

    fn random_bytes(&mut self) -> [u8; 16] {
        let high = ::wasi::random::random::get_random_u64().to_be_bytes();
        let low = ::wasi::random::random::get_random_u64().to_be_bytes();
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&high);
        bytes[8..].copy_from_slice(&low);
        bytes
    }

    fn log(&mut self, line: &str) {
        log(line);
    }
}

/// The imported `store` resource; dropping it closes the connection.
struct RedisStorage(wit::Store);

impl TaskStorage for RedisStorage {
    fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        self.0.get(id).map_err(from_wit)
    }

    fn create(&mut self, id: &str, document: &str) -> Result<bool, TaskError> {
        self.0.create(id, document, None).map_err(from_wit)
    }

    fn update(
        &mut self,
        id: &str,
        patch: &str,
        expect_status: Option<&str>,
    ) -> Result<Option<String>, TaskError> {
        let options = wit::UpdateOptions {
            expect_status: expect_status.map(str::to_string),
            ttl: None,
        };
        self.0.update(id, patch, &options).map_err(from_wit)
    }

    fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        self.0.delete(id).map_err(from_wit)
    }

    fn ping(&mut self) -> Result<(), TaskError> {
        self.0.ping().map_err(from_wit)
    }

    fn list(&mut self, query: &ListQuery) -> Result<Page, TaskError> {
        let options = wit::ListOptions {
            status: query.status.clone(),
            limit: Some(query.limit),
            cursor: query.cursor.clone(),
        };
        let page = self.0.list(&options).map_err(from_wit)?;
        Ok(Page {
            tasks: page
                .tasks
                .into_iter()
                .map(|task| StoredTask {
                    id: task.id,
                    document: task.document,
                })
                .collect(),
            cursor: page.cursor,
        })
    }
}

/// The store's error, mapped case for case: the one mapping from this function's binding of
/// the WIT `error` to the shared model.
fn from_wit(err: wit::Error) -> TaskError {
    let (kind, message) = match err {
        wit::Error::Connection(message) => (ErrorKind::Connection, message),
        wit::Error::Timeout(message) => (ErrorKind::Timeout, message),
        wit::Error::Authentication(message) => (ErrorKind::Authentication, message),
        wit::Error::Protocol(message) => (ErrorKind::Protocol, message),
        wit::Error::Server(message) => (ErrorKind::Server, message),
        wit::Error::InvalidInput(message) => (ErrorKind::InvalidInput, message),
        wit::Error::CorruptData(message) => (ErrorKind::CorruptData, message),
        wit::Error::Conflict(document) => (ErrorKind::Conflict, document),
        wit::Error::Contended(message) => (ErrorKind::Contended, message),
        wit::Error::Other(message) => (ErrorKind::Other, message),
    };
    TaskError::new(kind, message)
}
