//! The status index (`listing: index`): index listings return exactly what scan listings
//! return for this store's writes, entries follow status changes, stale entries are pruned
//! only when no writer can be restoring them, and `reindex` brings in tasks written by
//! others — on one server and on a real 3-master cluster.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use taskstore::cluster::key_slot;
use taskstore_host::{
    ErrorKind, ListOptions, ListingMode, Options, Task, TaskStore, TtlPolicy, UpdateOptions,
};
use taskstore_testing::fault::{Fault, FaultProxy};
use taskstore_testing::redis_cluster::RedisCluster;

const PENDING_INDEX: &str = "research_task_status:pending";
/// Pages a listing here may take before the test gives up on it ending.
const MAX_PAGES: usize = 10_000;

fn doc(id: &str, status: &str) -> String {
    format!(r#"{{"id": "{id}", "status": "{status}"}}"#)
}

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn indexed(url: String) -> Options {
    Options {
        listing: Some(ListingMode::Index),
        ..Options::new(url)
    }
}

fn open_indexed(server: &RedisServer) -> TaskStore {
    open_with(indexed(server.url())).expect("an index-mode store opens")
}

/// Every id `store` lists with `status`, `limit` per page, following the cursors.
fn list_ids(store: &mut TaskStore, status: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let page = store
            .list(&ListOptions {
                status: Some(status.into()),
                limit: Some(limit),
                cursor,
            })
            .expect("list");
        assert!(page.tasks.len() <= limit as usize);
        for Task { id, document } in page.tasks {
            assert!(
                document.contains(&format!(r#""status": "{status}""#)),
                "{document}"
            );
            ids.push(id);
        }
        match page.cursor {
            None => return ids,
            next => cursor = next,
        }
    }
    panic!("the listing did not end within {MAX_PAGES} pages");
}

fn id_set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

/// The members of a sorted set, with their scores as Redis prints them.
fn entries(con: &mut redis::Connection, index: &str) -> Vec<(String, String)> {
    let flat: Vec<String> = redis::cmd("ZRANGE")
        .arg(index)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(con)
        .expect("plain ZRANGE");
    flat.chunks(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

fn members(con: &mut redis::Connection, index: &str) -> BTreeSet<String> {
    entries(con, index).into_iter().map(|(id, _)| id).collect()
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64
}

#[test]
fn index_listing_returns_exactly_the_scan_listing_for_every_status() {
    let server = server();
    let mut indexed = open_indexed(&server);
    let mut scan = open(&server);
    let statuses = ["pending", "running", "done", "failed: disk full"];
    let mut batch = Vec::new();
    for i in 0..400 {
        let id = format!("task-{i:03}");
        let status = statuses[i % statuses.len()];
        match i % 4 {
            0 => indexed.set(&id, &doc(&id, status), None).unwrap(),
            1 => assert!(indexed.create(&id, &doc(&id, status), Some(600)).unwrap()),
            _ => batch.push(Task {
                id: id.clone(),
                document: doc(&id, status),
            }),
        }
    }
    for result in indexed.set_many(&batch, Some(3600)).unwrap() {
        result.unwrap();
    }
    // Status changes through every writer: update (with a TTL and keeping it), set, expire.
    for i in (0..400).step_by(7) {
        let id = format!("task-{i:03}");
        let ttl = match i % 2 {
            0 => TtlPolicy::Keep,
            _ => TtlPolicy::Set(1200),
        };
        let options = UpdateOptions {
            expect_status: None,
            ttl,
        };
        indexed
            .update(&id, r#"{"status": "running"}"#, &options)
            .unwrap()
            .unwrap();
    }
    for i in (3..400).step_by(11) {
        let id = format!("task-{i:03}");
        indexed.set(&id, &doc(&id, "done"), None).unwrap();
        assert!(indexed.expire(&id, 900).unwrap());
    }
    for status in statuses {
        let by_scan = id_set(&list_ids(&mut scan, status, 1000));
        for limit in [1, 7, 100] {
            let by_index = list_ids(&mut indexed, status, limit);
            assert_eq!(
                id_set(&by_index),
                by_scan,
                "status {status:?}, limit {limit}"
            );
            // The first listing prunes the entries `set` left behind, which may make Redis
            // reorganise the sorted set mid-listing (duplicates allowed then); after it,
            // nothing changes and each task comes once.
            if limit > 1 {
                assert_eq!(by_index.len(), by_scan.len(), "nothing listed twice");
            }
        }
        assert!(!by_scan.is_empty());
    }
    // The index key expires after its latest entry, so an abandoned index goes away.
    let mut con = plain(&server);
    let index_ttl = plain_pttl(&mut con, PENDING_INDEX);
    assert!(
        index_ttl > (DEFAULT_TTL as i64) * 1000,
        "index TTL {index_ttl} ms"
    );
}

#[test]
fn a_status_change_moves_the_entry_and_deleted_or_expired_tasks_are_pruned() {
    let server = server();
    let mut store = open_indexed(&server);
    let mut con = plain(&server);
    store.set("a", &doc("a", "pending"), None).unwrap();
    store.set("b", &doc("b", "pending"), Some(1)).unwrap();
    store.set("c", &doc("c", "pending"), None).unwrap();
    let entry = entries(&mut con, PENDING_INDEX);
    let expected_expiry = now_ms() + (DEFAULT_TTL * 1000) as f64;
    let score_of_a: f64 = entry
        .iter()
        .find(|(id, _)| id == "a")
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert!(
        (score_of_a - expected_expiry).abs() < 60_000.0,
        "the score is the expiry: {score_of_a} vs {expected_expiry}"
    );

    // update moves the entry within its transaction.
    store
        .update("a", r#"{"status": "running"}"#, &UpdateOptions::default())
        .unwrap();
    assert_eq!(
        members(&mut con, PENDING_INDEX),
        BTreeSet::from(["b".into(), "c".into()])
    );
    assert_eq!(
        members(&mut con, "research_task_status:running"),
        BTreeSet::from(["a".into()])
    );

    // delete leaves its entry to the next listing, which prunes it; b expires meanwhile.
    assert!(store.delete("c").unwrap());
    assert!(eventually(Duration::from_secs(5), || plain_get(
        &mut con,
        &key("b")
    )
    .is_none()));
    assert_eq!(list_ids(&mut store, "pending", 10), Vec::<String>::new());
    assert_eq!(members(&mut con, PENDING_INDEX), BTreeSet::new());
    assert_eq!(list_ids(&mut store, "running", 10), ["a"]);

    // A task deleted by another client is pruned, and so is one set to another status.
    store.set("d", &doc("d", "pending"), None).unwrap();
    store.set("e", &doc("e", "pending"), None).unwrap();
    let _: () = redis::cmd("DEL").arg(key("d")).query(&mut con).unwrap();
    plain_set(&mut con, &key("e"), doc("e", "done"));
    assert_eq!(list_ids(&mut store, "pending", 10), Vec::<String>::new());
    assert_eq!(members(&mut con, PENDING_INDEX), BTreeSet::new());

    // Entries whose expiry passed over a minute ago go without their documents being read.
    let long_ago = format!("{:.3}", now_ms() - 120_000.0);
    let _: () = redis::cmd("ZADD")
        .arg(PENDING_INDEX)
        .arg(&long_ago)
        .arg("ghost")
        .query(&mut con)
        .unwrap();
    let before = command_calls(&mut con);
    assert_eq!(list_ids(&mut store, "pending", 10), Vec::<String>::new());
    assert_eq!(members(&mut con, PENDING_INDEX), BTreeSet::new());
    let reads = command_delta(&before, &command_calls(&mut con));
    assert_eq!(reads.get("mget"), None, "{reads:?}");
}

#[test]
fn tasks_written_by_others_are_listed_by_index_only_after_reindex() {
    let server = server();
    let mut store = open_indexed(&server);
    let mut con = plain(&server);
    store.set("ours", &doc("ours", "pending"), None).unwrap();
    // As the Python service writes: SETEX, no index.
    for i in 0..250 {
        let id = format!("py-{i}");
        let _: () = redis::cmd("SETEX")
            .arg(key(&id))
            .arg(3600)
            .arg(doc(&id, "pending"))
            .query(&mut con)
            .unwrap();
    }
    plain_set(&mut con, &key("persistent"), doc("persistent", "pending"));
    assert_eq!(list_ids(&mut store, "pending", 100), ["ours"]);
    assert_eq!(list_ids(&mut open(&server), "pending", 1000).len(), 252);

    // Reindex page by page, resuming from each cursor with a new store (as after a crash).
    let mut cursor: Option<String> = None;
    let (mut visited, mut indexed, mut pages) = (0, 0, 0);
    loop {
        let page = open(&server).reindex(cursor.as_deref(), Some(40)).unwrap();
        visited += page.visited;
        indexed += page.indexed;
        pages += 1;
        match page.cursor {
            None => break,
            next => cursor = next,
        }
        assert!(pages < 100);
    }
    assert!(pages > 3, "{pages} pages");
    assert_eq!((visited, indexed), (252, 252));
    let listed = list_ids(&mut store, "pending", 100);
    assert_eq!(listed.len(), 252);
    assert_eq!(id_set(&listed).len(), 252);
    let scores = entries(&mut con, PENDING_INDEX);
    let persistent = scores.iter().find(|(id, _)| id == "persistent").unwrap();
    assert_eq!(persistent.1, "inf");
    assert_eq!(
        plain_pttl(&mut con, PENDING_INDEX),
        -1,
        "an index with an `inf` entry never expires"
    );
}

#[test]
fn cursors_of_one_kind_of_listing_are_refused_by_the_other() {
    let server = server();
    let mut indexed = open_indexed(&server);
    let mut scan = open(&server);
    for i in 0..5 {
        indexed
            .set(&format!("t{i}"), &doc("t", "pending"), None)
            .unwrap();
    }
    let list = |store: &mut TaskStore, cursor: Option<String>| {
        store.list(&ListOptions {
            status: Some("pending".into()),
            limit: Some(1),
            cursor,
        })
    };
    let index_cursor = list(&mut indexed, None).unwrap().cursor.unwrap();
    let scan_cursor = list(&mut scan, None).unwrap().cursor.unwrap();
    assert!(index_cursor.starts_with('i'), "{index_cursor}");
    let refused = list(&mut scan, Some(index_cursor.clone()));
    assert_eq!(kind(&refused), Some(ErrorKind::InvalidInput));
    assert!(refused.unwrap_err().message().contains("status index"));
    let refused = list(&mut indexed, Some(scan_cursor));
    assert_eq!(kind(&refused), Some(ErrorKind::InvalidInput));
    assert!(refused.unwrap_err().message().contains("scan listing"));
    // A status that is not indexable lists by scan, in either mode.
    indexed.set("odd", r#"{"status": "a\nb"}"#, None).unwrap();
    let page = indexed
        .list(&ListOptions {
            status: Some("a\nb".into()),
            ..ListOptions::default()
        })
        .unwrap();
    assert_eq!(page.tasks.len(), 1);
}

/// The reader's guard: an entry it found stale (document missing) but that a writer adds
/// again, with its document, before the reader removes it, stays.
#[test]
fn an_entry_written_again_between_the_read_and_the_prune_is_kept() {
    let server = server();
    let proxy = FaultProxy::start(server.addr());
    let mut store = open_with(indexed(proxy.url())).unwrap();
    let mut con = plain(&server);
    // A shorter TTL: a lower score, so ZSCAN (of a small sorted set: in score order)
    // returns "a" first.
    store.set("a", &doc("a", "pending"), Some(600)).unwrap();
    store
        .set("victim", &doc("victim", "pending"), None)
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(key("victim"))
        .query(&mut con)
        .unwrap();
    // Page 1 lists "a"; "victim" travels in the cursor with the score ZSCAN showed.
    let first = store
        .list(&ListOptions {
            status: Some("pending".into()),
            limit: Some(1),
            cursor: None,
        })
        .unwrap();
    assert_eq!(first.tasks[0].id, "a");
    assert!(first.cursor.is_some(), "victim is still to be read");
    // Page 2 reads "victim": missing. Right before its prune reaches Redis, another writer
    // of the index writes the task again, as one atomic step (what `set` sends in MULTI).
    let rewrite = r"
        redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3], 'EX', 600)
    ";
    let score = format!("{:.3}", now_ms() + 600_000.0 + 0.25);
    proxy.arm(
        "EVAL",
        Fault::WriteFirst(vec![
            b"EVAL".to_vec(),
            rewrite.as_bytes().to_vec(),
            b"2".to_vec(),
            PENDING_INDEX.as_bytes().to_vec(),
            key("victim").into_bytes(),
            score.into_bytes(),
            b"victim".to_vec(),
            doc("victim", "pending").into_bytes(),
        ]),
        1,
    );
    let second = store
        .list(&ListOptions {
            status: Some("pending".into()),
            limit: Some(1),
            cursor: first.cursor,
        })
        .unwrap();
    assert!(second.tasks.is_empty(), "{second:?}");
    assert_eq!(
        proxy.seen("EVAL"),
        4,
        "two sets, one prune of expired entries, one stale prune"
    );
    assert!(
        members(&mut con, PENDING_INDEX).contains("victim"),
        "the re-added entry stays"
    );
    assert_eq!(
        id_set(&list_ids(&mut store, "pending", 10)),
        id_set(&["a".into(), "victim".into()])
    );
}

/// A cluster writer's provisional entry (before its document exists) is never pruned, so
/// the task is listed once its document is written.
#[test]
fn a_provisional_entry_of_a_writer_between_entry_and_document_is_never_pruned() {
    let server = server();
    let mut store = open_indexed(&server);
    let mut con = plain(&server);
    store.set("a", &doc("a", "pending"), None).unwrap();
    // What a cluster writer has done before its SET reaches the document's node.
    let provisional = format!("{:.3}", now_ms().floor() + 600_000.0 + 0.75);
    let _: () = redis::cmd("ZADD")
        .arg(PENDING_INDEX)
        .arg(&provisional)
        .arg("mid-write")
        .query(&mut con)
        .unwrap();
    for _ in 0..3 {
        assert_eq!(list_ids(&mut store, "pending", 10), ["a"]);
    }
    assert!(members(&mut con, PENDING_INDEX).contains("mid-write"));
    let _: () = redis::cmd("SETEX")
        .arg(key("mid-write"))
        .arg(600)
        .arg(doc("mid-write", "pending"))
        .query(&mut con)
        .unwrap();
    assert_eq!(
        id_set(&list_ids(&mut store, "pending", 10)),
        id_set(&["a".into(), "mid-write".into()])
    );
}

/// Listing while other tasks change status and come and go, written through index-mode
/// stores: every task pending throughout is listed.
#[test]
fn listing_while_statuses_change_never_misses_a_task_pending_throughout() {
    let server = server();
    let mut store = open_indexed(&server);
    let steady: Vec<String> = (0..300).map(|i| format!("steady-{i}")).collect();
    let tasks: Vec<Task> = steady
        .iter()
        .map(|id| Task {
            id: id.clone(),
            document: doc(id, "pending"),
        })
        .collect();
    for result in store.set_many(&tasks, None).unwrap() {
        result.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let churn = {
        let stop = Arc::clone(&stop);
        let writes = Arc::clone(&writes);
        let url = server.url();
        std::thread::spawn(move || {
            let mut writer = open_with(indexed(url)).unwrap();
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("churn-{}", round % 200);
                match round % 3 {
                    0 => writer.set(&id, &doc(&id, "pending"), None).unwrap(),
                    1 => {
                        writer
                            .update(&id, r#"{"status": "running"}"#, &UpdateOptions::default())
                            .unwrap();
                    }
                    _ => {
                        writer.delete(&id).unwrap();
                    }
                }
                round += 1;
                writes.store(round, Ordering::SeqCst);
            }
            round
        })
    };
    // At least 5 listings, and on until the churn has written enough to overlap them: a
    // loaded machine may start the writer late. Bounded by a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut listings = 0;
    while listings < 5 || (writes.load(Ordering::SeqCst) <= 50 && Instant::now() < deadline) {
        let listed = id_set(&list_ids(&mut store, "pending", 13));
        let missing: Vec<&String> = steady.iter().filter(|id| !listed.contains(*id)).collect();
        assert!(missing.is_empty(), "missed {missing:?}");
        listings += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let rounds = churn.join().unwrap();
    assert!(
        rounds > 50,
        "the churn ran ({rounds} writes) during {listings} listings"
    );
}

/// On a cluster the index key lives on one master and the documents on all three; writes
/// keep the superset rule without cross-slot transactions and listings prune safely.
#[test]
fn on_a_cluster_the_index_lists_every_master_s_tasks_and_follows_changes() {
    let cluster =
        RedisCluster::start(3).expect("a 3-master redis cluster starts (run scripts/setup.sh)");
    let mut store = open_with(indexed(cluster.seed_url(0))).unwrap();
    let mut scan = open_with(Options::new(cluster.seed_url(0))).unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("task-{i:03}")).collect();
    let tasks: Vec<Task> = ids[..100]
        .iter()
        .map(|id| Task {
            id: id.clone(),
            document: doc(id, "pending"),
        })
        .collect();
    for result in store.set_many(&tasks, None).unwrap() {
        result.unwrap();
    }
    for id in &ids[100..200] {
        store.set(id, &doc(id, "pending"), None).unwrap();
    }
    for id in &ids[200..] {
        assert!(store.create(id, &doc(id, "running"), None).unwrap());
    }
    for id in ids.iter().step_by(5) {
        store
            .update(id, r#"{"status": "done"}"#, &UpdateOptions::default())
            .unwrap();
    }
    for id in ids.iter().skip(1).step_by(9) {
        assert!(store.expire(id, 3000).unwrap());
    }
    for id in ids.iter().skip(2).step_by(13) {
        store.delete(id).unwrap();
    }
    for status in ["pending", "running", "done"] {
        let by_scan = {
            let mut all = BTreeSet::new();
            let mut cursor = None;
            loop {
                let page = scan
                    .list(&ListOptions {
                        status: Some(status.into()),
                        limit: Some(1000),
                        cursor,
                    })
                    .unwrap();
                all.extend(page.tasks.into_iter().map(|t| t.id));
                match page.cursor {
                    None => break all,
                    next => cursor = next,
                }
            }
        };
        assert!(!by_scan.is_empty());
        for limit in [7, 1000] {
            assert_eq!(
                id_set(&list_ids(&mut store, status, limit)),
                by_scan,
                "{status}"
            );
        }
    }
    // Every entry left is final (no write is under way) and names a pending task: the
    // listing pruned the deleted and moved ones.
    let slot = key_slot(PENDING_INDEX.as_bytes());
    let owner = cluster.owner_of_slot(slot).unwrap();
    let mut con = plain_url(&format!("redis://{}", cluster.nodes()[owner].addr()));
    let left = entries(&mut con, PENDING_INDEX);
    for (id, score) in &left {
        let score: f64 = score.parse().unwrap();
        assert!(score.fract() < 0.5, "{id}: {score}");
    }
    let pending = id_set(&list_ids(&mut scan, "pending", 1000));
    assert_eq!(
        left.iter()
            .map(|(id, _)| id.clone())
            .collect::<BTreeSet<_>>(),
        pending
    );
    // Tasks written by others on any master are found after a reindex.
    let mut plain_cluster = cluster
        .nodes()
        .iter()
        .map(|node| plain_url(&format!("redis://{}", node.addr())))
        .collect::<Vec<_>>();
    let owners = cluster.slot_owners().unwrap();
    let mut foreign = BTreeSet::new();
    for i in 0..60 {
        let id = format!("py-{i}");
        let node = owners[usize::from(key_slot(key(&id).as_bytes()))].unwrap();
        let _: () = redis::cmd("SETEX")
            .arg(key(&id))
            .arg(600)
            .arg(doc(&id, "pending"))
            .query(&mut plain_cluster[node])
            .unwrap();
        foreign.insert(id);
    }
    assert!(id_set(&list_ids(&mut store, "pending", 100)).is_disjoint(&foreign));
    let mut cursor = None;
    loop {
        let page = store.reindex(cursor.as_deref(), Some(50)).unwrap();
        match page.cursor {
            None => break,
            next => cursor = next,
        }
    }
    assert!(id_set(&list_ids(&mut store, "pending", 100)).is_superset(&foreign));
}
