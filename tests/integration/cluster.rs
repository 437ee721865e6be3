//! The component against a real 3-master Redis Cluster on loopback ports: routing by slot,
//! batches split per node, listing across masters, `ASK` during a slot migration, `MOVED`
//! after it, and a live `redis-cli --cluster reshard` while a client keeps working.
//!
//! One cluster per test; every store is opened with a single seed, so reaching the other
//! masters also exercises the host's cluster allow-list. One cluster runs TLS on every node
//! (`rediss+cluster://`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{open_with, DEFAULT_PREFIX};
use taskstore::cluster::key_slot;
use taskstore_host::{
    ErrorKind, ListOptions, Options, Runtime, Task, TaskStore, UpdateOptions, COMPONENT,
};
use taskstore_testing::pki::pki;
use taskstore_testing::redis_cluster::RedisCluster;

const TASKS: usize = 1200;
/// Slots the live reshard moves (of node 0's ~5461): ~37 of 1000 tasks move with them.
const RESHARDED_SLOTS: usize = 600;

fn cluster() -> RedisCluster {
    RedisCluster::start(3).expect("a 3-master redis cluster starts (run scripts/setup.sh)")
}

fn open_cluster(cluster: &RedisCluster) -> TaskStore {
    open_with(Options::new(cluster.seed_url(0))).expect("the component opens a cluster store")
}

fn doc(id: &str, status: &str, n: usize) -> String {
    format!(r#"{{"id": "{id}", "status": "{status}", "n": {n}}}"#)
}

fn ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("task-{i:05}")).collect()
}

/// A plain connection to node `index` (no cluster awareness: it sees only that node).
fn plain_node(cluster: &RedisCluster, index: usize) -> redis::Connection {
    crate::support::plain_url(&format!("redis://{}", cluster.nodes()[index].addr()))
}

/// Every master holds a share of the `total` tasks (more than a sixth), and exactly the keys
/// of its own slots.
fn assert_every_master_holds_its_share(cluster: &RedisCluster, total: usize) {
    let owners = cluster.slot_owners().unwrap();
    let mut per_node = Vec::new();
    for index in 0..cluster.nodes().len() {
        let mut con = plain_node(cluster, index);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{DEFAULT_PREFIX}*"))
            .query(&mut con)
            .unwrap();
        for key in &keys {
            assert_eq!(
                owners[usize::from(key_slot(key.as_bytes()))],
                Some(index),
                "{key} is on the wrong node"
            );
        }
        per_node.push(keys.len());
    }
    assert_eq!(per_node.iter().sum::<usize>(), total, "{per_node:?}");
    assert!(per_node.iter().all(|&n| n > total / 6), "{per_node:?}");
}

/// Every task the listing returns, following cursors, with `limit` per page.
fn list_all(store: &mut TaskStore, status: Option<&str>, limit: u32) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = store
            .list(&ListOptions {
                status: status.map(str::to_owned),
                limit: Some(limit),
                cursor,
            })
            .expect("list");
        assert!(page.tasks.len() <= limit as usize);
        tasks.extend(page.tasks);
        match page.cursor {
            None => return tasks,
            Some(next) => cursor = Some(next),
        }
    }
    panic!("the listing never ended");
}

#[test]
fn a_thousand_tasks_spread_over_every_master_work_through_every_operation() {
    let cluster = cluster();
    let mut store = open_cluster(&cluster);
    let ids = ids(TASKS);
    let tasks: Vec<Task> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Task {
            id: id.clone(),
            document: doc(id, if i % 3 == 0 { "done" } else { "pending" }, i),
        })
        .collect();

    // Batches: written in chunks, each split per node and pipelined.
    for chunk in tasks.chunks(500) {
        let results = store.set_many(chunk, None).expect("set_many");
        assert_eq!(results.len(), chunk.len());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    assert_every_master_holds_its_share(&cluster, TASKS);

    // get_many returns every document in input order, across nodes.
    let mut shuffled = ids.clone();
    shuffled.reverse();
    shuffled.push("no-such-task".into());
    let got = store.get_many(&shuffled).expect("get_many");
    assert_eq!(got.len(), shuffled.len());
    for (id, document) in shuffled.iter().zip(&got) {
        let expected = tasks
            .iter()
            .find(|t| &t.id == id)
            .map(|t| t.document.clone());
        assert_eq!(document, &expected, "{id}");
    }

    // Single-key operations and update on a sample spread over all slots.
    for (i, id) in ids.iter().enumerate().step_by(37) {
        assert_eq!(
            store.get(id).unwrap().as_deref(),
            Some(tasks[i].document.as_str())
        );
        let updated = store
            .update(
                id,
                r#"{"status": "running", "extra": [1, 2]}"#,
                &UpdateOptions::default(),
            )
            .expect("update")
            .expect("the task exists");
        assert!(updated.contains(r#""status": "running""#), "{updated}");
        assert_eq!(store.get(id).unwrap(), Some(updated));
        assert!(store.exists(id).unwrap());
        assert!(matches!(
            store.ttl(id).unwrap(),
            Some(taskstore_host::TimeToLive::ExpiresIn(s)) if s > 600_000
        ));
        assert!(store.expire(id, 1000).unwrap());
        assert!(!store.create(id, "{}", None).unwrap());
    }
    assert!(store.create("fresh", r#"{"status": "new"}"#, None).unwrap());
    assert_eq!(
        store
            .update("absent", "{}", &UpdateOptions::default())
            .unwrap(),
        None
    );

    // Listing walks every master: each task exactly once, whatever the page size.
    let listed = list_all(&mut store, None, 97);
    let listed_ids: BTreeSet<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(listed.len(), TASKS + 1, "no task listed twice");
    assert_eq!(listed_ids.len(), TASKS + 1);
    assert!(ids.iter().all(|id| listed_ids.contains(id.as_str())));
    let running = list_all(&mut store, Some("running"), 1000);
    assert_eq!(running.len(), ids.iter().step_by(37).count());

    // delete_many reports per id, in order, across nodes.
    let doomed: Vec<String> = ids
        .iter()
        .step_by(2)
        .cloned()
        .chain(["nope".into()])
        .collect();
    let removed = store.delete_many(&doomed).expect("delete_many");
    assert_eq!(removed.len(), doomed.len());
    assert!(removed[..removed.len() - 1].iter().all(|&r| r));
    assert!(!removed[removed.len() - 1]);
    assert_eq!(list_all(&mut store, None, 500).len(), TASKS - TASKS / 2 + 1);
    assert!(!store.delete(&ids[0]).unwrap());
    assert!(store.delete(&ids[1]).unwrap());
}

/// `rediss+cluster://` naming one TLS seed: the other masters are discovered over TLS (by the
/// host, for its allow-list, and by the component) and reached on their TLS ports, each
/// certificate verified against the given CA; a CA that did not sign them is a TLS
/// connection error, never a plaintext fallback.
#[test]
fn the_plain_component_refuses_a_cluster_and_the_embedded_runtime_switches_to_the_full_one() {
    let cluster = cluster();
    let url = cluster.seed_url(0);
    // A runtime made from the plain bytes is used as it is: its build has no cluster client.
    let plain = Runtime::builder().component(COMPONENT).build().unwrap();
    match TaskStore::open(&plain, Options::new(url.clone())) {
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            let message = error.message();
            assert!(
                message.contains("Redis Cluster") && message.contains("taskstore-tls.wasm"),
                "{message}"
            );
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
    // The embedded runtime (plain by default) opens the same URL on the full build.
    let mut store = open_with(Options::new(url)).expect("the embedded runtime opens a cluster");
    store.set("t1", &doc("t1", "pending", 1), None).unwrap();
    assert_eq!(
        store.get("t1").unwrap().as_deref(),
        Some(doc("t1", "pending", 1).as_str())
    );
}

#[test]
fn tls_cluster_from_one_seed_reaches_every_master_over_tls() {
    const TLS_TASKS: usize = 300;
    let trusted = pki("taskstore cluster CA", &["127.0.0.1"]);
    let cluster = RedisCluster::start_tls(3, trusted.server.clone())
        .expect("a 3-master TLS redis cluster starts (run scripts/setup.sh)");
    let url = cluster.seed_url(0);
    assert!(url.starts_with("rediss+cluster://127.0.0.1:"), "{url}");
    let tls_options = |url: &str, ca_pem: &str| Options {
        tls_ca_certificates: Some(ca_pem.to_owned()),
        ..Options::new(url)
    };
    let mut store = open_with(tls_options(&url, &trusted.ca_pem)).expect("open over TLS");

    let ids = ids(TLS_TASKS);
    let tasks: Vec<Task> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Task {
            id: id.clone(),
            document: doc(id, "pending", i),
        })
        .collect();
    let results = store.set_many(&tasks, None).expect("set_many over TLS");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_every_master_holds_its_share(&cluster, TLS_TASKS);

    let got = store.get_many(&ids).expect("get_many over TLS");
    let expected: Vec<Option<String>> = tasks.iter().map(|t| Some(t.document.clone())).collect();
    assert_eq!(got, expected);
    for id in ids.iter().step_by(29) {
        let updated = store
            .update(id, r#"{"status": "done"}"#, &UpdateOptions::default())
            .expect("update over TLS")
            .expect("the task exists");
        assert!(updated.contains(r#""status": "done""#), "{updated}");
    }
    assert_eq!(list_all(&mut store, None, 64).len(), TLS_TASKS);
    assert_eq!(
        list_all(&mut store, Some("done"), 100).len(),
        ids.iter().step_by(29).count()
    );

    let other = pki("some other CA", &["127.0.0.1"]);
    match open_with(tls_options(&url, &other.ca_pem)) {
        Err(error) if error.kind() == ErrorKind::Connection => {
            let message = error.message();
            assert!(message.contains("TLS"), "{message}")
        }
        other => panic!("expected a TLS connection error, got {other:?}"),
    }
}

/// Ids whose keys hash to a slot node `index` owns, `count` of them, all in one slot.
fn ids_in_one_slot_of(cluster: &RedisCluster, index: usize, count: usize) -> (u16, Vec<String>) {
    let owners = cluster.slot_owners().unwrap();
    let first = (0..100_000)
        .map(|i| format!("mig-{i}"))
        .find(|id| {
            let slot = key_slot(format!("{DEFAULT_PREFIX}{id}").as_bytes());
            owners[usize::from(slot)] == Some(index)
        })
        .unwrap();
    let slot = key_slot(format!("{DEFAULT_PREFIX}{first}").as_bytes());
    let mut same = vec![first];
    for i in 0..1_000_000 {
        if same.len() == count {
            break;
        }
        let id = format!("m{i}");
        if key_slot(format!("{DEFAULT_PREFIX}{id}").as_bytes()) == slot {
            same.push(id);
        }
    }
    assert_eq!(same.len(), count);
    (slot, same)
}

/// `GET key` on a node importing the key's slot: `ASKING` first, or the node answers MOVED.
fn plain_get_asking(con: &mut redis::Connection, key: &str) -> Option<Vec<u8>> {
    let () = redis::cmd("ASKING").query(con).expect("plain ASKING");
    crate::support::plain_get(con, key)
}

#[test]
fn ask_during_a_migration_and_moved_after_it_are_followed() {
    let cluster = cluster();
    let mut store = open_cluster(&cluster);
    let (slot, mut ids) = ids_in_one_slot_of(&cluster, 0, 4);
    let fresh = ids.pop().unwrap();
    for id in &ids {
        store.set(id, &doc(id, "pending", 0), None).unwrap();
    }
    let (source, target) = (0, 1);
    let slot_text = slot.to_string();
    cluster
        .set_slot(target, &slot_text, "IMPORTING", source)
        .unwrap();
    cluster
        .set_slot(source, &slot_text, "MIGRATING", target)
        .unwrap();
    // Move the first task only: the slot is now split between the two nodes.
    let moved_key = format!("{DEFAULT_PREFIX}{}", ids[0]);
    cluster.migrate_key(source, target, &moved_key).unwrap();

    // The source answers ASK for the moved key; the component follows it with ASKING.
    assert_eq!(
        store.get(&ids[0]).unwrap(),
        Some(doc(&ids[0], "pending", 0))
    );
    assert_eq!(
        store.get(&ids[1]).unwrap(),
        Some(doc(&ids[1], "pending", 0))
    );
    let updated = store
        .update(
            &ids[0],
            r#"{"status": "running"}"#,
            &UpdateOptions::default(),
        )
        .unwrap()
        .unwrap();
    assert!(updated.contains("running"));
    let mut on_target = plain_node(&cluster, target);
    assert_eq!(
        plain_get_asking(&mut on_target, &moved_key),
        Some(updated.into_bytes()),
        "the update ran on the node holding the key"
    );
    // A new key in a migrating slot is created on the target (the source answers ASK).
    assert!(store.create(&fresh, "{}", None).unwrap());
    assert_eq!(
        plain_get_asking(&mut on_target, &format!("{DEFAULT_PREFIX}{fresh}")),
        Some(b"{}".to_vec())
    );
    let batch = store.get_many(&ids).unwrap();
    assert!(batch.iter().all(Option::is_some), "{batch:?}");

    // Finish the migration: move the rest, hand the slot over; the source now says MOVED.
    for id in &ids[1..] {
        let key = format!("{DEFAULT_PREFIX}{id}");
        cluster.migrate_key(source, target, &key).unwrap();
    }
    for node in 0..3 {
        cluster.set_slot(node, &slot_text, "NODE", target).unwrap();
    }
    assert_eq!(cluster.owner_of_slot(slot).unwrap(), target);
    let updated = store
        .update(&ids[2], r#"{"n": 2}"#, &UpdateOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        crate::support::plain_get(&mut on_target, &format!("{DEFAULT_PREFIX}{}", ids[2])),
        Some(updated.into_bytes())
    );
    assert_eq!(
        store.get(&ids[1]).unwrap(),
        Some(doc(&ids[1], "pending", 0))
    );
    assert_eq!(store.delete_many(&ids).unwrap(), vec![true, true, true]);
}

#[test]
fn resharding_while_a_client_works_fails_no_operation_and_loses_nothing() {
    let cluster = cluster();
    let mut store = open_cluster(&cluster);
    let ids = ids(1000);
    let tasks: Vec<Task> = ids
        .iter()
        .map(|id| Task {
            id: id.clone(),
            document: doc(id, "pending", 0),
        })
        .collect();
    for result in store.set_many(&tasks, None).unwrap() {
        result.unwrap();
    }
    let mut expected: BTreeMap<String, String> =
        tasks.into_iter().map(|t| (t.id, t.document)).collect();
    let owners = cluster.slot_owners().unwrap();
    let moved_slots: Vec<u16> = (0..16384u16)
        .filter(|&slot| owners[usize::from(slot)] == Some(0))
        .take(RESHARDED_SLOTS)
        .collect();

    let mut operations = 0usize;
    let mut during = 0usize;
    std::thread::scope(|scope| {
        let reshard = scope.spawn(|| cluster.reshard(0, 1, RESHARDED_SLOTS));
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut round = 0usize;
        // Keep working until the reshard is over (and a little after), bounded by a deadline.
        let mut after = 0;
        while after < 50 {
            assert!(Instant::now() < deadline, "the reshard did not end in time");
            if reshard.is_finished() {
                after += 1;
            } else {
                during += 1;
            }
            round += 1;
            let id = &ids[(round * 7) % ids.len()];
            let patched = store
                .update(
                    id,
                    &format!(r#"{{"n": {round}}}"#),
                    &UpdateOptions::default(),
                )
                .unwrap_or_else(|e| panic!("update {id} in round {round}: {e}"))
                .expect("the task exists");
            expected.insert(id.clone(), patched);
            let other = &ids[(round * 13) % ids.len()];
            assert_eq!(
                store.get(other).unwrap().as_ref(),
                expected.get(other),
                "{other}"
            );
            let new_id = format!("new-{round}");
            let document = doc(&new_id, "new", round);
            store.set(&new_id, &document, None).unwrap();
            expected.insert(new_id, document);
            let window: Vec<String> = (0..20)
                .map(|k| ids[(round * 31 + k * 50) % ids.len()].clone())
                .collect();
            let got = store.get_many(&window).unwrap();
            for (id, document) in window.iter().zip(got) {
                assert_eq!(document.as_ref(), expected.get(id), "{id}");
            }
            operations += 4;
            // A client at work, not a busy loop starving redis-cli on a small machine.
            std::thread::sleep(Duration::from_millis(1));
        }
        reshard.join().unwrap().expect("the reshard succeeds");
    });
    assert!(during > 0, "the client did not work during the reshard");
    let owners = cluster.slot_owners().unwrap();
    assert!(
        moved_slots
            .iter()
            .all(|&slot| owners[usize::from(slot)] == Some(1)),
        "the slots moved"
    );

    // Nothing lost: every task reads back as last written, by key and by listing.
    let all: Vec<String> = expected.keys().cloned().collect();
    let got = store.get_many(&all).unwrap();
    for (id, document) in all.iter().zip(got) {
        assert_eq!(document.as_ref(), expected.get(id), "{id}");
    }
    let listed = list_all(&mut store, None, 250);
    let times_listed = listed.len();
    let listed: BTreeMap<String, String> = listed.into_iter().map(|t| (t.id, t.document)).collect();
    // The slots have stopped moving: each task is listed exactly once.
    assert_eq!(times_listed, listed.len(), "a task was listed twice");
    assert_eq!(listed, expected);
    eprintln!("{operations} operations, {during} rounds during the reshard");
}
