//! A `wasi:http` application on `wasi:keyvalue@0.2.0-draft2`, for `taskstore serve
//! --component` once composed. Every route uses the bucket `app` (so `serve` must allow it
//! through the key-value component's `buckets`):
//!
//! - `PUT /kv/{key}`: the body becomes the value; 204.
//! - `GET /kv/{key}`: 200 with the value, or 404.
//! - `POST /kv/{key}/incr`: `increment` by 1; 200 with the new value as text.
//!
//! Anything else is 404 or 405; a key-value error is 500 with the error as the body.

#[cfg(target_arch = "wasm32")]
mod app {
    use std::io::Write as _;

    use ::wasi::exports::http::incoming_handler::Guest;
    use ::wasi::http::types::{
        Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };

    wit_bindgen::generate!({
        path: [
            "../../wit/deps/keyvalue-0.2.0-draft2",
            "../../wit/deps/keyvalue-0.2.0-draft",
            "wit",
        ],
        world: "taskstore:kv-consumer/http-draft2@0.1.0",
        generate_all,
    });

    use self::wasi::keyvalue0_2_0_draft2::{atomics, store};

    const BUCKET: &str = "app";

    struct App;

    impl Guest for App {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let (status, body) = route(&request);
            send(status, &body, response_out);
        }
    }

    ::wasi::http::proxy::export!(App);

    fn route(request: &IncomingRequest) -> (u16, Vec<u8>) {
        let path = request.path_with_query().unwrap_or_default();
        let Some(rest) = path.strip_prefix("/kv/") else {
            return (404, b"no such route".to_vec());
        };
        let (key, incr) = match rest.strip_suffix("/incr") {
            Some(key) => (key, true),
            None => (rest, false),
        };
        if key.is_empty() || key.contains('/') {
            return (404, b"no such route".to_vec());
        }
        let bucket = match store::open(BUCKET) {
            Ok(bucket) => bucket,
            Err(err) => return failed("open", err),
        };
        match (request.method(), incr) {
            (Method::Put, false) => match read_body(request) {
                Ok(value) => match bucket.set(key, &value) {
                    Ok(()) => (204, Vec::new()),
                    Err(err) => failed("set", err),
                },
                Err(message) => (400, message.into_bytes()),
            },
            (Method::Get, false) => match bucket.get(key) {
                Ok(Some(value)) => (200, value),
                Ok(None) => (404, b"absent".to_vec()),
                Err(err) => failed("get", err),
            },
            (Method::Post, true) => match atomics::increment(&bucket, key, 1) {
                Ok(value) => (200, value.to_string().into_bytes()),
                Err(err) => failed("increment", err),
            },
            _ => (405, b"method not allowed".to_vec()),
        }
    }

    fn failed(step: &str, err: store::Error) -> (u16, Vec<u8>) {
        (500, format!("{step}: {err:?}").into_bytes())
    }

    fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
        let body = request.consume().map_err(|()| "no request body")?;
        let stream = body.stream().map_err(|()| "the body stream was taken")?;
        let mut value = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => value.extend_from_slice(&chunk),
                Err(::wasi::io::streams::StreamError::Closed) => break,
                Err(err) => return Err(format!("reading the body: {err:?}")),
            }
        }
        // The stream is a child of the body: it must go first.
        drop(stream);
        drop(body);
        Ok(value)
    }

    /// Writes the response. A failure past `ResponseOutparam::set` means the client went away;
    /// there is no one left to tell.
    fn send(status: u16, body: &[u8], response_out: ResponseOutparam) {
        let outgoing = OutgoingResponse::new(Fields::new());
        let _ = outgoing.set_status_code(status);
        let Ok(outgoing_body) = outgoing.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(outgoing));
        if !body.is_empty() {
            let Ok(mut stream) = outgoing_body.write() else {
                return;
            };
            let _ = stream
                .write_all(body)
                .and_then(|()| std::io::Write::flush(&mut stream));
            drop(stream);
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}
