//! The `taskstore` binary over `rediss://`, against a private TLS `redis-server`, and over
//! `rediss+cluster://`, against a private 3-master cluster with TLS on every node.

use crate::run::Run;
use taskstore::cluster::key_slot;
use taskstore_testing::redis_cluster::RedisCluster;
use taskstore_testing::redis_server::RedisServer;

/// Runs `taskstore` with `args`.
fn taskstore(args: &[&str]) -> Run {
    crate::run::taskstore(args, &[], "")
}

#[test]
fn rediss_with_the_right_ca_works_and_a_wrong_ca_exits_3_with_a_tls_error() {
    let pki = taskstore_testing::pki::pki("taskstore CLI test CA", &["127.0.0.1"]);
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("cli-s3cret")
        .tls(pki.server.clone())
        .start()
        .expect("redis-server starts with TLS");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let wrong_ca_file = dir.path().join("wrong-ca.pem");
    std::fs::write(
        &wrong_ca_file,
        taskstore_testing::pki::pki("another CA", &["127.0.0.1"]).ca_pem,
    )
    .unwrap();
    let url = format!(
        "rediss://:cli-s3cret@127.0.0.1:{}",
        server.tls_port().unwrap()
    );
    let ca = ca_file.to_str().unwrap();

    let set = taskstore(&[
        "--redis",
        &url,
        "--tls-ca-file",
        ca,
        "set",
        "t1",
        r#"{"status":"pending"}"#,
    ]);
    assert_eq!(set.code, 0, "{}", set.stderr);
    let get = taskstore(&["--redis", &url, "--tls-ca-file", ca, "get", "t1"]);
    assert_eq!(
        (get.code, get.stdout.as_str()),
        (0, "{\"status\":\"pending\"}\n"),
        "{}",
        get.stderr
    );

    let wrong = taskstore(&[
        "--redis",
        &url,
        "--tls-ca-file",
        wrong_ca_file.to_str().unwrap(),
        "get",
        "t1",
    ]);
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("TLS"), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("not signed by a trusted CA"),
        "{}",
        wrong.stderr
    );
    assert!(!wrong.stderr.contains("cli-s3cret"), "{}", wrong.stderr);
    assert_eq!(wrong.stdout, "");

    let unreadable = taskstore(&[
        "--redis",
        &url,
        "--tls-ca-file",
        "/no/such/ca.pem",
        "get",
        "t1",
    ]);
    assert_eq!(unreadable.code, 2, "{}", unreadable.stderr);
    assert!(
        unreadable.stderr.contains("/no/such/ca.pem"),
        "{}",
        unreadable.stderr
    );
}

#[test]
fn danger_flag_connects_without_verification_and_warns() {
    let pki = taskstore_testing::pki::pki("taskstore CLI test CA", &["redis.example"]);
    let server = RedisServer::builder()
        .tls(pki.server.clone())
        .start()
        .unwrap();
    let url = server.tls_url().unwrap();
    let run = taskstore(&[
        "--redis",
        &url,
        "--danger-accept-invalid-certificates",
        "exists",
        "t1",
    ]);
    // Connected (no such task: exit 1, `false`), and said loudly that nothing was verified.
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (1, "false\n"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("WARNING"), "{}", run.stderr);
}

#[test]
fn rediss_cluster_url_reaches_every_master_over_tls() {
    let pki = taskstore_testing::pki::pki("taskstore CLI cluster CA", &["127.0.0.1"]);
    let cluster = RedisCluster::start_tls(3, pki.server.clone())
        .expect("a 3-master TLS redis cluster starts");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let ca = ca_file.to_str().unwrap();
    // One seed in the URL; one task id per master, found by hash slot.
    let url = cluster.seed_url(0);
    let owners = cluster.slot_owners().unwrap();
    let ids: Vec<String> = (0..3)
        .map(|node| {
            (0..10_000)
                .map(|n| format!("task-{n}"))
                .find(|id| {
                    let key = format!("research_task:{id}");
                    owners[usize::from(key_slot(key.as_bytes()))] == Some(node)
                })
                .expect("an id on every node")
        })
        .collect();
    for id in &ids {
        let doc = format!(r#"{{"id":"{id}"}}"#);
        let set = taskstore(&["--redis", &url, "--tls-ca-file", ca, "set", id, &doc]);
        assert_eq!(set.code, 0, "{}", set.stderr);
        let get = taskstore(&["--redis", &url, "--tls-ca-file", ca, "get", id]);
        assert_eq!(
            (get.code, get.stdout),
            (0, format!("{doc}\n")),
            "{}",
            get.stderr
        );
    }
    for node in 0..3 {
        let size = cluster.command(node, &[b"DBSIZE"]).unwrap();
        assert_eq!(size, b":1\r\n", "node {node}");
    }
    let wrong_ca = dir.path().join("wrong-ca.pem");
    std::fs::write(
        &wrong_ca,
        taskstore_testing::pki::pki("another CA", &["127.0.0.1"]).ca_pem,
    )
    .unwrap();
    let wrong = taskstore(&[
        "--redis",
        &url,
        "--tls-ca-file",
        wrong_ca.to_str().unwrap(),
        "get",
        &ids[0],
    ]);
    assert_eq!(wrong.code, 3, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("TLS"), "{}", wrong.stderr);
}
