//! One request, from head to response. The world outside — configuration, the store, the
//! request body, the clock, randomness, the log — comes through [`Environment`], so all of it
//! runs natively in tests.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::value::RawValue;
use taskstore_model::{ErrorKind, TaskError};

use crate::document::{self, Members, RESERVED_ON_CREATE};
use crate::error::{self, ApiError, Response};
use crate::openapi;
use crate::request::{self, BodyError, RequestHead, Route};
use crate::settings::Settings;
use crate::storage::{ListQuery, TaskStorage};

/// Header holding `update`'s status precondition.
pub const EXPECT_STATUS_HEADER: &str = "x-expect-status";

/// What a path segment may hold unescaped: RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// New ids tried before giving up; a UUID v4 collision is itself a sign of a broken RNG.
const CREATE_ATTEMPTS: usize = 3;

/// Largest new task echoed in a `201` as `"task"`. A larger one is left out: the client has
/// its id, and copying it into the response once more is memory the instance may not have
/// after the task was written (a failure then would be a `500` for a stored task, and a
/// retry a duplicate).
pub const MAX_ECHOED_TASK_BYTES: usize = 64 * 1024;

/// What the function needs from the component world.
pub trait Environment {
    type Storage: TaskStorage;
    /// One `wasi:config/store.get`; `Err` is the config source's own message.
    fn config(&mut self, key: &str) -> Result<Option<String>, String>;
    /// `store.open` with the settings' URL and options.
    fn open(&mut self, settings: &Settings) -> Result<Self::Storage, TaskError>;
    /// The request body, at most `limit` bytes (see [`request::read_capped`]).
    fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError>;
    /// Wall-clock time: seconds and nanoseconds since the Unix epoch.
    fn now(&mut self) -> (u64, u32);
    fn random_bytes(&mut self) -> [u8; 16];
    /// One line for operators (stderr in the component).
    fn log(&mut self, line: &str);
}

/// Deadline of `GET /readyz`'s round trip to Redis (or `timeout-ms`, if shorter): a probe
/// must learn within its own timeout (commonly one second) whether Redis answers, and a
/// readiness check must not hold an instance for the whole `timeout-ms` of a request.
pub const READINESS_TIMEOUT_MS: u32 = 1000;
/// `timeout-ms` when the key is unset (the store's documented default).
const STORE_DEFAULT_TIMEOUT_MS: u32 = 5000;

/// The open store and the settings it was opened with, kept for the life of an instance so
/// that a reused instance reuses its Redis connection.
pub struct Connected<S> {
    pub settings: Settings,
    pub storage: S,
}

/// What an instance keeps between requests. Each store is opened on first use and kept; a
/// failed configuration read or `open` leaves it empty, so the next request tries again.
pub struct Instance<S> {
    /// The store requests use.
    pub connected: Option<Connected<S>>,
    /// A second store, with the readiness deadline, that only `GET /readyz` uses: a store's
    /// deadline is fixed when it is opened, and the requests' one is usually longer.
    pub readiness: Option<S>,
}

impl<S> Instance<S> {
    pub const fn new() -> Instance<S> {
        Instance {
            connected: None,
            readiness: None,
        }
    }
}

impl<S> Default for Instance<S> {
    fn default() -> Instance<S> {
        Instance::new()
    }
}

/// Serves one request, with the stores `instance` keeps.
pub fn handle<E: Environment>(
    head: &RequestHead,
    env: &mut E,
    instance: &mut Instance<E::Storage>,
) -> Response {
    match try_handle(head, env, instance) {
        Ok(response) => response,
        Err(err) => {
            if let Some(line) = &err.log {
                env.log(&format!(
                    "research-api: {} {}: {line}",
                    err.status, err.code
                ));
            }
            err.into_response()
        }
    }
}

fn try_handle<E: Environment>(
    head: &RequestHead,
    env: &mut E,
    instance: &mut Instance<E::Storage>,
) -> Result<Response, ApiError> {
    // Routing and header checks first: a malformed request never costs a Redis connection.
    let route = request::route(&head.method, head.path_with_query.as_deref())?;
    match route {
        Route::OpenApi => Ok(Response::json(200, openapi::DOCUMENT)),
        // Liveness: no configuration, no Redis — only that this instance runs.
        Route::Health => Ok(Response::json(200, HEALTHY)),
        Route::Ready => ready(env, &mut instance.readiness),
        route => serve_tasks(head, env, &mut instance.connected, route),
    }
}

/// The body of a `200` from `/healthz` and `/readyz`.
const HEALTHY: &str = r#"{"status":"ok"}"#;

/// `GET /readyz`: one `ping` on the readiness store, opened (with the readiness deadline) on
/// first use. Its errors are the requests' ones: `503` when Redis is unreachable, too slow,
/// in a passing state or refuses the credentials, `500` for a configuration mistake, `502`
/// for an unusable answer.
fn ready<E: Environment>(
    env: &mut E,
    readiness: &mut Option<E::Storage>,
) -> Result<Response, ApiError> {
    let store = match readiness {
        Some(store) => store,
        None => {
            let mut settings =
                Settings::load(|key| env.config(key)).map_err(ApiError::from_settings)?;
            let timeout_ms = settings.timeout_ms.unwrap_or(STORE_DEFAULT_TIMEOUT_MS);
            settings.timeout_ms = Some(timeout_ms.min(READINESS_TIMEOUT_MS));
            readiness.insert(env.open(&settings).map_err(ApiError::from_open)?)
        }
    };
    store
        .ping()
        .map_err(|err| ApiError::from_storage("checking readiness", err))?;
    Ok(Response::json(200, HEALTHY))
}

/// The task routes: everything that needs the store.
fn serve_tasks<E: Environment>(
    head: &RequestHead,
    env: &mut E,
    instance: &mut Option<Connected<E::Storage>>,
    route: Route,
) -> Result<Response, ApiError> {
    let expect_status = match route {
        Route::Update(_) => parse_expect_status(head)?,
        _ => None,
    };
    if route.takes_body() {
        request::check_content_type(head.header("content-type")?)?;
    }
    let connected = connect(env, instance)?;
    let limit = connected.settings.max_document_bytes();
    let storage = &mut connected.storage;
    match route {
        Route::Create => {
            let body = read_body(head, env, limit)?;
            create(storage, env, &body, limit)
        }
        Route::Get(id) => get(storage, &id),
        Route::List(query) => list(storage, env, &query),
        Route::Update(id) => {
            let body = read_body(head, env, limit)?;
            update(storage, &id, body, expect_status.as_deref())
        }
        Route::Delete(id) => delete(storage, &id),
        Route::OpenApi | Route::Health | Route::Ready => Err(ApiError::internal(
            "a route without the store reached the store",
        )),
    }
}

fn connect<'a, E: Environment>(
    env: &mut E,
    instance: &'a mut Option<Connected<E::Storage>>,
) -> Result<&'a mut Connected<E::Storage>, ApiError> {
    if instance.is_none() {
        let settings = Settings::load(|key| env.config(key)).map_err(ApiError::from_settings)?;
        let storage = env.open(&settings).map_err(ApiError::from_open)?;
        return Ok(instance.insert(Connected { settings, storage }));
    }
    instance
        .as_mut()
        .ok_or_else(|| ApiError::internal("the store vanished"))
}

fn parse_expect_status(head: &RequestHead) -> Result<Option<String>, ApiError> {
    match head.header(EXPECT_STATUS_HEADER)? {
        None => Ok(None),
        Some("") => Err(ApiError::new(
            error::INVALID_HEADER,
            "X-Expect-Status must not be empty",
        )),
        Some(status) => Ok(Some(status.to_string())),
    }
}

fn read_body(
    head: &RequestHead,
    env: &mut impl Environment,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    request::check_content_length(head.header("content-length")?, limit)?;
    env.read_body(limit)
        .map_err(|err| err.into_api_error(limit))
}

fn parse_members(body: &[u8]) -> Result<Members, ApiError> {
    Members::parse(body).map_err(|reason| {
        ApiError::new(
            error::INVALID_JSON,
            format!("the body must be one JSON object: {reason}"),
        )
    })
}

fn create(
    storage: &mut impl TaskStorage,
    env: &mut impl Environment,
    body: &[u8],
    limit: usize,
) -> Result<Response, ApiError> {
    let members = parse_members(body)?;
    match members.get("query").and_then(document::as_string) {
        Some(query) if !query.trim().is_empty() => {}
        _ => {
            return Err(ApiError::new(
                error::INVALID_TASK,
                "\"query\" must be a non-blank string",
            ))
        }
    }
    if let Some(reserved) = RESERVED_ON_CREATE
        .iter()
        .find(|name| members.get(name).is_some())
    {
        return Err(ApiError::new(
            error::INVALID_TASK,
            format!("{reserved:?} is set by the server"),
        ));
    }
    let (seconds, nanoseconds) = env.now();
    let created_at = document::rfc3339_utc_micros(seconds, nanoseconds)
        .ok_or_else(|| ApiError::internal("the wall clock is out of range"))?;
    for _ in 0..CREATE_ATTEMPTS {
        let id = document::uuid_v4(env.random_bytes());
        let task = document::new_task_document(&id, &created_at, &members);
        if task.len() > limit {
            return Err(ApiError::new(
                error::DOCUMENT_TOO_LARGE,
                format!("the task would be larger than {limit} bytes"),
            ));
        }
        if storage
            .create(&id, &task)
            .map_err(|err| ApiError::from_storage("creating the task", err))?
        {
            return Ok(created(&id, &created_at, &task));
        }
        env.log(&format!(
            "research-api: generated id {id} already exists; drawing another"
        ));
    }
    Err(ApiError::internal("could not generate an unused task id"))
}

fn created(id: &str, created_at: &str, task: &str) -> Response {
    #[derive(Serialize)]
    struct Created<'a> {
        task_id: &'a str,
        status: &'a str,
        created_at: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        task: Option<&'a RawValue>,
    }
    let mut response = Response::serialize(
        201,
        &Created {
            task_id: id,
            status: "pending",
            created_at,
            task: match task.len() <= MAX_ECHOED_TASK_BYTES {
                true => document::as_object(task),
                false => None,
            },
        },
    );
    response.headers.push((
        "location",
        format!(
            "/research/tasks/{}",
            percent_encoding::utf8_percent_encode(id, PATH_SEGMENT)
        ),
    ));
    response
}

fn get(storage: &mut impl TaskStorage, id: &str) -> Result<Response, ApiError> {
    match storage
        .get(id)
        .map_err(|err| ApiError::from_storage("reading the task", err))?
    {
        Some(document) => document_response(id, document),
        None => Err(ApiError::task_not_found(id)),
    }
}

/// A stored document, sent as stored, if it is a JSON object (the store does not re-check
/// what other clients wrote).
fn document_response(id: &str, document: String) -> Result<Response, ApiError> {
    if document::as_object(&document).is_none() {
        let mut err = ApiError::new(
            error::CORRUPT_DATA,
            "the stored task is not a readable JSON object",
        );
        err.log = Some(format!(
            "task {id:?} holds a value that is not a JSON object"
        ));
        return Err(err);
    }
    Ok(Response::json(200, document))
}

fn list(
    storage: &mut impl TaskStorage,
    env: &mut impl Environment,
    query: &ListQuery,
) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct Listing<'a> {
        tasks: Vec<&'a RawValue>,
        next_cursor: Option<&'a str>,
    }
    let page = storage.list(query).map_err(|err| match err.kind() {
        // Everything else in the query was validated here; what the store refuses is the cursor.
        ErrorKind::InvalidInput => ApiError::new(error::INVALID_QUERY, err.into_message()),
        _ => ApiError::from_storage("listing tasks", err),
    })?;
    let mut tasks = Vec::with_capacity(page.tasks.len());
    for task in &page.tasks {
        match document::as_object(&task.document) {
            Some(raw) => tasks.push(raw),
            // Skipped as the store skips undecodable values: one bad key must not make the
            // listing unusable.
            None => env.log(&format!(
                "research-api: listing skipped task {:?}: not a JSON object",
                task.id
            )),
        }
    }
    Ok(Response::serialize(
        200,
        &Listing {
            tasks,
            next_cursor: page.cursor.as_deref(),
        },
    ))
}

fn update(
    storage: &mut impl TaskStorage,
    id: &str,
    body: Vec<u8>,
    expect_status: Option<&str>,
) -> Result<Response, ApiError> {
    let members = parse_members(&body)?;
    if let Some(new_id) = members.get("id") {
        if document::as_string(new_id).as_deref() != Some(id) {
            return Err(ApiError::new(
                error::IMMUTABLE_FIELD,
                "a patch may not change or remove \"id\"",
            ));
        }
    }
    let patch = String::from_utf8(body)
        .map_err(|_| ApiError::new(error::INVALID_JSON, "the body is not UTF-8"))?;
    match storage
        .update(id, &patch, expect_status)
        .map_err(|err| ApiError::from_storage(error::UPDATE, err))?
    {
        Some(document) => document_response(id, document),
        None => Err(ApiError::task_not_found(id)),
    }
}

fn delete(storage: &mut impl TaskStorage, id: &str) -> Result<Response, ApiError> {
    if storage
        .delete(id)
        .map_err(|err| ApiError::from_storage("deleting the task", err))?
    {
        Ok(Response::no_content())
    } else {
        Err(ApiError::task_not_found(id))
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
