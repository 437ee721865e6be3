//! Listing while the data changes: a task that exists for the whole listing is returned at
//! least once, whatever is deleted, added or expires between pages — on one server and on a
//! cluster whose slots move mid-listing — and pages stay within their byte budget.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use taskstore_host::{ListOptions, Options, Page, Task, TaskStore};
use taskstore_testing::redis_cluster::RedisCluster;

/// Pages any listing here may take before the test gives up on it ending.
const MAX_PAGES: usize = 10_000;

fn doc(id: &str) -> String {
    format!(r#"{{"id": "{id}", "status": "pending"}}"#)
}

fn page(store: &mut TaskStore, limit: u32, cursor: Option<String>) -> Page {
    let page = store
        .list(&ListOptions {
            status: Some("pending".into()),
            limit: Some(limit),
            cursor,
        })
        .expect("list");
    assert!(
        page.tasks.len() <= limit as usize,
        "{} tasks",
        page.tasks.len()
    );
    page
}

/// Lists page by page, calling `between(page_number, tasks listed so far)` after each page,
/// and returns every id listed, in order, as often as it was listed.
fn list_changing(
    store: &mut TaskStore,
    limit: u32,
    mut between: impl FnMut(usize, &[Task]),
) -> Vec<String> {
    let mut listed = Vec::new();
    let mut cursor = None;
    for number in 0..MAX_PAGES {
        let next = page(store, limit, cursor);
        listed.extend(next.tasks);
        match next.cursor {
            None => return listed.into_iter().map(|task| task.id).collect(),
            Some(text) => cursor = Some(text),
        }
        between(number, &listed);
    }
    panic!("the listing did not end within {MAX_PAGES} pages");
}

/// How many times each id was listed.
fn times_listed(listed: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for id in listed {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    counts
}

/// The ids listed more than once, with how many times.
fn listed_repeatedly(listed: &[String]) -> BTreeMap<&str, usize> {
    times_listed(listed)
        .into_iter()
        .filter(|&(_, times)| times > 1)
        .collect()
}

/// Where Redis only deletes or expires keys (its table keeps its size: too few go to shrink
/// it), the contract promises each task at most once: duplicates come only from rehashing
/// or moving slots.
#[track_caller]
fn assert_listed_at_most_once(listed: &[String]) {
    let repeated = listed_repeatedly(listed);
    assert!(
        repeated.is_empty(),
        "listed more than once: {repeated:.10?}"
    );
}

fn store_tasks(store: &mut TaskStore, ids: &[String]) {
    for chunk in ids.chunks(500) {
        let tasks: Vec<Task> = chunk
            .iter()
            .map(|id| Task {
                id: id.clone(),
                document: doc(id),
            })
            .collect();
        for result in store.set_many(&tasks, None).unwrap() {
            result.unwrap();
        }
    }
}

fn assert_all_listed(listed: &[String], survivors: &BTreeSet<String>) {
    let listed: BTreeSet<String> = listed.iter().cloned().collect();
    let missed: Vec<&String> = survivors.difference(&listed).collect();
    assert!(
        missed.is_empty(),
        "{} of {} tasks that existed throughout were never listed: {missed:.10?}",
        missed.len(),
        survivors.len()
    );
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:05}")).collect()
}

#[test]
fn deleting_listed_tasks_between_pages_misses_no_other_task() {
    let server = server();
    let mut store = open(&server);
    let mut con = plain(&server);
    let ids = ids("task", 300);
    store_tasks(&mut store, &ids);
    let mut deleted = BTreeSet::new();
    let listed = list_changing(&mut store, 10, |_, listed| {
        // A worker completes a task it was given: gone before the next page.
        if let Some(task) = listed.iter().rev().find(|t| !deleted.contains(&t.id)) {
            redis::cmd("DEL")
                .arg(format!("{DEFAULT_PREFIX}{}", task.id))
                .exec(&mut con)
                .unwrap();
            deleted.insert(task.id.clone());
        }
    });
    assert!(deleted.len() >= 10, "{} deleted", deleted.len());
    let survivors: BTreeSet<String> = ids.into_iter().filter(|id| !deleted.contains(id)).collect();
    assert_all_listed(&listed, &survivors);
    assert_listed_at_most_once(&listed);
}

#[test]
fn inserting_many_tasks_between_pages_misses_no_existing_task() {
    let server = server();
    let mut store = open(&server);
    let ids = ids("old", 300);
    store_tasks(&mut store, &ids);
    let mut added = 0;
    // 300 keys fit a 512-bucket table. Bursts of writes (tasks, and other keys sharing the
    // database) make Redis grow and rehash it six times while the listing is under way;
    // rehashing reorders the keys of a bucket, so small pages end between reordered keys.
    let listed = list_changing(&mut store, 2, |number, _| {
        if number % 10 == 5 && number < 60 {
            let count = 250 << (number / 10);
            let fresh: Vec<String> = (0..count).map(|i| format!("new-{number}-{i:05}")).collect();
            added += fresh.len();
            store_keys_plain(&server, "other:", &fresh[..count / 2]);
            store_keys_plain(&server, DEFAULT_PREFIX, &fresh[count / 2..]);
        }
    });
    assert_eq!(added, 15_750);
    // Redis rehashed mid-listing: the contract allows a task twice, never more.
    let repeated = listed_repeatedly(&listed);
    assert!(
        repeated.values().all(|&times| times == 2),
        "listed more than twice: {repeated:.10?}"
    );
    eprintln!("{} tasks listed twice", repeated.len());
    assert_all_listed(&listed, &ids.into_iter().collect());
}

/// Writes tasks (or other keys) with a plain client, as another process would, while `list`
/// is in progress.
fn store_keys_plain(server: &RedisServer, prefix: &str, ids: &[String]) {
    let mut con = plain(server);
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("SET")
            .arg(format!("{prefix}{id}"))
            .arg(doc(id))
            .ignore();
    }
    pipe.exec(&mut con).unwrap();
}

#[test]
fn tasks_expiring_between_pages_make_no_other_task_missed() {
    let server = server();
    let mut store = open(&server);
    let mut con = plain(&server);
    let ids = ids("task", 300);
    store_tasks(&mut store, &ids);
    let mut expired = BTreeSet::new();
    let listed = list_changing(&mut store, 10, |number, listed| {
        // Two tasks per page run out of time: one already listed, one not yet.
        let listed_ids: BTreeSet<&str> = listed.iter().map(|t| t.id.as_str()).collect();
        let seen = listed
            .iter()
            .rev()
            .find(|t| !expired.contains(&t.id))
            .map(|t| t.id.clone());
        let unseen = ids
            .iter()
            .skip(number * 7 % 300)
            .find(|id| !listed_ids.contains(id.as_str()) && !expired.contains(*id))
            .cloned();
        for id in seen.into_iter().chain(unseen) {
            redis::cmd("PEXPIRE")
                .arg(format!("{DEFAULT_PREFIX}{id}"))
                .arg(1)
                .exec(&mut con)
                .unwrap();
            expired.insert(id);
        }
        thread::sleep(Duration::from_millis(3));
    });
    assert!(expired.len() >= 20, "{} expired", expired.len());
    let survivors: BTreeSet<String> = ids.into_iter().filter(|id| !expired.contains(id)).collect();
    assert_all_listed(&listed, &survivors);
    assert_listed_at_most_once(&listed);
}

#[test]
fn pages_end_early_at_the_byte_budget_and_the_listing_goes_on() {
    const BUDGET: usize = 4 * 1024 * 1024;
    let server = server();
    let mut store = open(&server);
    let big = |id: &str| {
        format!(
            r#"{{"id": "{id}", "status": "pending", "blob": "{}"}}"#,
            "x".repeat(1_100_000)
        )
    };
    let ids = ids("big", 12);
    for id in &ids {
        store.set(id, &big(id), None).unwrap();
    }
    // One task over the whole budget still gets a page of its own.
    let huge = format!(
        r#"{{"id": "huge", "status": "pending", "blob": "{}"}}"#,
        "y".repeat(5_000_000)
    );
    store.set("huge", &huge, None).unwrap();
    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    for _ in 0..100 {
        let next = page(&mut store, 100, cursor);
        pages += 1;
        let bytes: usize = next.tasks.iter().map(|t| t.document.len()).sum();
        assert!(
            bytes <= BUDGET || next.tasks.len() == 1,
            "a page of {} tasks holds {bytes} bytes",
            next.tasks.len()
        );
        listed.extend(next.tasks.into_iter().map(|t| t.id));
        if let Some(text) = &next.cursor {
            // Cursors travel in HTTP query strings: unreserved URL characters only.
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b)),
                "cursor {text:?} is not URL-safe"
            );
        }
        cursor = next.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the listing did not end");
    // Nothing changed during the listing: each task exactly once.
    let mut expected: Vec<String> = ids;
    expected.push("huge".into());
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected);
    assert!(pages >= 4, "{pages} pages");
}

/// Moves slots between the masters in a cycle (100 0→1, 200 1→2, 300 2→0; `redis-cli`
/// takes a master's lowest slots first, so some slots travel twice): whatever order a
/// listing scans the masters in, some keys move from a master it has not scanned yet to one
/// it already has.
fn reshard_in_a_cycle(cluster: &RedisCluster) {
    for from in 0..3 {
        let (to, slots) = ((from + 1) % 3, 100 * (from + 1));
        cluster
            .reshard(from, to, slots)
            .unwrap_or_else(|err| panic!("reshard {from} -> {to}: {err:#}"));
    }
}

#[test]
fn a_cluster_listing_interleaved_with_slot_migrations_misses_no_task() {
    let cluster =
        RedisCluster::start(3).expect("a 3-master redis cluster starts (run scripts/setup.sh)");
    let mut store = open_with(Options::new(cluster.seed_url(0))).expect("a cluster store");
    let ids = ids("task", 1200);
    store_tasks(&mut store, &ids);
    let deadline = Instant::now() + Duration::from_secs(240);
    let owners_before = cluster.slot_owners().unwrap();
    let mut pages_during_the_moves = 0;
    let listed = thread::scope(|scope| {
        let mut reshard = None;
        let listed = list_changing(&mut store, 10, |number, _| {
            assert!(Instant::now() < deadline, "the listing took too long");
            // Mid-listing (about half of 120 pages), slots start to move; the listing goes
            // on meanwhile, but waits at page 75 for the moves to end, so that they all
            // happen while the listing is under way.
            if number == 55 {
                reshard = Some(scope.spawn(|| reshard_in_a_cycle(&cluster)));
            }
            if let Some(handle) = reshard.take_if(|_| number == 75) {
                handle.join().expect("the reshard succeeds");
            }
            if reshard.is_some() {
                pages_during_the_moves += 1;
                thread::sleep(Duration::from_millis(20));
            }
        });
        if let Some(handle) = reshard {
            handle.join().expect("the reshard succeeds");
        }
        listed
    });
    assert!(
        pages_during_the_moves > 0,
        "the listing ended before the slots moved"
    );
    let owners_after = cluster.slot_owners().unwrap();
    let moved = owners_before
        .iter()
        .zip(&owners_after)
        .filter(|(before, after)| before != after)
        .count();
    assert!(moved >= 200, "only {moved} slots moved");
    eprintln!("{moved} slots moved; {pages_during_the_moves} pages listed while they moved");
    assert_all_listed(&listed, &ids.iter().cloned().collect());
    // Slots moved mid-listing, so masters were scanned again, every task of theirs with
    // them: a task may be listed more than once, but only once per scan of a master, and a
    // listing scans at most 4 masters per master of the slot map (then fails instead).
    let most = 4 * cluster.nodes().len();
    let repeated = listed_repeatedly(&listed);
    eprintln!(
        "{} tasks listed more than once, at most {} times",
        repeated.len(),
        repeated.values().max().unwrap_or(&1)
    );
    assert!(
        repeated.values().all(|&times| times <= most),
        "listed more than {most} times: {repeated:.10?}"
    );
    let stored: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let strangers: Vec<&String> = listed
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        strangers.is_empty(),
        "listed, never stored: {strangers:.10?}"
    );
}

/// While nothing changes, each task is listed exactly once — also when one SCAN call's keys
/// are too many for the cursor to carry. Long ids (220 bytes: 442 in the cursor, so fewer
/// than 19 fit in its 8 KiB) and a status that one task in eight has make the page ask SCAN
/// for many keys per task it can still take, so a full page leaves dozens unread: the page
/// must go back to before that call, not list those it took again on the next page.
#[test]
fn leftovers_too_many_for_the_cursor_never_list_a_task_twice() {
    let server = server();
    let mut store = open(&server);
    let long = "x".repeat(200);
    let ids: Vec<String> = (0..800).map(|i| format!("{long}-{i:05}")).collect();
    for chunk in ids.chunks(200) {
        let tasks: Vec<Task> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let status = if i % 8 == 0 { "running" } else { "pending" };
                Task {
                    id: id.clone(),
                    document: format!(r#"{{"status": "{status}"}}"#),
                }
            })
            .collect();
        for result in store.set_many(&tasks, None).unwrap() {
            result.unwrap();
        }
    }
    let running: BTreeSet<String> = ids.iter().step_by(8).cloned().collect();

    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(
            pages <= MAX_PAGES,
            "the listing did not end within {MAX_PAGES} pages"
        );
        let page = store
            .list(&ListOptions {
                status: Some("running".into()),
                limit: Some(5),
                cursor,
            })
            .expect("list");
        assert!(page.tasks.len() <= 5);
        listed.extend(page.tasks.into_iter().map(|task| task.id));
        match page.cursor {
            None => break,
            Some(text) => cursor = Some(text),
        }
    }
    assert_listed_at_most_once(&listed);
    assert_all_listed(&listed, &running);
    assert_eq!(listed.len(), running.len());
}
