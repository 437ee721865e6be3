//! API errors: each has a status, a stable machine-readable code and a message, and becomes
//! `{"error": {"code", "message"}}` (a 409 also carries the current `"task"`).
//!
//! Storage errors are mapped here and nowhere else ([`ApiError::from_storage`]). A 5xx never
//! repeats the store's message to the client (it may name the Redis address); callers log it.

use serde::Serialize;
use serde_json::value::RawValue;
use taskstore_model::{ErrorKind, RedisErrorCode, TaskError};

use crate::settings::SettingsError;

/// Seconds a client should wait before retrying a transient failure.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// An HTTP response, independent of `wasi:http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response whose body is already JSON text.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: body.into(),
        }
    }

    /// A JSON response serialising `value`. Serialisation of this crate's response shapes
    /// cannot fail (string keys only); if it ever did, the client gets a plain 500, not a trap.
    pub fn serialize(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::json(status, body),
            Err(_) => Response::json(
                500,
                r#"{"error": {"code": "internal", "message": "response serialisation failed"}}"#,
            ),
        }
    }

    pub fn no_content() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One row of the function's error table: a stable code, its status, and whether a client is
/// told to retry (`Retry-After`). Every [`ApiError`] is made from a row, so the table below is
/// every error the function can answer with; the published contract (`openapi.json`) is
/// checked against it, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub status: u16,
    pub code: &'static str,
    /// Sent with `Retry-After` (a transient failure).
    pub retry_after: bool,
}

/// Defines each row as a constant and [`ERROR_TABLE`] as all of them, so that no constant can
/// be left out of the table.
macro_rules! error_table {
    ($($(#[$doc:meta])* $name:ident = $status:literal $code:literal $retry:literal;)*) => {
        $($(#[$doc])* pub const $name: ErrorCode = ErrorCode {
            status: $status,
            code: $code,
            retry_after: $retry,
        };)*
        /// Every error the function answers with (the README's table).
        pub const ERROR_TABLE: &[ErrorCode] = &[$($name),*];
    };
}

error_table! {
    /// The body is not one JSON object (or repeats a member).
    INVALID_JSON = 400 "invalid_json" false;
    /// Create: `query` missing, blank or not a string, or a server-set member given.
    INVALID_TASK = 400 "invalid_task" false;
    /// A patch changes or removes `id`.
    IMMUTABLE_FIELD = 400 "immutable_field" false;
    /// An id that is not UTF-8 after decoding, too long, or with a control character.
    INVALID_ID = 400 "invalid_id" false;
    /// An unknown, repeated or empty query parameter, a bad `limit`, a refused cursor.
    INVALID_QUERY = 400 "invalid_query" false;
    /// A repeated or non-UTF-8 header, an empty `X-Expect-Status`, a bad `Content-Length`.
    INVALID_HEADER = 400 "invalid_header" false;
    /// The store refused the data (e.g. a patched document over `max-document-bytes`).
    INVALID_INPUT = 400 "invalid_input" false;
    /// The request body stream failed.
    BODY_UNREADABLE = 400 "body_unreadable" false;
    /// No such route.
    NOT_FOUND = 404 "not_found" false;
    /// No such task.
    TASK_NOT_FOUND = 404 "task_not_found" false;
    /// The route exists, the method does not (with `Allow`).
    METHOD_NOT_ALLOWED = 405 "method_not_allowed" false;
    /// `X-Expect-Status` did not match; the body carries the current task.
    STATUS_CONFLICT = 409 "status_conflict" false;
    /// The body is larger than `max-document-bytes`, or than the instance's memory can hold.
    BODY_TOO_LARGE = 413 "body_too_large" false;
    /// The new task document would be larger than `max-document-bytes`.
    DOCUMENT_TOO_LARGE = 413 "document_too_large" false;
    /// A body route without a JSON `Content-Type`.
    UNSUPPORTED_MEDIA_TYPE = 415 "unsupported_media_type" false;
    /// A missing or malformed setting, or options the store refused: a deployment mistake.
    CONFIGURATION = 500 "configuration" false;
    /// A bug.
    INTERNAL = 500 "internal" false;
    /// Redis answered an error reply that is not a passing state.
    STORAGE_SERVER = 502 "storage_server" false;
    /// Redis's reply was unusable.
    STORAGE_PROTOCOL = 502 "storage_protocol" false;
    /// The stored value is not a JSON object.
    CORRUPT_DATA = 502 "corrupt_data" false;
    /// The store's `other` failure.
    STORAGE_ERROR = 502 "storage_error" false;
    /// Redis is unreachable.
    STORAGE_UNAVAILABLE = 503 "storage_unavailable" true;
    /// Redis did not answer in time.
    STORAGE_TIMEOUT = 503 "storage_timeout" true;
    /// Redis reported a passing state (`LOADING`, `BUSY`, `OOM`, ...).
    STORAGE_BUSY = 503 "storage_busy" true;
    /// The update lost every optimistic retry.
    STORAGE_CONTENDED = 503 "storage_contended" true;
    /// Redis refused the credentials: no `Retry-After`, the configuration needs fixing.
    STORAGE_AUTHENTICATION = 503 "storage_authentication" false;
    /// The config source failed.
    CONFIGURATION_UNAVAILABLE = 503 "configuration_unavailable" true;
}

/// A request that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Adds `Retry-After` (transient failures).
    pub retry_after: bool,
    /// `Allow` of a 405.
    pub allow: Option<&'static str>,
    /// The current document, returned with a 409.
    pub task: Option<String>,
    /// What operators need and clients must not see (a 5xx's underlying cause).
    pub log: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status,
            code: code.code,
            message: message.into(),
            retry_after: code.retry_after,
            allow: None,
            task: None,
            log: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(INTERNAL, message)
    }

    pub fn route_not_found() -> ApiError {
        ApiError::new(NOT_FOUND, "no such resource")
    }

    pub fn task_not_found(id: &str) -> ApiError {
        ApiError::new(TASK_NOT_FOUND, format!("no task with id {id:?}"))
    }

    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut err = ApiError::new(
            METHOD_NOT_ALLOWED,
            format!("this resource allows only {allow}"),
        );
        err.allow = Some(allow);
        err
    }

    fn logged(mut self, log: String) -> ApiError {
        self.log = Some(log);
        self
    }

    /// The function's configuration is missing, malformed, or could not be read.
    pub fn from_settings(err: SettingsError) -> ApiError {
        match &err {
            // A config source (Vault, a ConfigMap, ...) may recover by itself.
            SettingsError::Unavailable { message, .. } => {
                let log = format!("{err}: {message}");
                ApiError::new(CONFIGURATION_UNAVAILABLE, err.to_string()).logged(log)
            }
            // A deployment mistake: retrying cannot help, so not 503.
            SettingsError::Missing(_)
            | SettingsError::Invalid { .. }
            | SettingsError::OutOfRange { .. } => {
                let message = err.to_string();
                ApiError::new(CONFIGURATION, message.clone()).logged(message)
            }
        }
    }

    /// `open` failed: as [`ApiError::from_storage`], except that `invalid-input` means the
    /// configured URL or options are unusable.
    pub fn from_open(err: TaskError) -> ApiError {
        match err.kind() {
            ErrorKind::InvalidInput => ApiError::new(
                CONFIGURATION,
                "the task store rejected the configured Redis URL or options",
            )
            .logged(format!(
                "opening the task store: invalid-input: {}",
                err.message()
            )),
            _ => ApiError::from_storage("opening the task store", err),
        }
    }

    /// The one mapping of storage errors to HTTP. `operation` names the call, for logs.
    ///
    /// - `connection`, `timeout`, `contended` → 503 with `Retry-After` (transient);
    /// - `authentication` → 503 without it (credentials need fixing; Redis is unavailable to us);
    /// - `server` → 503 with `Retry-After` for Redis's transient states
    ///   ([`RedisErrorCode::is_transient`]: `LOADING`, `BUSY`, `OOM`, ...), else 502;
    /// - `protocol`, `corrupt-data`, `other` → 502 (the upstream answered something unusable),
    ///   and `host`, which never crosses the WIT, the same;
    /// - `invalid-input` → 400 with the store's message (it describes the request's data);
    /// - `conflict` → 409 with the current task (only `update` returns it; elsewhere a bug: 500).
    pub fn from_storage(operation: &str, err: TaskError) -> ApiError {
        let log = format!("{operation}: {err}");
        let mapped = match err.kind() {
            ErrorKind::Connection => {
                ApiError::new(STORAGE_UNAVAILABLE, "the task store is unreachable")
            }
            ErrorKind::Timeout => {
                ApiError::new(STORAGE_TIMEOUT, "the task store did not answer in time")
            }
            ErrorKind::Contended => ApiError::new(
                STORAGE_CONTENDED,
                "the task kept changing concurrently; retry",
            ),
            ErrorKind::Authentication => ApiError::new(
                STORAGE_AUTHENTICATION,
                "the task store refused this function's credentials",
            ),
            ErrorKind::Server if RedisErrorCode::of(err.message()).is_transient() => ApiError::new(
                STORAGE_BUSY,
                "the task store is temporarily unable to serve",
            ),
            ErrorKind::Server => {
                ApiError::new(STORAGE_SERVER, "the task store answered with an error")
            }
            ErrorKind::Protocol => {
                ApiError::new(STORAGE_PROTOCOL, "the task store sent an invalid reply")
            }
            ErrorKind::CorruptData => ApiError::new(
                CORRUPT_DATA,
                "the stored task is not a readable JSON object",
            ),
            ErrorKind::Other | ErrorKind::Host => {
                ApiError::new(STORAGE_ERROR, "the task store failed")
            }
            ErrorKind::InvalidInput => {
                return ApiError::new(INVALID_INPUT, err.into_message());
            }
            ErrorKind::Conflict if operation == UPDATE => {
                let mut conflict = ApiError::new(
                    STATUS_CONFLICT,
                    "the task's status is not the one X-Expect-Status names",
                );
                conflict.task = err.current_document().map(str::to_owned);
                return conflict;
            }
            ErrorKind::Conflict => {
                ApiError::internal("the task store reported an unexpected conflict")
            }
        };
        mapped.logged(log)
    }

    pub fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Detail<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            task: Option<&'a RawValue>,
        }
        #[derive(Serialize)]
        struct Detail<'a> {
            code: &'a str,
            message: &'a str,
        }
        // The current document goes out as stored; text that is not JSON cannot be embedded.
        let task = self
            .task
            .as_deref()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        let mut response = Response::serialize(
            self.status,
            &Body {
                error: Detail {
                    code: self.code,
                    message: &self.message,
                },
                task,
            },
        );
        if self.retry_after {
            response
                .headers
                .push(("retry-after", RETRY_AFTER_SECONDS.to_string()));
        }
        if let Some(allow) = self.allow {
            response.headers.push(("allow", allow.to_string()));
        }
        response
    }
}

/// The operation name under which `update` reports, the only one whose conflict is expected.
pub const UPDATE: &str = "updating the task";

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &Response) -> serde_json::Value {
        serde_json::from_slice(&response.body).expect("error bodies are JSON")
    }

    #[test]
    fn every_storage_error_is_mapped_deliberately() {
        let cases = [
            (
                TaskError::connection("127.0.0.1:6379 refused"),
                503,
                "storage_unavailable",
                true,
            ),
            (TaskError::timeout("t"), 503, "storage_timeout", true),
            (TaskError::contended("c"), 503, "storage_contended", true),
            (
                TaskError::authentication("a"),
                503,
                "storage_authentication",
                false,
            ),
            (
                TaskError::server("LOADING Redis is loading"),
                503,
                "storage_busy",
                true,
            ),
            (
                TaskError::server("OOM command not allowed"),
                503,
                "storage_busy",
                true,
            ),
            (
                TaskError::server("WRONGTYPE Operation"),
                502,
                "storage_server",
                false,
            ),
            (TaskError::protocol("p"), 502, "storage_protocol", false),
            (TaskError::corrupt_data("d"), 502, "corrupt_data", false),
            (
                TaskError::new(ErrorKind::Other, "o"),
                502,
                "storage_error",
                false,
            ),
            (TaskError::host("h"), 502, "storage_error", false),
            (
                TaskError::invalid_input("bad cursor"),
                400,
                "invalid_input",
                false,
            ),
            (TaskError::conflict("{}"), 500, "internal", false),
        ];
        for (err, status, code, retry) in cases {
            let mapped = ApiError::from_storage("reading the task", err.clone());
            assert_eq!((mapped.status, mapped.code), (status, code), "{err:?}");
            let response = mapped.into_response();
            assert_eq!(response.header("retry-after").is_some(), retry, "{err:?}");
            assert_eq!(body(&response)["error"]["code"], code);
        }
    }

    #[test]
    fn server_side_messages_reach_the_log_not_the_client() {
        let mapped = ApiError::from_storage(
            "reading the task",
            TaskError::connection("could not connect to redis.internal:6379"),
        );
        assert!(mapped
            .log
            .as_deref()
            .unwrap()
            .contains("redis.internal:6379"));
        let response = mapped.into_response();
        assert!(!String::from_utf8_lossy(&response.body).contains("redis.internal"));
    }

    #[test]
    fn conflict_of_an_update_carries_the_current_task() {
        let current = r#"{"id": "t", "status": "running", "n": 12345678901234567890}"#;
        let response = ApiError::from_storage(UPDATE, TaskError::conflict(current)).into_response();
        assert_eq!(response.status, 409);
        let text = String::from_utf8(response.body).unwrap();
        assert!(
            text.contains(r#""task":{"id": "t", "status": "running", "n": 12345678901234567890}"#),
            "{text}"
        );
    }

    #[test]
    fn open_with_rejected_options_is_a_configuration_error() {
        let mapped = ApiError::from_open(TaskError::invalid_input("url: bad port"));
        assert_eq!((mapped.status, mapped.code), (500, "configuration"));
        assert!(!mapped.message.contains("bad port"));
        let mapped = ApiError::from_open(TaskError::authentication("WRONGPASS"));
        assert_eq!(
            (mapped.status, mapped.code),
            (503, "storage_authentication")
        );
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let response = ApiError::method_not_allowed("GET, POST").into_response();
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET, POST"));
    }
}
