//! The component against a real Redis Sentinel deployment: a master, a replica and three
//! `redis-server --sentinel` processes on loopback ports (`taskstore_testing::redis_sentinel`).
//!
//! A store opened with a `redis+sentinel://` URL finds the master through the sentinels and
//! follows a failover — forced (`SENTINEL FAILOVER`) or after the master is killed — without
//! being opened again. Replication is asynchronous, so writes acknowledged in the failover
//! window can be lost; the tests count and print them, and assert zero only where Redis
//! guarantees it: writes acknowledged after the failover, and with `wait-replicas`, every
//! write whose acknowledgement the replica gave.

use std::time::{Duration, Instant};

use crate::support::{open_with, plain_url};
use taskstore_host::{ErrorKind, ListOptions, Options, Runtime, Task, TaskStore, COMPONENT};
use taskstore_testing::pki::pki;
use taskstore_testing::redis_sentinel::{RedisSentinel, SentinelPasswords};

const DATA_PASSWORD: &str = "D4ta/Pa55@word";
const SENTINEL_PASSWORD: &str = "Sent1nel/Pa55@word";
/// Writes before a failover is started, and at least this many after it completed.
const WRITES_AROUND: usize = 30;
/// Longest a writer keeps going through one failover.
const WRITER_LIMIT: Duration = Duration::from_secs(40);

fn deployment() -> RedisSentinel {
    RedisSentinel::start().expect("a master, a replica and 3 sentinels start (scripts/setup.sh)")
}

fn doc(id: &str, n: usize) -> String {
    format!(r#"{{"id": "{id}", "status": "pending", "n": {n}}}"#)
}

/// One write the writer attempted: when it started and whether it was acknowledged.
struct Write {
    id: String,
    started: Instant,
    acknowledged: bool,
}

/// What a writer saw through one failover.
struct Run {
    writes: Vec<Write>,
    /// When the failover was seen complete (`is_done` first true).
    done_at: Instant,
}

impl Run {
    fn acknowledged(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter().filter(|write| write.acknowledged)
    }

    /// Acknowledged writes that `store` cannot read back now.
    fn lost(&self, store: &mut TaskStore) -> Vec<String> {
        self.acknowledged()
            .filter(|write| store.get(&write.id).expect("read back").is_none())
            .map(|write| write.id.clone())
            .collect()
    }
}

/// Writes tasks one after another: [`WRITES_AROUND`] writes, then `start` (the failover),
/// then on until `is_done` holds and [`WRITES_AROUND`] more writes were acknowledged after.
/// Every failed write must be one that may be retried.
fn write_through(
    store: &mut TaskStore,
    start: impl FnOnce(),
    mut is_done: impl FnMut() -> bool,
) -> Run {
    let mut writes = Vec::new();
    let write = |writes: &mut Vec<Write>, store: &mut TaskStore, n: usize| {
        let id = format!("w-{n:05}");
        let started = Instant::now();
        let outcome = store.set(&id, &doc(&id, n), None);
        if let Err(error) = &outcome {
            assert!(error.is_retryable(), "write {n}: {error}");
        }
        writes.push(Write {
            id,
            started,
            acknowledged: outcome.is_ok(),
        });
    };
    for n in 0..WRITES_AROUND {
        write(&mut writes, store, n);
    }
    start();
    let limit = Instant::now() + WRITER_LIMIT;
    let mut done_at = None;
    let mut n = WRITES_AROUND;
    loop {
        write(&mut writes, store, n);
        n += 1;
        if done_at.is_none() && is_done() {
            done_at = Some(Instant::now());
        }
        if let Some(done) = done_at {
            let after = writes
                .iter()
                .filter(|w| w.acknowledged && w.started > done)
                .count();
            if after >= WRITES_AROUND {
                break;
            }
        }
        assert!(
            Instant::now() < limit,
            "the writer did not get {WRITES_AROUND} writes through after the failover within \
             {WRITER_LIMIT:?} (failover seen: {})",
            done_at.is_some()
        );
    }
    Run {
        writes,
        done_at: done_at.expect("the loop ends after the failover"),
    }
}

/// Every write acknowledged after the failover completed is readable; prints what was lost
/// in the window.
fn assert_nothing_lost_after(run: &Run, store: &mut TaskStore, what: &str) {
    let lost = run.lost(store);
    let after: Vec<&Write> = run
        .acknowledged()
        .filter(|write| write.started > run.done_at)
        .collect();
    assert!(after.len() >= WRITES_AROUND);
    for write in &after {
        assert!(
            !lost.contains(&write.id),
            "{}, acknowledged after the failover, is lost",
            write.id
        );
    }
    let failed = run.writes.iter().filter(|w| !w.acknowledged).count();
    println!(
        "{what}: {} writes, {} acknowledged ({} after the failover), {failed} failed \
         (reported as such), {} acknowledged but lost in the window (first: {:?})",
        run.writes.len(),
        run.acknowledged().count(),
        after.len(),
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

#[test]
fn get_and_set_through_the_sentinels_with_separate_passwords() {
    let sentinel = RedisSentinel::start_with(SentinelPasswords {
        data: Some(DATA_PASSWORD.into()),
        sentinel: Some(SENTINEL_PASSWORD.into()),
    })
    .expect("a password-protected sentinel deployment starts");
    let mut store = open_with(Options {
        password: Some(DATA_PASSWORD.into()),
        sentinel_password: Some(SENTINEL_PASSWORD.into()),
        ..Options::new(format!("{}/3", sentinel.url()))
    })
    .expect("the store opens through the sentinels");
    let document = doc("t1", 1);
    store.set("t1", &document, None).unwrap();
    assert_eq!(store.get("t1").unwrap().as_deref(), Some(document.as_str()));
    // Batches and listing run on the master too.
    let batch: Vec<Task> = (2..5)
        .map(|n| Task {
            id: format!("t{n}"),
            document: doc(&format!("t{n}"), n),
        })
        .collect();
    let outcomes = store.set_many(&batch, None).unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let ids: Vec<String> = (1..5).map(|n| format!("t{n}")).collect();
    let read = store.get_many(&ids).unwrap();
    assert!(read.iter().all(Option::is_some), "{read:?}");
    let page = store
        .list(&ListOptions {
            status: Some("pending".into()),
            limit: Some(100),
            cursor: None,
        })
        .unwrap();
    let mut listed: Vec<String> = page.tasks.into_iter().map(|task| task.id).collect();
    listed.sort();
    assert_eq!(listed, ids);

    // It is on the master, in database 3, and replicated.
    let encoded = DATA_PASSWORD.replace('/', "%2F").replace('@', "%40");
    for node in sentinel.nodes() {
        let mut con = plain_url(&format!("redis://:{encoded}@{}/3", node.addr()));
        let found = crate::support::eventually(Duration::from_secs(5), || {
            crate::support::plain_get(&mut con, "research_task:t1").is_some()
        });
        assert!(found, "t1 is not on {}", node.addr());
    }
    assert_eq!(sentinel.master_index().unwrap(), 0);
}

#[test]
fn the_plain_component_refuses_sentinel_and_the_embedded_runtime_switches_to_the_full_one() {
    let sentinel = deployment();
    // A runtime made from the plain bytes is used as it is: its build has no Sentinel client.
    let plain = Runtime::builder().component(COMPONENT).build().unwrap();
    match TaskStore::open(&plain, Options::new(sentinel.url())) {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            let message = error.message();
            assert!(
                message.contains("Redis Sentinel") && message.contains("taskstore-tls.wasm"),
                "{message}"
            );
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
    // The embedded runtime (plain by default) opens the same URL on the full build.
    let mut store = open_with(Options::new(sentinel.url())).expect("the store opens");
    store.set("t1", &doc("t1", 1), None).unwrap();
    assert_eq!(
        store.get("t1").unwrap().as_deref(),
        Some(doc("t1", 1).as_str())
    );
}

#[test]
fn a_forced_failover_is_followed_without_reopening() {
    let sentinel = deployment();
    let mut store = open_with(Options::new(sentinel.url())).expect("the store opens");
    let run = write_through(
        &mut store,
        || sentinel.force_failover().expect("SENTINEL FAILOVER"),
        || {
            sentinel.master_index().is_ok_and(|index| index == 1)
                && sentinel.role(0).is_ok_and(|role| role == "slave")
        },
    );
    sentinel.wait_for_master(1).unwrap();
    assert_nothing_lost_after(&run, &mut store, "SENTINEL FAILOVER");
}

#[test]
fn a_killed_master_is_replaced_and_the_store_recovers() {
    let mut sentinel = deployment();
    let mut store = open_with(Options::new(sentinel.url())).expect("the store opens");
    let new_master = sentinel.nodes()[1].addr();
    let sentinel = std::cell::RefCell::new(&mut sentinel);
    let run = write_through(
        &mut store,
        || {
            sentinel
                .borrow_mut()
                .node_mut(0)
                .kill()
                .expect("SIGKILL the master")
        },
        || {
            sentinel
                .borrow()
                .reported_master(0)
                .is_ok_and(|addr| addr == new_master)
        },
    );
    sentinel.borrow().wait_for_master(1).unwrap();
    assert_nothing_lost_after(&run, &mut store, "master killed");
}

#[test]
fn with_wait_replicas_no_acknowledged_write_is_lost_when_the_master_is_killed() {
    let mut sentinel = deployment();
    let url = format!("{}?wait-replicas=1&wait-timeout-ms=500", sentinel.url());
    let mut store = open_with(Options::new(url)).expect("the store opens");
    let mut acknowledged = Vec::new();
    for n in 0..WRITES_AROUND {
        let id = format!("w-{n:05}");
        store
            .set(&id, &doc(&id, n), None)
            .expect("the replica acknowledges");
        acknowledged.push(id);
    }
    sentinel.node_mut(0).kill().expect("SIGKILL the master");
    sentinel.wait_for_master(1).unwrap();
    // The new master has no replica left: a write now is applied but unacknowledged, and
    // said so. (The first try may instead meet the old master's dead connection, which is
    // reported as may-have-applied too, and not run again.)
    let mut errors = Vec::new();
    for _ in 0..3 {
        let error = store
            .set("after", &doc("after", 0), None)
            .expect_err("no replica can acknowledge");
        assert!(error.may_have_applied(), "{error}");
        errors.push(error);
        if errors
            .last()
            .is_some_and(|e| e.kind() == ErrorKind::Timeout)
        {
            break;
        }
    }
    let error = errors.last().unwrap();
    assert_eq!(error.kind(), ErrorKind::Timeout, "{errors:?}");
    assert!(error.message().contains("replicas"), "{error}");
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| store.get(id).expect("read back").is_none())
        .collect();
    println!(
        "wait-replicas=1, master killed: {} writes acknowledged by the replica, {} lost",
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost despite WAIT: {lost:?}");
}

#[test]
fn a_wrong_sentinel_password_is_a_clear_error_without_the_secret() {
    let sentinel = RedisSentinel::start_with(SentinelPasswords {
        data: None,
        sentinel: Some(SENTINEL_PASSWORD.into()),
    })
    .expect("a sentinel deployment with a sentinel password starts");
    for given in [Some("Wr0ng/Zp2Secret"), None] {
        let error = open_with(Options {
            sentinel_password: given.map(str::to_owned),
            ..Options::new(sentinel.url())
        })
        .map(drop)
        .expect_err("the sentinels refuse");
        assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
        let shown = error.to_string();
        assert!(shown.contains("sentinel password"), "{shown}");
        assert!(
            !shown.contains("Zp2") && !shown.contains("Sent1nel"),
            "{shown}"
        );
    }
}

#[test]
fn a_service_no_sentinel_monitors_is_a_clear_error() {
    let sentinel = deployment();
    let url = sentinel
        .url()
        .replace("/taskstore-master", "/no-such-service");
    let started = Instant::now();
    let error = open_with(Options::new(url))
        .map(drop)
        .expect_err("no such service");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
    assert!(error.message().contains("monitors no master"), "{error}");
    assert!(!error.message().contains("no-such-service"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not retried until the deadline"
    );
}

/// A deployment whose sentinels report the master at 127.0.0.2, outside the default
/// allow-list (the sentinels' own address, 127.0.0.1, any port).
fn master_reported_at_127_0_0_2() -> RedisSentinel {
    RedisSentinel::start_monitoring(
        SentinelPasswords {
            data: Some(DATA_PASSWORD.into()),
            sentinel: None,
        },
        std::net::Ipv4Addr::new(127, 0, 0, 2),
    )
    .expect("a sentinel deployment with its master on 127.0.0.2 starts")
}

/// Connections the master has accepted on 127.0.0.2 from anyone but the sentinels.
fn clients_on_127_0_0_2(sentinel: &RedisSentinel) -> usize {
    let master = &sentinel.nodes()[0];
    let encoded = DATA_PASSWORD.replace('/', "%2F").replace('@', "%40");
    let mut admin = plain_url(&format!("redis://:{encoded}@127.0.0.1:{}", master.port()));
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut admin)
        .expect("CLIENT LIST");
    list.lines()
        .filter(|line| line.contains(&format!("laddr=127.0.0.2:{}", master.port())))
        .filter(|line| !line.contains(" name=sentinel-"))
        .count()
}

#[test]
fn a_master_reported_outside_the_allow_list_is_never_contacted() {
    let sentinel = master_reported_at_127_0_0_2();
    let error = open_with(Options {
        password: Some(DATA_PASSWORD.into()),
        ..Options::new(sentinel.url())
    })
    .and_then(|mut store| store.get("t1"))
    .expect_err("the reported master is outside the allow-list");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error:?}");
    assert!(!error.to_string().contains("Pa55"), "{error}");
    assert_eq!(clients_on_127_0_0_2(&sentinel), 0, "contacted: {error}");
}

#[test]
fn the_operator_can_widen_the_allow_list_to_the_reported_master() {
    let sentinel = master_reported_at_127_0_0_2();
    let port = sentinel.nodes()[0].port();
    let mut store = open_with(Options {
        password: Some(DATA_PASSWORD.into()),
        cluster_allow: vec![format!("127.0.0.2:{port}").parse().unwrap()],
        ..Options::new(sentinel.url())
    })
    .expect("the store opens");
    store.set("t1", &doc("t1", 1), None).unwrap();
    assert!(store.exists("t1").unwrap());
    assert!(clients_on_127_0_0_2(&sentinel) > 0);
}

/// `rediss+sentinel://`: the sentinels and the master they report are dialled over TLS, each
/// verified against the private CA; without that CA the connection is refused.
#[test]
fn rediss_sentinel_reaches_the_master_over_tls() {
    let pki = pki("taskstore sentinel test CA", &["127.0.0.1"]);
    let sentinel =
        RedisSentinel::start_tls(pki.server.clone()).expect("a TLS sentinel deployment starts");
    let url = sentinel.tls_url().expect("TLS ports");
    let mut store = open_with(Options {
        tls_ca_certificates: Some(pki.ca_pem.clone()),
        ..Options::new(url.clone())
    })
    .expect("the store opens over TLS");
    store.set("t1", &doc("t1", 1), None).unwrap();
    assert!(store.exists("t1").unwrap());

    let error = open_with(Options::new(url))
        .map(drop)
        .expect_err("the web PKI roots do not trust the private CA");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error}");
}
