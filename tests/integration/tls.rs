//! `rediss://`: the TLS component against a real `redis-server --tls-port`, with a CA and
//! server certificate generated for each test.
//!
//! Each server also keeps its plaintext port: the tests check through it, with an
//! independent client, that what went over TLS reached the same server.

use std::time::{Duration, Instant};

use crate::support::{open_with, plain_url, RedisServer, DEFAULT_PREFIX};
use taskstore_host::{
    ErrorKind, ListOptions, Options, Runtime, TaskError, UpdateOptions, COMPONENT,
};
use taskstore_testing::pki::{pki, TestPki};
use taskstore_testing::redis_server::RedisServerBuilder;

const DOC: &str = r#"{"status": "pending", "query": "tls round trip"}"#;
/// Failures against a wrong port must end well within this.
const SHORT_TIMEOUT_MS: u32 = 500;

/// A TLS server whose certificate names 127.0.0.1 and localhost, and the CA that signed it.
fn tls_server_with(builder: RedisServerBuilder) -> (RedisServer, TestPki) {
    let pki = pki("taskstore test CA", &["127.0.0.1", "localhost"]);
    let server = builder
        .tls(pki.server.clone())
        .start()
        .expect("redis-server starts with TLS");
    (server, pki)
}

fn tls_server() -> (RedisServer, TestPki) {
    tls_server_with(RedisServer::builder())
}

fn tls_options(url: String, ca_pem: &str) -> Options {
    Options {
        tls_ca_certificates: Some(ca_pem.to_owned()),
        ..Options::new(url)
    }
}

fn tls_url(server: &RedisServer) -> String {
    server.tls_url().expect("the server listens for TLS")
}

fn expect_connection_error(result: Result<impl std::fmt::Debug, TaskError>) -> String {
    match result {
        Err(error) if error.kind() == ErrorKind::Connection => error.into_message(),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[test]
fn rediss_round_trip_set_get_update_list() {
    let (server, pki) = tls_server();
    let mut store = open_with(tls_options(tls_url(&server), &pki.ca_pem)).expect("TLS open");

    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
    let updated = store
        .update("t1", r#"{"status": "running"}"#, &UpdateOptions::default())
        .unwrap()
        .expect("the task exists");
    assert_eq!(
        updated,
        r#"{"status": "running", "query": "tls round trip"}"#
    );
    let page = store.list(&ListOptions::default()).unwrap();
    assert_eq!(page.tasks.len(), 1);
    assert_eq!(page.tasks[0].document, updated);

    // The same server's plaintext port sees what was written over TLS.
    let mut plain = plain_url(&server.url());
    assert_eq!(
        crate::support::plain_get(&mut plain, &format!("{DEFAULT_PREFIX}t1")),
        Some(updated.into_bytes())
    );
}

#[test]
fn large_documents_cross_tls_intact_in_both_directions() {
    let (server, pki) = tls_server();
    let mut store = open_with(tls_options(tls_url(&server), &pki.ca_pem)).unwrap();
    // Several times rustls's 64 KiB send buffer and its 16 KiB records.
    let filler = "x".repeat(1_000_000);
    let document = format!(r#"{{"status": "big", "filler": "{filler}"}}"#);
    store.set("big", &document, None).unwrap();
    assert_eq!(
        store.get("big").unwrap().as_deref(),
        Some(document.as_str())
    );
}

#[test]
fn auth_over_tls_uses_the_url_password() {
    let (server, pki) = tls_server_with(
        RedisServer::builder()
            .arg("--requirepass")
            .arg("tls-s3cret"),
    );
    let port = server.tls_port().unwrap();
    let url = format!("rediss://:tls-s3cret@127.0.0.1:{port}");
    let mut store = open_with(tls_options(url, &pki.ca_pem)).expect("AUTH over TLS");
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));

    let wrong = format!("rediss://:wrong-pass@127.0.0.1:{port}");
    match open_with(tls_options(wrong, &pki.ca_pem)) {
        Err(error) if error.kind() == ErrorKind::Authentication => {
            let message = error.message();
            assert!(!message.contains("wrong-pass"), "{message}")
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

#[test]
fn untrusted_certificate_is_a_tls_connection_error_never_a_plaintext_fallback() {
    let (server, _pki) = tls_server();
    let other_ca = pki("some other CA", &["127.0.0.1"]);
    let url = format!(
        "rediss://:pw-not-shown@127.0.0.1:{}",
        server.tls_port().unwrap()
    );
    for options in [
        tls_options(url.clone(), &other_ca.ca_pem),
        // No CA given: the web PKI roots, which do not include the test CA either.
        Options::new(url.clone()),
    ] {
        let message = expect_connection_error(open_with(options));
        assert!(message.contains("TLS"), "{message}");
        assert!(message.contains("not signed by a trusted CA"), "{message}");
        assert!(!message.contains("pw-not-shown"), "{message}");
    }
    // Nothing reached Redis as a command: a fallback would have sent AUTH in the clear.
    let mut plain = plain_url(&server.url());
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut plain)
        .unwrap();
    assert!(!stats.contains("cmdstat_auth"), "{stats}");
}

#[test]
fn certificate_for_another_host_name_is_rejected() {
    let pki = pki("taskstore test CA", &["redis.example"]);
    let server = RedisServer::builder()
        .tls(pki.server.clone())
        .start()
        .unwrap();
    let message = expect_connection_error(open_with(tls_options(tls_url(&server), &pki.ca_pem)));
    assert!(message.contains("TLS"), "{message}");
    assert!(message.contains("not valid for the host name"), "{message}");
}

#[test]
fn dns_host_name_is_verified_against_the_certificate() {
    let (server, pki) = tls_server();
    let url = format!("rediss://localhost:{}", server.tls_port().unwrap());
    let mut store = open_with(tls_options(url, &pki.ca_pem)).expect("TLS to localhost");
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn danger_accept_invalid_certificates_connects_to_an_untrusted_server() {
    let pki = pki("taskstore test CA", &["redis.example"]);
    let server = RedisServer::builder()
        .tls(pki.server.clone())
        .start()
        .unwrap();
    let options = Options {
        danger_accept_invalid_certificates: true,
        ..Options::new(tls_url(&server))
    };
    let mut store = open_with(options).expect("unverified TLS");
    store.set("t1", DOC, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn rediss_to_a_plaintext_port_fails_cleanly_within_the_timeout() {
    let (server, pki) = tls_server();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let started = Instant::now();
    let result = open_with(Options {
        timeout_ms: Some(SHORT_TIMEOUT_MS),
        ..tls_options(url, &pki.ca_pem)
    });
    let elapsed = started.elapsed();
    let message = expect_connection_error(result);
    assert!(message.contains("TLS"), "{message}");
    // A bound, not a measurement: the handshake gave up instead of waiting forever.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn plain_redis_to_a_tls_port_fails_cleanly_within_the_timeout() {
    let (server, _pki) = tls_server();
    let url = format!("redis://127.0.0.1:{}", server.tls_port().unwrap());
    let started = Instant::now();
    let result = open_with(Options {
        timeout_ms: Some(SHORT_TIMEOUT_MS),
        ..Options::new(url)
    });
    let elapsed = started.elapsed();
    match result {
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::Connection | ErrorKind::Protocol | ErrorKind::Timeout
            ) => {}
        other => panic!("expected a connection, protocol or timeout error, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn reconnects_over_tls_after_the_server_drops_the_connection() {
    let (server, pki) = tls_server();
    let mut store = open_with(tls_options(tls_url(&server), &pki.ca_pem)).unwrap();
    store.set("t1", DOC, None).unwrap();
    let mut plain = plain_url(&server.url());
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "SKIPME", "yes", "TYPE", "normal"])
        .query(&mut plain)
        .unwrap();
    assert_eq!(killed, 1);
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(DOC));
}

#[test]
fn plain_component_rejects_rediss_and_names_the_tls_build() {
    let (server, pki) = tls_server();
    // A runtime made from the plain bytes is used as it is: no switch to the TLS build.
    let plain = Runtime::builder().component(COMPONENT).build().unwrap();
    match taskstore_host::TaskStore::open(&plain, tls_options(tls_url(&server), &pki.ca_pem)) {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            let message = error.message();
            assert!(message.contains("TLS build"), "{message}")
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn bad_tls_options_are_invalid_input() {
    let (server, pki) = tls_server();
    let cases = [
        // TLS options with a plaintext URL would silently not protect anything.
        tls_options(server.url(), &pki.ca_pem),
        Options {
            danger_accept_invalid_certificates: true,
            ..Options::new(server.url())
        },
        tls_options(tls_url(&server), "not a certificate"),
        Options {
            danger_accept_invalid_certificates: true,
            ..tls_options(tls_url(&server), &pki.ca_pem)
        },
    ];
    for options in cases {
        match open_with(options.clone()) {
            Err(error) if error.kind() == ErrorKind::InvalidInput => {}
            other => panic!("{options:?}: expected invalid input, got {other:?}"),
        }
    }
}
