//! `wasi:keyvalue` for any component: the test applications (`testing/kv-consumer`, one per
//! WIT version, written only against `wasi:keyvalue`) composed with the key-value component
//! and run through the host, against a real redis-server and a real 3-master cluster.
//!
//! Each application prints what a test checks (`ok <step>`, `swapped`, `key <k>`, ...) and
//! fails with `FAIL <step>: ...` and exit 1 when one of its own checks fails.

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use crate::support::{plain, plain_get, plain_set, plain_url, server};
use taskstore_host::keyvalue::{compose, run_command, test_consumers, RunConfig, RunOutcome};
use taskstore_testing::redis_cluster::RedisCluster;
use taskstore_testing::redis_server::RedisServer;

/// Runs `component` (composed) with `args`, the Redis URL and the buckets given, capturing
/// its output.
fn run(component: &[u8], url: &str, buckets: &str, args: &[&str]) -> RunOutcome {
    run_with(component, url, &[("buckets", buckets)], args)
}

fn run_with(component: &[u8], url: &str, vars: &[(&str, &str)], args: &[&str]) -> RunOutcome {
    let mut config = RunConfig::new(url);
    for (key, value) in vars {
        config
            .config_vars
            .insert((*key).to_owned(), (*value).to_owned());
    }
    config.args = args.iter().map(|arg| (*arg).to_owned()).collect();
    config.capture_output = Some(1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(run_command(component, &config, None))
        .expect("the command runs")
}

fn stdout(outcome: &RunOutcome) -> String {
    String::from_utf8_lossy(&outcome.stdout).into_owned()
}

fn draft2() -> Vec<u8> {
    compose(test_consumers::DRAFT2).expect("the draft2 application composes")
}

fn draft() -> Vec<u8> {
    compose(test_consumers::DRAFT).expect("the draft application composes")
}

fn assert_suite_passed(outcome: &RunOutcome, steps: &[&str]) {
    let out = stdout(outcome);
    assert_eq!(
        outcome.exit_code,
        0,
        "{out}\n{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    for step in steps {
        assert!(
            out.contains(&format!("ok {step}")),
            "no `ok {step}` in\n{out}"
        );
    }
    assert!(out.contains("suite passed"), "{out}");
}

const DRAFT2_STEPS: &[&str] = &[
    "binary",
    "empty",
    "large",
    "exists-delete",
    "increment",
    "cas",
    "batch",
    "list-keys 2507 keys",
];
const DRAFT_STEPS: &[&str] = &[
    "binary",
    "empty",
    "large",
    "exists-delete",
    "increment",
    "batch",
    "list-keys 2504 keys",
];

#[test]
fn the_draft2_application_runs_every_function_on_redis() {
    let server = server();
    let outcome = run(&draft2(), &server.url(), "app=suite2/", &["suite", "app"]);
    assert_suite_passed(&outcome, DRAFT2_STEPS);
    // What it stored is plain Redis under the bucket's prefix, for any other client to read.
    let mut con = plain(&server);
    assert_eq!(plain_get(&mut con, "suite2/empty"), Some(Vec::new()));
    assert_eq!(plain_get(&mut con, "suite2/counter"), Some(b"-2".to_vec()));
    assert_eq!(plain_get(&mut con, "suite2/cas"), Some(b"4".to_vec()));
    assert_eq!(
        plain_get(&mut con, "suite2/large").map(|v| v.len()),
        Some(4 * 1024 * 1024 + 7)
    );
}

#[test]
fn the_draft_application_runs_every_function_on_redis() {
    let server = server();
    let outcome = run(&draft(), &server.url(), "app", &["suite", "app"]);
    assert_suite_passed(&outcome, DRAFT_STEPS);
    let mut con = plain(&server);
    assert_eq!(plain_get(&mut con, "app:counter"), Some(b"7".to_vec()));
    assert_eq!(plain_get(&mut con, "app:text"), Some(b"abc".to_vec()));
}

#[test]
fn both_applications_run_every_function_on_a_cluster() {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let url = cluster.seed_url(0);
    assert_suite_passed(
        &run(&draft2(), &url, "new", &["suite", "new"]),
        DRAFT2_STEPS,
    );
    assert_suite_passed(&run(&draft(), &url, "old", &["suite", "old"]), DRAFT_STEPS);
    // The list keys were spread over every master, so listing crossed all of them.
    for index in 0..3 {
        let mut con = plain_url(&format!("redis://{}", cluster.nodes()[index].addr()));
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("new:list-*")
            .query(&mut con)
            .unwrap();
        assert!(
            keys.len() > 500,
            "node {index} holds {} list keys",
            keys.len()
        );
    }
}

#[test]
fn a_cas_race_between_two_instances_has_one_winner_and_loses_no_write() {
    let server = server();
    let composed = draft2();
    let url = server.url();
    plain_set(&mut plain(&server), "race:k", "start");
    let racers: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|value| {
            let (composed, url) = (composed.clone(), url.clone());
            thread::spawn(move || run(&composed, &url, "race", &["cas-race", "race", "k", value]))
        })
        .collect();
    let outcomes: Vec<String> = racers
        .into_iter()
        .map(|racer| stdout(&racer.join().unwrap()))
        .collect();
    let winners: Vec<&String> = outcomes.iter().filter(|o| o.trim() == "swapped").collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let stored = plain_get(&mut plain(&server), "race:k").unwrap();
    let stored = String::from_utf8(stored).unwrap();
    // The loser was told, with the winner's value; the winner's write stands.
    let loser = outcomes.iter().find(|o| o.trim() != "swapped").unwrap();
    assert_eq!(loser.trim(), format!("cas-failed {stored}"), "{outcomes:?}");
    assert!(stored == "left" || stored == "right", "{stored}");
}

#[test]
fn cas_increments_from_many_instances_lose_no_write() {
    let server = server();
    let composed = draft2();
    let url = server.url();
    let (instances, times) = (4, 25);
    let workers: Vec<_> = (0..instances)
        .map(|_| {
            let (composed, url) = (composed.clone(), url.clone());
            thread::spawn(move || {
                run(
                    &composed,
                    &url,
                    "cas",
                    &["cas-incr", "cas", "n", &times.to_string()],
                )
            })
        })
        .collect();
    for worker in workers {
        let outcome = worker.join().unwrap();
        assert_eq!(outcome.exit_code, 0, "{}", stdout(&outcome));
        assert!(
            stdout(&outcome).starts_with("done "),
            "{}",
            stdout(&outcome)
        );
    }
    let total = plain_get(&mut plain(&server), "cas:n").unwrap();
    assert_eq!(total, (instances * times).to_string().into_bytes());
}

#[test]
fn increments_from_many_instances_of_both_versions_sum_exactly() {
    let server = server();
    let (new, old) = (draft2(), draft());
    let url = server.url();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let composed = if i % 2 == 0 { new.clone() } else { old.clone() };
            let url = url.clone();
            thread::spawn(move || run(&composed, &url, "count", &["incr", "count", "n", "50"]))
        })
        .collect();
    for worker in workers {
        let outcome = worker.join().unwrap();
        assert_eq!(outcome.exit_code, 0, "{}", stdout(&outcome));
    }
    assert_eq!(
        plain_get(&mut plain(&server), "count:n"),
        Some(b"400".to_vec())
    );
}

/// Keys present for the whole listing are all listed, while other keys of the bucket are
/// deleted underneath it, page after page (both versions' cursors).
#[test]
fn listing_while_keys_are_deleted_lists_every_key_present_throughout() {
    for composed in [draft2(), draft()] {
        let server = server();
        let mut con = plain(&server);
        let stable: Vec<String> = (0..3000).map(|i| format!("stable-{i}")).collect();
        let volatile: Vec<String> = (0..3000).map(|i| format!("volatile-{i}")).collect();
        for key in stable.iter().chain(&volatile) {
            plain_set(&mut con, &format!("lst:{key}"), "v");
        }
        let url = server.url();
        let lister = thread::spawn(move || run(&composed, &url, "lst", &["list", "lst", "30"]));
        for key in &volatile {
            let () = redis::cmd("DEL")
                .arg(format!("lst:{key}"))
                .query(&mut con)
                .unwrap();
            thread::sleep(Duration::from_micros(50));
        }
        let outcome = lister.join().unwrap();
        let out = stdout(&outcome);
        assert_eq!(outcome.exit_code, 0, "{out}");
        let listed: BTreeSet<&str> = out.lines().filter_map(|l| l.strip_prefix("key ")).collect();
        let missing: Vec<&String> = stable
            .iter()
            .filter(|key| !listed.contains(key.as_str()))
            .collect();
        assert!(missing.is_empty(), "{} stable keys missed", missing.len());
        let pages: usize = out
            .lines()
            .find_map(|l| l.strip_prefix("pages "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(pages >= 3, "{pages} pages: the deletes did not interleave");
    }
}

#[test]
fn a_bucket_that_is_not_configured_is_no_such_store() {
    let server = server();
    for composed in [draft2(), draft()] {
        let outcome = run(
            &composed,
            &server.url(),
            "allowed,other=x:",
            &["open", "secret"],
        );
        assert_eq!(outcome.exit_code, 1, "{}", stdout(&outcome));
        assert_eq!(stdout(&outcome).trim(), "open-error Error::NoSuchStore");
        let outcome = run(
            &composed,
            &server.url(),
            "allowed,other=x:",
            &["open", "other"],
        );
        assert_eq!(stdout(&outcome).trim(), "opened");
    }
    // Without `buckets`, only `default`.
    let outcome = run_with(&draft2(), &server.url(), &[], &["open", "app"]);
    assert_eq!(stdout(&outcome).trim(), "open-error Error::NoSuchStore");
    let outcome = run_with(&draft2(), &server.url(), &[], &["open", "default"]);
    assert_eq!(stdout(&outcome).trim(), "opened");
}

#[test]
fn a_wrong_password_is_an_error_that_never_shows_it() {
    let server = RedisServer::builder()
        .arg("--requirepass")
        .arg("right-password")
        .start()
        .unwrap();
    for password in ["hunter2-wrong", "wrong password with spaces"] {
        let outcome = run_with(
            &draft2(),
            &server.url(),
            &[("redis-password", password), ("buckets", "b")],
            &["open", "b"],
        );
        let out = stdout(&outcome);
        assert_eq!(outcome.exit_code, 1, "{out}");
        assert!(out.contains("authentication"), "{out}");
        let shown = out.replace("open-error", "");
        assert!(!shown.contains(password), "{out}");
    }
    let outcome = run_with(
        &draft2(),
        &server.url(),
        &[("redis-password", "right-password"), ("buckets", "b")],
        &["open", "b"],
    );
    assert_eq!(stdout(&outcome).trim(), "opened");
}

#[test]
fn compose_refuses_a_keyvalue_version_it_does_not_export() {
    // The draft2 application with its imports renamed to a version nobody exports (the same
    // length, so the binary stays valid).
    let renamed = replace_all(test_consumers::DRAFT2, b"@0.2.0-draft2", b"@0.2.0-draft9");
    let err = compose(&renamed).unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("wasi:keyvalue/store@0.2.0-draft9")
            && message.contains("@0.2.0-draft2 and @0.2.0-draft only"),
        "{message}"
    );
    // A composed component imports no keyvalue any more: nothing to plug.
    let err = compose(&draft2()).unwrap_err();
    assert!(
        format!("{err:#}").contains("imports no wasi:keyvalue"),
        "{err:#}"
    );
}

#[test]
fn the_sandbox_refuses_an_address_not_in_the_url() {
    let allowed = server();
    let other = server();
    let outcome = run(
        &draft2(),
        &allowed.url(),
        "b",
        &["connect", &other.addr().to_string()],
    );
    let out = stdout(&outcome);
    assert!(out.starts_with("refused"), "{out}");
    let outcome = run(
        &draft2(),
        &allowed.url(),
        "b",
        &["connect", &allowed.addr().to_string()],
    );
    assert_eq!(stdout(&outcome).trim(), "connected");
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = haystack.to_vec();
    let mut replaced = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            replaced += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced >= 3, "{replaced} replaced");
    out
}
