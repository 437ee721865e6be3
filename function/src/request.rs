//! The request side: the head as this function sees it, routing, query and header parsing,
//! and bounded body reads. Nothing here does I/O except [`read_capped`] over a reader.

use std::io::Read;

use percent_encoding::percent_decode_str;
use taskstore_model::validate_id;

use crate::error::{self, ApiError};
use crate::storage::ListQuery;

/// `limit` when the query gives none (the store's default page size).
pub const DEFAULT_LIMIT: u32 = 100;
/// Larger limits are lowered to this: a page is held in memory whole, twice (store reply and
/// response body).
pub const MAX_LIMIT: u32 = 1000;
/// Bytes reserved before reading a body.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

const COLLECTION: &str = "/research/tasks";
const COLLECTION_ALLOW: &str = "GET, POST";
const ITEM_ALLOW: &str = "GET, PATCH, DELETE";
/// Where the function serves its contract, next to the API it describes.
pub const OPENAPI_PATH: &str = "/research/openapi.json";
/// Liveness: the instance answers, nothing else is checked.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: a store can reach Redis within [`crate::service::READINESS_TIMEOUT_MS`].
pub const READY_PATH: &str = "/readyz";
const GET_ONLY: &str = "GET";

/// Every path the function answers (templates as the contract writes them) with the methods
/// it takes, as its `405`'s `Allow` lists them. [`route`] is the code; this is the same
/// knowledge as data, which the contract is checked against.
pub const ROUTES: &[(&str, &str)] = &[
    (COLLECTION, COLLECTION_ALLOW),
    ("/research/tasks/{id}", ITEM_ALLOW),
    (OPENAPI_PATH, GET_ONLY),
    (HEALTH_PATH, GET_ONLY),
    (READY_PATH, GET_ONLY),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
    Other(String),
}

/// What the function reads of a request before deciding whether to read its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// `None` when the request has none (then nothing matches).
    pub path_with_query: Option<String>,
    /// Every header field, name as received.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// The single value of header `name`. Errors: 400 `invalid_header` when the header is
    /// repeated or not UTF-8.
    pub fn header(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value);
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::new(
                error::INVALID_HEADER,
                format!("header {name} must not be repeated"),
            ));
        }
        std::str::from_utf8(first).map(Some).map_err(|_| {
            ApiError::new(error::INVALID_HEADER, format!("header {name} is not UTF-8"))
        })
    }
}

/// What a request asks for, once its path, method and query are understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Create,
    List(ListQuery),
    Get(String),
    Update(String),
    Delete(String),
    /// The contract, `openapi.json`.
    OpenApi,
    Health,
    Ready,
}

impl Route {
    /// Whether the route reads a JSON request body.
    pub fn takes_body(&self) -> bool {
        matches!(self, Route::Create | Route::Update(_))
    }
}

/// Finds the route of a request.
///
/// Errors, in this order: 404 `not_found` for any path not in [`ROUTES`]; 405 `method_not_allowed` (with `Allow`); 400 `invalid_id` for an
/// id that is not percent-decodable UTF-8 or breaks the store's id rule; 400 `invalid_query`
/// for a query parameter the route does not take, a repeated one, or a bad value.
pub fn route(method: &Method, path_with_query: Option<&str>) -> Result<Route, ApiError> {
    let path_with_query = path_with_query.ok_or_else(ApiError::route_not_found)?;
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (path_with_query, ""),
    };
    let fixed = match path {
        OPENAPI_PATH => Some(Route::OpenApi),
        HEALTH_PATH => Some(Route::Health),
        READY_PATH => Some(Route::Ready),
        _ => None,
    };
    if let Some(fixed) = fixed {
        if *method != Method::Get {
            return Err(ApiError::method_not_allowed(GET_ONLY));
        }
        expect_no_query(query)?;
        return Ok(fixed);
    }
    let rest = path
        .strip_prefix(COLLECTION)
        .ok_or_else(ApiError::route_not_found)?;
    if rest.is_empty() {
        return match method {
            Method::Get => Ok(Route::List(parse_list_query(query)?)),
            Method::Post => {
                expect_no_query(query)?;
                Ok(Route::Create)
            }
            _ => Err(ApiError::method_not_allowed(COLLECTION_ALLOW)),
        };
    }
    let segment = match rest.strip_prefix('/') {
        Some(segment) if !segment.is_empty() && !segment.contains('/') => segment,
        _ => return Err(ApiError::route_not_found()),
    };
    let make: fn(String) -> Route = match method {
        Method::Get => Route::Get,
        Method::Patch => Route::Update,
        Method::Delete => Route::Delete,
        _ => return Err(ApiError::method_not_allowed(ITEM_ALLOW)),
    };
    let id = decode_id(segment)?;
    expect_no_query(query)?;
    Ok(make(id))
}

/// A path segment, percent-decoded, checked against the store's id rule so that a bad id is a
/// 400 here rather than a storage error later.
fn decode_id(segment: &str) -> Result<String, ApiError> {
    let id = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::new(error::INVALID_ID, "the task id is not UTF-8"))?;
    validate_id(&id).map_err(|err| ApiError::new(error::INVALID_ID, err.into_message()))?;
    Ok(id.into_owned())
}

fn expect_no_query(query: &str) -> Result<(), ApiError> {
    match form_urlencoded::parse(query.as_bytes()).next() {
        None => Ok(()),
        Some((name, _)) => Err(unknown_parameter(&name)),
    }
}

fn unknown_parameter(name: &str) -> ApiError {
    ApiError::new(
        error::INVALID_QUERY,
        format!("unknown query parameter {name:?}"),
    )
}

/// `status`, `limit` and `cursor`, each at most once. `limit` is a positive decimal integer,
/// lowered to [`MAX_LIMIT`]; `status` and `cursor` are non-empty.
fn parse_list_query(query: &str) -> Result<ListQuery, ApiError> {
    let mut status = None;
    let mut limit = None;
    let mut cursor = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "status" => &mut status,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            _ => return Err(unknown_parameter(&name)),
        };
        if slot.is_some() {
            return Err(ApiError::new(
                error::INVALID_QUERY,
                format!("query parameter {name:?} is repeated"),
            ));
        }
        if value.is_empty() {
            return Err(ApiError::new(
                error::INVALID_QUERY,
                format!("query parameter {name:?} is empty"),
            ));
        }
        *slot = Some(value.into_owned());
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => parse_limit(&text)?,
    };
    Ok(ListQuery {
        status,
        limit,
        cursor,
    })
}

fn parse_limit(text: &str) -> Result<u32, ApiError> {
    let invalid = || ApiError::new(error::INVALID_QUERY, "limit must be a positive integer");
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    // All digits: a parse failure can only be overflow, which the cap absorbs.
    let limit = text.parse::<u64>().unwrap_or(u64::MAX);
    if limit == 0 {
        return Err(invalid());
    }
    Ok(u32::try_from(limit.min(u64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT))
}

/// Accepts `application/json` and any `application/*+json` (such as RFC 7386's
/// `application/merge-patch+json`), with parameters, as long as a `charset` parameter, if any,
/// is UTF-8. Errors: 415 `unsupported_media_type`, also for a missing `Content-Type`: a web
/// page may send a body without one (or as `text/plain`) to any site without a CORS
/// preflight, so accepting it would let any page a user visits create and change tasks.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let unsupported = || {
        ApiError::new(
            error::UNSUPPORTED_MEDIA_TYPE,
            "request bodies must be sent with Content-Type: application/json",
        )
    };
    let Some(content_type) = content_type else {
        return Err(unsupported());
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json") && !subtype.contains('/'));
    if !is_json {
        return Err(unsupported());
    }
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=') {
            let value = value.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset")
                && !value.eq_ignore_ascii_case("utf-8")
                && !value.eq_ignore_ascii_case("utf8")
            {
                return Err(unsupported());
            }
        }
    }
    Ok(())
}

/// Refuses a body whose declared `Content-Length` already exceeds `limit`, before reading it.
/// Errors: 413 `body_too_large`; 400 `invalid_header` for a malformed length.
pub fn check_content_length(content_length: Option<&str>, limit: usize) -> Result<(), ApiError> {
    let Some(text) = content_length else {
        return Ok(());
    };
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(
            error::INVALID_HEADER,
            "Content-Length is not a number",
        ));
    }
    match text.parse::<u64>() {
        Ok(length) if u64::try_from(limit).is_ok_and(|limit| length <= limit) => Ok(()),
        _ => Err(body_too_large(limit)),
    }
}

pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        error::BODY_TOO_LARGE,
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit was sent; reading stopped at limit + 1 bytes.
    TooLarge,
    /// The body is within the limit, but the instance's memory (capped by the host) cannot
    /// hold it.
    OutOfMemory,
    /// The stream failed (the client went away, or the request has no readable body).
    Read(String),
}

impl BodyError {
    pub fn into_api_error(self, limit: usize) -> ApiError {
        match self {
            BodyError::TooLarge => body_too_large(limit),
            // Too large for this deployment all the same: the client can act on a 413 (send
            // less), not on a 400 or a retry.
            BodyError::OutOfMemory => ApiError::new(
                error::BODY_TOO_LARGE,
                "the request body is larger than this function's memory can hold",
            ),
            BodyError::Read(message) => ApiError::new(
                error::BODY_UNREADABLE,
                format!("the request body could not be read: {message}"),
            ),
        }
    }
}

/// Reads all of `reader`, but never holds more than `limit` + 1 bytes: a larger body is
/// `TooLarge` however much more the client sends.
pub fn read_capped(reader: impl Read, limit: usize) -> Result<Vec<u8>, BodyError> {
    // Room for a typical body up front, so that the first reads are not tiny probes (each
    // read of a wasi stream is a host call).
    let mut body = Vec::with_capacity(limit.saturating_add(1).min(INITIAL_BODY_CAPACITY));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    // `read_to_end` grows the buffer with `try_reserve`: an allocation the instance's memory
    // limit refuses comes back as an `OutOfMemory` error instead of aborting the instance.
    reader
        .take(cap)
        .read_to_end(&mut body)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::OutOfMemory => BodyError::OutOfMemory,
            _ => BodyError::Read(err.to_string()),
        })?;
    if body.len() > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskstore_model::MAX_ID_BYTES;

    fn routed(method: Method, path: &str) -> Result<Route, ApiError> {
        route(&method, Some(path))
    }

    fn code(result: Result<Route, ApiError>) -> (u16, &'static str) {
        let err = result.unwrap_err();
        (err.status, err.code)
    }

    #[test]
    fn routes_the_five_endpoints() {
        assert_eq!(
            routed(Method::Post, "/research/tasks").unwrap(),
            Route::Create
        );
        assert_eq!(
            routed(Method::Get, "/research/tasks").unwrap(),
            Route::List(ListQuery {
                status: None,
                limit: DEFAULT_LIMIT,
                cursor: None
            })
        );
        assert_eq!(
            routed(Method::Get, "/research/tasks/abc").unwrap(),
            Route::Get("abc".into())
        );
        assert_eq!(
            routed(Method::Patch, "/research/tasks/abc").unwrap(),
            Route::Update("abc".into())
        );
        assert_eq!(
            routed(Method::Delete, "/research/tasks/abc").unwrap(),
            Route::Delete("abc".into())
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/",
            "/research",
            "/research/task",
            "/research/tasksx",
            "/research/tasks/",
            "/research/tasks/a/b",
            "/research/tasks//",
            "research/tasks",
        ] {
            assert_eq!(
                code(routed(Method::Get, path)),
                (404, "not_found"),
                "{path}"
            );
        }
        assert_eq!(code(route(&Method::Get, None)), (404, "not_found"));
    }

    #[test]
    fn wrong_methods_are_refused_with_allow() {
        let err = routed(Method::Delete, "/research/tasks").unwrap_err();
        assert_eq!((err.status, err.allow), (405, Some("GET, POST")));
        let err = routed(Method::Post, "/research/tasks/x").unwrap_err();
        assert_eq!((err.status, err.allow), (405, Some("GET, PATCH, DELETE")));
        let err = routed(Method::Other("HEAD".into()), "/research/tasks/x").unwrap_err();
        assert_eq!(err.status, 405);
    }

    #[test]
    fn ids_are_percent_decoded_and_checked() {
        assert_eq!(
            routed(Method::Get, "/research/tasks/a%2Fb%20c%C3%A9").unwrap(),
            Route::Get("a/b cé".into())
        );
        assert_eq!(
            code(routed(Method::Get, "/research/tasks/%FF")),
            (400, "invalid_id")
        );
        assert_eq!(
            code(routed(Method::Get, "/research/tasks/a%0Ab")),
            (400, "invalid_id")
        );
        assert_eq!(
            code(routed(Method::Get, "/research/tasks/a%7Fb")),
            (400, "invalid_id")
        );
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            code(routed(Method::Get, &format!("/research/tasks/{long}"))),
            (400, "invalid_id")
        );
        let longest = "x".repeat(MAX_ID_BYTES);
        assert!(routed(Method::Get, &format!("/research/tasks/{longest}")).is_ok());
    }

    #[test]
    fn list_query_is_parsed() {
        assert_eq!(
            routed(
                Method::Get,
                "/research/tasks?status=in+progress&limit=5&cursor=17%3A3"
            )
            .unwrap(),
            Route::List(ListQuery {
                status: Some("in progress".into()),
                limit: 5,
                cursor: Some("17:3".into())
            })
        );
        assert_eq!(
            routed(Method::Get, "/research/tasks?limit=99999999999999999999999").unwrap(),
            Route::List(ListQuery {
                status: None,
                limit: MAX_LIMIT,
                cursor: None
            })
        );
        assert!(routed(Method::Get, "/research/tasks?").is_ok());
    }

    #[test]
    fn bad_query_parameters_are_refused() {
        for query in [
            "limit=0",
            "limit=-1",
            "limit=+3",
            "limit=1.5",
            "limit=ten",
            "limit=",
            "status=",
            "cursor=",
            "status=a&status=b",
            "sort=asc",
        ] {
            assert_eq!(
                code(routed(Method::Get, &format!("/research/tasks?{query}"))),
                (400, "invalid_query"),
                "{query}"
            );
        }
        assert_eq!(
            code(routed(Method::Get, "/research/tasks/a?x=1")),
            (400, "invalid_query")
        );
        assert_eq!(
            code(routed(Method::Post, "/research/tasks?x=1")),
            (400, "invalid_query")
        );
    }

    #[test]
    fn json_content_types_are_accepted_leniently() {
        for accepted in [
            Some("application/json"),
            Some("Application/JSON; charset=UTF-8"),
            Some("application/json;charset=\"utf-8\""),
            Some("application/merge-patch+json"),
        ] {
            assert!(check_content_type(accepted).is_ok(), "{accepted:?}");
        }
        let missing = check_content_type(None).unwrap_err();
        assert_eq!(
            (missing.status, missing.code),
            (415, "unsupported_media_type")
        );
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "",
            "json",
        ] {
            let err = check_content_type(Some(refused)).unwrap_err();
            assert_eq!(
                (err.status, err.code),
                (415, "unsupported_media_type"),
                "{refused}"
            );
        }
    }

    #[test]
    fn content_length_over_the_limit_is_refused_before_reading() {
        assert!(check_content_length(None, 10).is_ok());
        assert!(check_content_length(Some("10"), 10).is_ok());
        assert_eq!(
            check_content_length(Some("11"), 10).unwrap_err().status,
            413
        );
        assert_eq!(
            check_content_length(Some("99999999999999999999999"), 10)
                .unwrap_err()
                .status,
            413
        );
        assert_eq!(
            check_content_length(Some("1x"), 10).unwrap_err().status,
            400
        );
    }

    #[test]
    fn read_capped_stops_one_byte_past_the_limit() {
        assert_eq!(read_capped(&b"0123456789"[..], 10).unwrap(), b"0123456789");
        assert_eq!(
            read_capped(&b"0123456789X"[..], 10),
            Err(BodyError::TooLarge)
        );
        // An endless body is cut off, not buffered.
        assert_eq!(
            read_capped(std::io::repeat(b'x'), 1000),
            Err(BodyError::TooLarge)
        );
        assert_eq!(read_capped(&b""[..], 0).unwrap(), b"");
    }

    /// What `read_to_end` reports when the buffer cannot grow.
    struct RefusesToGrow;

    impl Read for RefusesToGrow {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::OutOfMemory.into())
        }
    }

    #[test]
    fn a_body_memory_cannot_hold_is_a_413_and_a_broken_stream_a_400() {
        assert_eq!(read_capped(RefusesToGrow, 10), Err(BodyError::OutOfMemory));
        let error = BodyError::OutOfMemory.into_api_error(10);
        assert_eq!((error.status, error.code), (413, "body_too_large"));
        let broken = read_capped(std::io::Cursor::new(b"ab").chain(Broken), 10);
        assert!(matches!(broken, Err(BodyError::Read(_))), "{broken:?}");
        let error = broken.unwrap_err().into_api_error(10);
        assert_eq!((error.status, error.code), (400, "body_unreadable"));
    }

    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::ConnectionReset.into())
        }
    }

    #[test]
    fn repeated_or_binary_headers_are_refused() {
        let head = RequestHead {
            method: Method::Patch,
            path_with_query: None,
            headers: vec![
                ("X-Expect-Status".into(), b"a".to_vec()),
                ("x-expect-status".into(), b"b".to_vec()),
                ("content-type".into(), vec![0xff]),
            ],
        };
        assert_eq!(
            head.header("x-expect-status").unwrap_err().code,
            "invalid_header"
        );
        assert_eq!(
            head.header("Content-Type").unwrap_err().code,
            "invalid_header"
        );
        assert_eq!(head.header("content-length").unwrap(), None);
    }
}
