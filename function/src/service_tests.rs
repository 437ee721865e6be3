//! Every endpoint and every status code, through the fake store and environment.

use serde_json::{json, Value};

use super::*;
use crate::fake::{FakeEnvironment, FakeStorage};
use crate::openapi;
use crate::request::{BodyError, Method};
use taskstore_model::{ErrorKind, TaskError};

const SECRET: &str = "s3cret";
const REDIS_HOST: &str = "10.1.2.3";
/// `uuid_v4` of the fake's first three random draws (bytes 0x11, 0x12, 0x13).
const FIRST_ID: &str = "11111111-1111-4111-9111-111111111111";
const SECOND_ID: &str = "12121212-1212-4212-9212-121212121212";
const THIRD_ID: &str = "13131313-1313-4313-9313-131313131313";

struct Harness {
    env: FakeEnvironment,
    instance: Instance<FakeStorage>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            env: FakeEnvironment::new(),
            instance: Instance::new(),
        }
    }

    /// A harness whose store already holds `tasks`.
    fn with_tasks(tasks: &[(&str, &str)]) -> Harness {
        let mut harness = Harness::new();
        let mut storage = FakeStorage::default();
        for (id, document) in tasks {
            storage.tasks.insert(id.to_string(), document.to_string());
        }
        harness.env.next_storage = Some(storage);
        harness
    }

    fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        self.env.body = body.as_bytes().to_vec();
        let head = RequestHead {
            method,
            path_with_query: Some(path.to_string()),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect(),
        };
        let response = handle(&head, &mut self.env, &mut self.instance);
        let text = String::from_utf8_lossy(&response.body);
        assert!(
            !text.contains(SECRET) && !text.contains(REDIS_HOST),
            "response leaks the Redis URL: {text}"
        );
        for line in &self.env.logs {
            assert!(!line.contains(SECRET), "log leaks the password: {line}");
        }
        assert_documented(&head, &response);
        response
    }

    fn post(&mut self, body: &str) -> Response {
        self.request(
            Method::Post,
            "/research/tasks",
            &[("content-type", "application/json")],
            body,
        )
    }

    fn get(&mut self, path: &str) -> Response {
        self.request(Method::Get, path, &[], "")
    }

    /// A PATCH sent as a client would: with a JSON content type unless `headers` name one.
    fn patch(&mut self, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut headers = headers.to_vec();
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("content-type", "application/json"));
        }
        self.request(Method::Patch, path, &headers, body)
    }

    fn storage(&mut self) -> &mut FakeStorage {
        &mut self
            .instance
            .connected
            .as_mut()
            .expect("the store was opened")
            .storage
    }
}

/// Every response of every test here is held to the published contract: its status (and error
/// code) must be one the document lists for the operation, and so must its content type;
/// responses to paths or methods the document does not have must use a documented error.
fn assert_documented(head: &RequestHead, response: &Response) {
    let document = openapi::tests::document();
    let path = head.path_with_query.as_deref().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let method = match &head.method {
        Method::Get => "get",
        Method::Post => "post",
        Method::Patch => "patch",
        Method::Delete => "delete",
        Method::Other(other) => other.as_str(),
    };
    let template = request::ROUTES
        .iter()
        .map(|(template, _)| *template)
        .find(|template| match template.strip_suffix("{id}") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|id| !id.is_empty() && !id.contains('/')),
            None => path == *template,
        });
    let code = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|body| body["error"]["code"].as_str().map(str::to_string));
    let operation = template.and_then(|template| document["paths"][template].get(method));
    let Some(operation) = operation else {
        // Not an operation of the contract: a documented 404 or 405.
        let code = code.unwrap_or_default();
        assert!(
            (response.status, code.as_str()) == (404, "not_found")
                || (response.status, code.as_str()) == (405, "method_not_allowed"),
            "{method} {path}: {} {code}",
            response.status
        );
        return;
    };
    let documented = openapi::tests::response(&document, operation, response.status)
        .unwrap_or_else(|| panic!("{method} {path}: {} is not documented", response.status));
    match &code {
        Some(code) if response.status >= 400 => assert!(
            openapi::tests::documents_error(&document, operation, response.status, code),
            "{method} {path}: {} {code} is not documented",
            response.status
        ),
        _ => {}
    }
    match documented.get("content") {
        Some(content) => {
            let content_type = response.header("content-type").expect("a content type");
            assert!(
                content.get(content_type).is_some(),
                "{method} {path}: {content_type}"
            );
        }
        None => assert!(
            response.body.is_empty(),
            "{method} {path}: an undocumented body"
        ),
    }
    for (name, header) in documented["headers"].as_object().into_iter().flatten() {
        if header["required"] == true {
            assert!(
                response.header(name).is_some(),
                "{method} {path}: no {name}"
            );
        }
    }
}

fn json_of(response: &Response) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|err| {
        panic!(
            "not JSON ({err}): {}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

fn text_of(response: &Response) -> &str {
    std::str::from_utf8(&response.body).expect("UTF-8 body")
}

/// Asserts an error response's status, code and JSON content type.
fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{}", text_of(response));
    assert_eq!(
        json_of(response)["error"]["code"],
        code,
        "{}",
        text_of(response)
    );
    assert!(json_of(response)["error"]["message"].is_string());
    assert_eq!(response.header("content-type"), Some("application/json"));
}

// ---- POST /research/tasks -------------------------------------------------------------

#[test]
fn create_stores_a_pending_task_and_returns_201_with_location() {
    let mut h = Harness::new();
    let response = h.post(r#"{"query": "wasm cold starts", "depth": 12345678901234567890}"#);
    assert_eq!(response.status, 201, "{}", text_of(&response));
    assert_eq!(
        response.header("location"),
        Some(&*format!("/research/tasks/{FIRST_ID}"))
    );
    let body = json_of(&response);
    assert_eq!(body["task_id"], FIRST_ID);
    assert_eq!(body["status"], "pending");
    assert_eq!(body["created_at"], "2024-02-29T12:34:56.123456+00:00");
    assert_eq!(body["task"]["query"], "wasm cold starts");

    let stored = h
        .storage()
        .tasks
        .get(FIRST_ID)
        .cloned()
        .expect("stored under the id");
    assert_eq!(
        stored,
        format!(
            r#"{{"id": "{FIRST_ID}", "status": "pending", "created_at": "2024-02-29T12:34:56.123456+00:00", "query": "wasm cold starts", "depth": 12345678901234567890}}"#
        )
    );
    assert_eq!(h.storage().calls, [format!("create {FIRST_ID}")]);
    // The original service reads it back by key; so does GET.
    let fetched = h.get(&format!("/research/tasks/{FIRST_ID}"));
    assert_eq!(fetched.status, 200);
    assert_eq!(text_of(&fetched), stored);
}

#[test]
fn create_accepts_json_with_parameters() {
    let mut h = Harness::new();
    let response = h.request(
        Method::Post,
        "/research/tasks",
        &[("Content-Type", "application/vnd.task+json")],
        r#"{"query": "a"}"#,
    );
    assert_eq!(response.status, 201);
    let response = h.request(
        Method::Post,
        "/research/tasks",
        &[("Content-Type", "application/json; charset=utf-8")],
        r#"{"query": "b"}"#,
    );
    assert_eq!(response.status, 201);
    assert_eq!(h.storage().tasks.len(), 2);
}

#[test]
fn create_refuses_bodies_that_are_not_task_objects() {
    for (body, code) in [
        ("", "invalid_json"),
        ("not json", "invalid_json"),
        (r#"["query"]"#, "invalid_json"),
        (r#"{"query": "a", "query": "b"}"#, "invalid_json"),
        (r#"{"depth": 1}"#, "invalid_task"),
        (r#"{"query": ""}"#, "invalid_task"),
        (r#"{"query": "  "}"#, "invalid_task"),
        (r#"{"query": 7}"#, "invalid_task"),
        (r#"{"query": "a", "id": "mine"}"#, "invalid_task"),
        (r#"{"query": "a", "status": "done"}"#, "invalid_task"),
        (r#"{"query": "a", "created_at": "x"}"#, "invalid_task"),
    ] {
        let mut h = Harness::new();
        let response = h.post(body);
        assert_error(&response, 400, code);
        assert!(
            h.storage().calls.is_empty(),
            "{body}: nothing may be written"
        );
    }
}

/// A body without a JSON content type is what any web page can send cross-site without a
/// preflight (`fetch(url, {method: "POST", body})`): refused, for every route with a body.
#[test]
fn bodies_without_a_content_type_are_refused_before_reading_or_connecting() {
    let mut h = Harness::new();
    let response = h.request(Method::Post, "/research/tasks", &[], r#"{"query": "a"}"#);
    assert_error(&response, 415, "unsupported_media_type");
    let response = h.request(Method::Patch, "/research/tasks/t1", &[], r#"{"a": 1}"#);
    assert_error(&response, 415, "unsupported_media_type");
    assert_eq!(h.env.body_reads, 0);
    assert!(h.env.opened.is_empty());
}

#[test]
fn a_large_new_task_is_not_echoed_in_the_201() {
    let mut h = Harness::new();
    let query = "x".repeat(MAX_ECHOED_TASK_BYTES);
    let response = h.post(&json!({ "query": query }).to_string());
    assert_eq!(response.status, 201, "{}", text_of(&response));
    let body = json_of(&response);
    assert_eq!(body["task_id"], FIRST_ID);
    assert_eq!(body["status"], "pending");
    assert!(body.get("task").is_none(), "{body}");
    assert!(response.body.len() < 1024, "{}", response.body.len());
    assert!(h.storage().tasks[FIRST_ID].contains(&query));
}

#[test]
fn create_refuses_non_json_content_types_before_reading_or_connecting() {
    let mut h = Harness::new();
    let response = h.request(
        Method::Post,
        "/research/tasks",
        &[("content-type", "text/plain")],
        r#"{"query": "a"}"#,
    );
    assert_error(&response, 415, "unsupported_media_type");
    assert_eq!(h.env.body_reads, 0);
    assert!(h.env.opened.is_empty());
}

#[test]
fn create_refuses_bodies_over_the_configured_document_size() {
    let mut h = Harness::new();
    h.env
        .config
        .insert("max-document-bytes".into(), "64".into());
    let big = format!(r#"{{"query": "{}"}}"#, "x".repeat(100));
    let response = h.post(&big);
    assert_error(&response, 413, "body_too_large");
    assert!(h.storage().calls.is_empty());

    // A declared length over the limit is refused without reading the body.
    let reads = h.env.body_reads;
    let response = h.request(
        Method::Post,
        "/research/tasks",
        &[
            ("content-type", "application/json"),
            ("content-length", "65"),
        ],
        r#"{"query": "a"}"#,
    );
    assert_error(&response, 413, "body_too_large");
    assert_eq!(h.env.body_reads, reads);
}

#[test]
fn create_refuses_a_task_that_would_exceed_the_document_size() {
    let mut h = Harness::new();
    h.env
        .config
        .insert("max-document-bytes".into(), "64".into());
    // Fits as a body (40 bytes), not once id, status and created_at are added.
    let response = h.post(&format!(r#"{{"query": "{}"}}"#, "x".repeat(27)));
    assert_error(&response, 413, "document_too_large");
    assert!(h.storage().calls.is_empty());
}

#[test]
fn create_draws_a_new_id_when_the_generated_one_exists() {
    let mut h = Harness::with_tasks(&[(FIRST_ID, r#"{"id": "old"}"#)]);
    let response = h.post(r#"{"query": "a"}"#);
    assert_eq!(response.status, 201);
    assert_eq!(json_of(&response)["task_id"], SECOND_ID);
    assert_eq!(
        h.storage().tasks[FIRST_ID],
        r#"{"id": "old"}"#,
        "never overwritten"
    );
    assert!(h.storage().tasks.contains_key(SECOND_ID));
}

#[test]
fn create_gives_up_with_500_when_every_id_collides() {
    let mut h = Harness::with_tasks(&[(FIRST_ID, "{}"), (SECOND_ID, "{}"), (THIRD_ID, "{}")]);
    let response = h.post(r#"{"query": "a"}"#);
    assert_error(&response, 500, "internal");
    assert_eq!(h.storage().tasks.len(), 3);
}

#[test]
fn create_with_a_clock_beyond_year_9999_is_a_500() {
    let mut h = Harness::new();
    h.env.now = (u64::MAX, 0);
    assert_error(&h.post(r#"{"query": "a"}"#), 500, "internal");
}

#[test]
fn unreadable_body_is_a_400() {
    let mut h = Harness::new();
    h.env.body_error = Some(BodyError::Read("stream closed".into()));
    assert_error(&h.post(r#"{"query": "a"}"#), 400, "body_unreadable");
}

// ---- GET /research/tasks/{id} ---------------------------------------------------------

#[test]
fn get_returns_the_stored_text_verbatim() {
    let stored = r#"{"id": "t1", "status": "running", "x": 1e400, "s": "\u00e9"}"#;
    let mut h = Harness::with_tasks(&[("t1", stored)]);
    let response = h.get("/research/tasks/t1");
    assert_eq!(response.status, 200);
    assert_eq!(text_of(&response), stored);
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[test]
fn get_of_an_unknown_task_is_404() {
    let mut h = Harness::new();
    assert_error(&h.get("/research/tasks/nope"), 404, "task_not_found");
}

#[test]
fn get_of_a_value_that_is_not_a_json_object_is_502() {
    let mut h = Harness::with_tasks(&[("t1", "not json"), ("t2", "[1]")]);
    assert_error(&h.get("/research/tasks/t1"), 502, "corrupt_data");
    assert_error(&h.get("/research/tasks/t2"), 502, "corrupt_data");
    assert_eq!(h.env.logs.len(), 2);
}

#[test]
fn get_with_a_malformed_id_is_400_without_touching_the_store() {
    let mut h = Harness::new();
    assert_error(&h.get("/research/tasks/a%00b"), 400, "invalid_id");
    assert!(h.env.opened.is_empty());
}

// ---- GET /research/tasks --------------------------------------------------------------

#[test]
fn list_pages_through_tasks_with_cursors() {
    let mut h = Harness::with_tasks(&[
        ("a", r#"{"id": "a", "status": "pending"}"#),
        ("b", r#"{"id": "b", "status": "done"}"#),
        (
            "c",
            r#"{"id": "c", "status": "pending", "n": 12345678901234567890}"#,
        ),
    ]);
    let first = h.get("/research/tasks?limit=2");
    assert_eq!(first.status, 200);
    let body = json_of(&first);
    assert_eq!(
        body["tasks"],
        json!([{"id": "a", "status": "pending"}, {"id": "b", "status": "done"}])
    );
    assert_eq!(body["next_cursor"], "c");

    let second = h.get("/research/tasks?limit=2&cursor=c");
    let body = json_of(&second);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(body["next_cursor"], Value::Null);
    // Documents are embedded as stored, big numbers included.
    assert!(
        text_of(&second).contains(r#""n": 12345678901234567890"#),
        "{}",
        text_of(&second)
    );
}

#[test]
fn list_filters_by_status_and_defaults_and_caps_the_limit() {
    let mut h = Harness::with_tasks(&[
        ("a", r#"{"status": "pending"}"#),
        ("b", r#"{"status": "done"}"#),
    ]);
    let response = h.get("/research/tasks?status=done");
    assert_eq!(json_of(&response)["tasks"], json!([{"status": "done"}]));
    h.get("/research/tasks?limit=5000");
    assert_eq!(
        h.storage().calls,
        [
            "list Some(\"done\") 100 None".to_string(),
            "list None 1000 None".to_string()
        ]
    );
}

#[test]
fn list_skips_values_that_are_not_json_objects() {
    let mut h = Harness::with_tasks(&[("a", "garbage"), ("b", r#"{"id": "b"}"#)]);
    let response = h.get("/research/tasks");
    assert_eq!(response.status, 200);
    assert_eq!(json_of(&response)["tasks"], json!([{"id": "b"}]));
    assert_eq!(h.env.logs.len(), 1);
}

#[test]
fn list_with_bad_parameters_is_400() {
    let mut h = Harness::new();
    assert_error(&h.get("/research/tasks?limit=0"), 400, "invalid_query");
    assert_error(&h.get("/research/tasks?limit=abc"), 400, "invalid_query");
    assert_error(&h.get("/research/tasks?colour=red"), 400, "invalid_query");
    // The store is the judge of cursors.
    h.env.next_storage = Some(FakeStorage {
        fail_next: Some(TaskError::invalid_input("malformed cursor")),
        ..FakeStorage::default()
    });
    let response = h.get("/research/tasks?cursor=zzz");
    assert_error(&response, 400, "invalid_query");
    assert!(text_of(&response).contains("malformed cursor"));
}

// ---- PATCH /research/tasks/{id} -------------------------------------------------------

#[test]
fn patch_merges_and_returns_the_new_document() {
    let mut h =
        Harness::with_tasks(&[("t1", r#"{"id": "t1", "status": "pending", "progress": 0}"#)]);
    let response = h.patch(
        "/research/tasks/t1",
        &[("content-type", "application/merge-patch+json")],
        r#"{"status": "running", "progress": null, "id": "t1"}"#,
    );
    assert_eq!(response.status, 200, "{}", text_of(&response));
    assert_eq!(json_of(&response), json!({"id": "t1", "status": "running"}));
    assert_eq!(
        json_of(&h.get("/research/tasks/t1")),
        json!({"id": "t1", "status": "running"})
    );
}

#[test]
fn patch_with_a_matching_expected_status_applies() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"status": "pending"}"#)]);
    let response = h.patch(
        "/research/tasks/t1",
        &[("X-Expect-Status", "pending")],
        r#"{"status": "running"}"#,
    );
    assert_eq!(response.status, 200);
    assert_eq!(json_of(&response)["status"], "running");
}

#[test]
fn patch_with_a_mismatched_expected_status_is_409_with_the_current_task() {
    let current = r#"{"id": "t1", "status": "done", "n": 12345678901234567890}"#;
    let mut h = Harness::with_tasks(&[("t1", current)]);
    let response = h.patch(
        "/research/tasks/t1",
        &[("x-expect-status", "pending")],
        r#"{"status": "running"}"#,
    );
    assert_error(&response, 409, "status_conflict");
    assert_eq!(json_of(&response)["task"]["status"], "done");
    assert!(
        text_of(&response).contains(current),
        "{}",
        text_of(&response)
    );
    assert_eq!(h.storage().tasks["t1"], current, "nothing changed");
}

#[test]
fn patch_of_an_unknown_task_is_404() {
    let mut h = Harness::new();
    assert_error(
        &h.patch("/research/tasks/nope", &[], r#"{"a": 1}"#),
        404,
        "task_not_found",
    );
}

#[test]
fn patch_refuses_changing_or_removing_the_id() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"id": "t1"}"#)]);
    for patch in [r#"{"id": "t2"}"#, r#"{"id": null}"#, r#"{"id": 1}"#] {
        assert_error(
            &h.patch("/research/tasks/t1", &[], patch),
            400,
            "immutable_field",
        );
    }
    assert!(h.storage().calls.is_empty());
}

#[test]
fn patch_refuses_bad_bodies_and_headers() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"id": "t1"}"#)]);
    assert_error(
        &h.patch("/research/tasks/t1", &[], "[1]"),
        400,
        "invalid_json",
    );
    assert_error(
        &h.patch("/research/tasks/t1", &[], "{"),
        400,
        "invalid_json",
    );
    assert_error(
        &h.patch("/research/tasks/t1", &[("x-expect-status", "")], "{}"),
        400,
        "invalid_header",
    );
    assert_error(
        &h.patch(
            "/research/tasks/t1",
            &[("x-expect-status", "a"), ("x-expect-status", "b")],
            "{}",
        ),
        400,
        "invalid_header",
    );
    assert_error(
        &h.patch("/research/tasks/t1", &[("content-type", "text/csv")], "{}"),
        415,
        "unsupported_media_type",
    );
    assert!(h.storage().calls.is_empty());
}

#[test]
fn patch_whose_result_the_store_refuses_is_400() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"id": "t1"}"#)]);
    h.get("/research/tasks/t1");
    h.storage().fail_next = Some(TaskError::invalid_input(
        "the document would be 20000 bytes, more than 16384",
    ));
    let response = h.patch("/research/tasks/t1", &[], r#"{"a": 1}"#);
    assert_error(&response, 400, "invalid_input");
    assert!(text_of(&response).contains("more than 16384"));
}

#[test]
fn patch_under_contention_is_503_with_retry_after() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"id": "t1"}"#)]);
    h.get("/research/tasks/t1");
    h.storage().fail_next = Some(TaskError::contended("gave up after 100 attempts"));
    let response = h.patch("/research/tasks/t1", &[], r#"{"a": 1}"#);
    assert_error(&response, 503, "storage_contended");
    assert_eq!(response.header("retry-after"), Some("1"));
}

// ---- DELETE /research/tasks/{id} ------------------------------------------------------

#[test]
fn delete_is_204_then_404() {
    let mut h = Harness::with_tasks(&[("t1", r#"{"id": "t1"}"#)]);
    let response = h.request(Method::Delete, "/research/tasks/t1", &[], "");
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    assert!(h.storage().tasks.is_empty());
    let response = h.request(Method::Delete, "/research/tasks/t1", &[], "");
    assert_error(&response, 404, "task_not_found");
}

// ---- routing --------------------------------------------------------------------------

#[test]
fn unknown_routes_are_404_and_wrong_methods_405_without_touching_the_store() {
    let mut h = Harness::new();
    assert_error(&h.get("/health"), 404, "not_found");
    assert_error(&h.get("/research/tasks/a/b"), 404, "not_found");
    let response = h.request(Method::Other("PUT".into()), "/research/tasks/t1", &[], "{}");
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.header("allow"), Some("GET, PATCH, DELETE"));
    let response = h.request(Method::Delete, "/research/tasks", &[], "");
    assert_error(&response, 405, "method_not_allowed");
    assert_eq!(response.header("allow"), Some("GET, POST"));
    assert!(h.env.opened.is_empty());
    assert_eq!(h.env.body_reads, 0);
}

// ---- storage failures -----------------------------------------------------------------

#[test]
fn storage_failures_map_to_502_and_503() {
    for (err, status, code, retry) in [
        (
            TaskError::connection(format!("{REDIS_HOST}:6379 refused")),
            503,
            "storage_unavailable",
            true,
        ),
        (
            TaskError::timeout(format!("{REDIS_HOST}:6379 timed out")),
            503,
            "storage_timeout",
            true,
        ),
        (
            TaskError::authentication("WRONGPASS"),
            503,
            "storage_authentication",
            false,
        ),
        (
            TaskError::server("LOADING loading the dataset"),
            503,
            "storage_busy",
            true,
        ),
        (
            TaskError::server("WRONGTYPE wrong kind of value"),
            502,
            "storage_server",
            false,
        ),
        (
            TaskError::protocol("bad reply"),
            502,
            "storage_protocol",
            false,
        ),
        (
            TaskError::corrupt_data("not UTF-8"),
            502,
            "corrupt_data",
            false,
        ),
        (
            TaskError::new(ErrorKind::Other, "odd"),
            502,
            "storage_error",
            false,
        ),
    ] {
        let mut h = Harness::new();
        h.env.next_storage = Some(FakeStorage {
            fail_next: Some(err.clone()),
            ..FakeStorage::default()
        });
        let response = h.get("/research/tasks/t1");
        assert_error(&response, status, code);
        assert_eq!(response.header("retry-after").is_some(), retry, "{err:?}");
        assert_eq!(h.env.logs.len(), 1, "{err:?}");
        assert!(h.env.logs[0].contains(err.message()), "{:?}", h.env.logs);
        // The store reconnects by itself: the instance keeps it.
        assert!(h.instance.connected.is_some());
    }
}

// ---- configuration and the per-instance store -----------------------------------------

#[test]
fn the_store_is_opened_once_per_instance_with_the_configured_options() {
    let mut h = Harness::new();
    h.env.config.extend([
        ("key-prefix".to_string(), "rt:".to_string()),
        ("timeout-ms".to_string(), "250".to_string()),
        ("default-ttl-seconds".to_string(), "60".to_string()),
    ]);
    h.post(r#"{"query": "a"}"#);
    h.get("/research/tasks");
    h.get("/research/tasks/x");
    assert_eq!(h.env.opened.len(), 1);
    let settings = &h.env.opened[0];
    assert_eq!(
        settings.redis_url,
        format!("redis://:{SECRET}@{REDIS_HOST}:6379")
    );
    assert_eq!(settings.key_prefix.as_deref(), Some("rt:"));
    assert_eq!(settings.timeout_ms, Some(250));
    assert_eq!(settings.default_ttl_seconds, Some(60));
}

#[test]
fn a_failed_open_is_not_cached() {
    let mut h = Harness::new();
    h.env.open_error = Some(TaskError::connection(format!("{REDIS_HOST}:6379 refused")));
    let response = h.get("/research/tasks/t1");
    assert_error(&response, 503, "storage_unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(h.instance.connected.is_none());
    assert_eq!(h.get("/research/tasks/t1").status, 404);
    assert_eq!(h.env.opened.len(), 1);
}

#[test]
fn open_refusing_the_configured_url_is_a_500_configuration_error() {
    let mut h = Harness::new();
    h.env.open_error = Some(TaskError::invalid_input("invalid port in URL"));
    assert_error(&h.get("/research/tasks/t1"), 500, "configuration");
    assert!(h.instance.connected.is_none());
}

#[test]
fn a_missing_redis_url_is_a_500_configuration_error_until_it_is_set() {
    let mut h = Harness::new();
    h.env.config.clear();
    let response = h.get("/research/tasks/t1");
    assert_error(&response, 500, "configuration");
    assert!(text_of(&response).contains("redis-url"));
    assert!(h.env.opened.is_empty());
    h.env
        .config
        .insert("redis-url".into(), "redis://127.0.0.1".into());
    assert_eq!(h.get("/research/tasks/t1").status, 404);
}

#[test]
fn a_malformed_setting_is_a_500_naming_the_key() {
    let mut h = Harness::new();
    h.env.config.insert("timeout-ms".into(), "5s".into());
    let response = h.get("/research/tasks/t1");
    assert_error(&response, 500, "configuration");
    assert!(text_of(&response).contains("timeout-ms"));
}

#[test]
fn a_failing_config_source_is_a_503() {
    let mut h = Harness::new();
    h.env.config_error = Some("config backend down".into());
    let response = h.get("/research/tasks/t1");
    assert_error(&response, 503, "configuration_unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(!text_of(&response).contains("backend down"));
    assert!(h.env.logs[0].contains("backend down"));
}

// ---- the contract and the probes -------------------------------------------------------

#[test]
fn the_contract_is_served_as_json_without_configuration_or_the_store() {
    let mut h = Harness::new();
    h.env.config_error = Some("vault sealed".into());
    let response = h.get("/research/openapi.json");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(text_of(&response), openapi::DOCUMENT);
    assert_eq!(json_of(&response)["openapi"], "3.1.0");
    assert!(h.env.opened.is_empty());
    let refused = h.request(Method::Post, "/research/openapi.json", &[], "");
    assert_error(&refused, 405, "method_not_allowed");
    assert_eq!(refused.header("allow"), Some("GET"));
    assert_error(&h.get("/research/openapi.json?x=1"), 400, "invalid_query");
}

#[test]
fn healthz_answers_without_configuration_or_the_store() {
    let mut h = Harness::new();
    h.env.config_error = Some("vault sealed".into());
    h.env.open_error = Some(TaskError::connection("refused"));
    let response = h.get("/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(json_of(&response), json!({"status": "ok"}));
    assert!(h.env.opened.is_empty() && h.instance.readiness.is_none());
    let refused = h.request(Method::Delete, "/healthz", &[], "");
    assert_error(&refused, 405, "method_not_allowed");
}

#[test]
fn readyz_pings_a_store_of_its_own_with_the_readiness_deadline() {
    let mut h = Harness::new();
    let response = h.get("/readyz");
    assert_eq!(response.status, 200, "{}", text_of(&response));
    assert_eq!(json_of(&response), json!({"status": "ok"}));
    assert_eq!(h.env.opened.len(), 1);
    assert_eq!(h.env.opened[0].timeout_ms, Some(READINESS_TIMEOUT_MS));
    // The probe's store is kept, and is not the requests' one.
    assert_eq!(h.get("/readyz").status, 200);
    assert_eq!(
        h.instance.readiness.as_ref().expect("kept").calls,
        ["ping", "ping"]
    );
    assert!(h.instance.connected.is_none());
    h.post(r#"{"query": "q"}"#);
    assert_eq!(h.env.opened.len(), 2);
    assert_eq!(h.env.opened[1].timeout_ms, None);
    assert_eq!(h.storage().calls, [format!("create {FIRST_ID}")]);
}

#[test]
fn readyz_keeps_a_shorter_configured_timeout() {
    let mut h = Harness::new();
    h.env.config.insert("timeout-ms".into(), "250".into());
    assert_eq!(h.get("/readyz").status, 200);
    assert_eq!(h.env.opened[0].timeout_ms, Some(250));
}

#[test]
fn readyz_is_503_with_the_reason_while_redis_cannot_answer() {
    for (err, code) in [
        (TaskError::connection("refused"), "storage_unavailable"),
        (TaskError::timeout("slow"), "storage_timeout"),
        (
            TaskError::server("LOADING Redis is loading"),
            "storage_busy",
        ),
        (
            TaskError::authentication("WRONGPASS"),
            "storage_authentication",
        ),
    ] {
        // Failing the ping of an open store...
        let mut h = Harness::new();
        assert_eq!(h.get("/readyz").status, 200);
        h.instance.readiness.as_mut().unwrap().fail_next = Some(err.clone());
        let response = h.get("/readyz");
        assert_error(&response, 503, code);
        // ...and the store recovers by itself: it is kept.
        assert_eq!(h.get("/readyz").status, 200, "{code}");
        // Failing the open: nothing is kept, the next probe opens again.
        let mut h = Harness::new();
        h.env.open_error = Some(err);
        assert_error(&h.get("/readyz"), 503, code);
        assert!(h.instance.readiness.is_none());
        assert_eq!(h.get("/readyz").status, 200, "{code}");
    }
    let mut h = Harness::new();
    h.env.config.remove("redis-url");
    assert_error(&h.get("/readyz"), 500, "configuration");
    let mut h = Harness::new();
    h.env.config_error = Some("vault sealed".into());
    let response = h.get("/readyz");
    assert_error(&response, 503, "configuration_unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
}
