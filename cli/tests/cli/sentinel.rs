//! `--redis redis+sentinel://…`: the binary (commands and `serve`) finds the master through
//! the sentinels, with the data and sentinel passwords each from its own file.

use crate::run::taskstore;
use crate::serve::{agent, get, post, Serve};
use taskstore_testing::redis_sentinel::{RedisSentinel, SentinelPasswords};

const DOC: &str = r#"{"id": "t1", "status": "pending"}"#;

#[test]
fn a_sentinel_url_with_both_password_files_reaches_the_master() {
    let data = "D4ta/Zp2@Pass";
    let sentinel_password = "S3nt/Zp2@Pass";
    let sentinel = RedisSentinel::start_with(SentinelPasswords {
        data: Some(data.into()),
        sentinel: Some(sentinel_password.into()),
    })
    .expect("a master, a replica and 3 sentinels start");
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("redis-password");
    std::fs::write(&data_file, format!("{data}\n")).unwrap();
    let sentinel_file = dir.path().join("sentinel-password");
    std::fs::write(&sentinel_file, format!("{sentinel_password}\n")).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "Wr0ng/Zp2").unwrap();
    let url = sentinel.url();
    let with = |sentinel_file: &std::path::Path, args: &[&str]| {
        let mut all = vec![
            "--redis",
            url.as_str(),
            "--redis-password-file",
            data_file.to_str().unwrap(),
            "--sentinel-password-file",
            sentinel_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        taskstore(&all, &[], "")
    };

    let set = with(&sentinel_file, &["set", "t1", DOC]);
    assert_eq!(set.code, 0, "{set:?}");
    let get = with(&sentinel_file, &["get", "t1"]);
    assert_eq!(get.code, 0, "{get:?}");
    assert_eq!(get.stdout.trim_end(), DOC);

    let refused = with(&wrong_file, &["get", "t1"]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(refused.stderr.contains("sentinel password"), "{refused:?}");
    assert!(!refused.stderr.contains("Zp2"), "{refused:?}");
}

/// `taskstore serve --redis redis+sentinel://…`: the function's `redis-url` is the Sentinel
/// URL (with both passwords written in by `serve` only), and the host admits the master the
/// sentinels report.
#[test]
fn serve_reaches_the_master_through_the_sentinels() {
    let data = "D4ta/Zp2@Pass";
    let sentinel_password = "S3nt/Zp2@Pass";
    let sentinel = RedisSentinel::start_with(SentinelPasswords {
        data: Some(data.into()),
        sentinel: Some(sentinel_password.into()),
    })
    .expect("a master, a replica and 3 sentinels start");
    let dir = tempfile::tempdir().unwrap();
    let data_file = dir.path().join("redis-password");
    std::fs::write(&data_file, data).unwrap();
    let sentinel_file = dir.path().join("sentinel-password");
    std::fs::write(&sentinel_file, sentinel_password).unwrap();
    let serve = Serve::start(
        &sentinel.url(),
        &[
            "--redis-password-file",
            data_file.to_str().unwrap(),
            "--sentinel-password-file",
            sentinel_file.to_str().unwrap(),
        ],
    );
    let agent = agent();
    let created = post(&agent, &serve.url("/research/tasks"), r#"{"query": "ha"}"#);
    assert_eq!(created.status, 201, "{created:?}");
    assert!(!created.body.contains("Zp2"), "{created:?}");
    let id = created
        .body
        .split('"')
        .skip_while(|part| *part != "task_id")
        .nth(2)
        .expect("a task_id in the reply")
        .to_owned();
    let read = get(&agent, &serve.url(&format!("/research/tasks/{id}")));
    assert_eq!(read.status, 200, "{read:?}");
    assert!(read.body.contains("\"ha\""), "{read:?}");
}
