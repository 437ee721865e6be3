//! Races put in place rather than hoped for: the fault proxy's `WriteFirst` runs another
//! client's write at an exact point of one operation, so each test shows the same
//! interleaving on every run. On a cluster, a slot migration is walked step by step while
//! several writers update the slot's tasks, and a plain client writes at each step.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;
use taskstore::cluster::key_slot;
use taskstore_host::{ErrorKind, Options, TaskStore, TtlPolicy, UpdateOptions};
use taskstore_testing::fault::{Fault, FaultProxy};
use taskstore_testing::redis_cluster::RedisCluster;

const DOC: &str = r#"{"status":"pending","progress":0}"#;
/// What the other client writes between `update`'s `GET` and its `EXEC`: same status, a
/// field of its own, TTL kept (as the Python service's read-modify-write would not, but a
/// careful writer does).
const INJECTED: &str = r#"{"status":"pending","progress":0,"note":"written by another client"}"#;

fn key(id: &str) -> String {
    format!("{DEFAULT_PREFIX}{id}")
}

fn proxied(server: &RedisServer) -> (FaultProxy, TaskStore) {
    let proxy = FaultProxy::start(server.addr());
    let store = open_with(Options::new(proxy.url())).expect("open through the proxy");
    (proxy, store)
}

fn injected_write(id: &str) -> Fault {
    Fault::WriteFirst(vec![
        b"SET".to_vec(),
        key(id).into_bytes(),
        INJECTED.as_bytes().to_vec(),
        b"KEEPTTL".to_vec(),
    ])
}

#[test]
fn a_write_between_get_and_exec_makes_update_retry_and_keeps_both_writes() {
    let server = server();
    let (proxy, mut store) = proxied(&server);
    store.set("t1", DOC, None).unwrap();
    // The write lands after this update's WATCH + GET and before its MULTI/SET/EXEC.
    proxy.arm("MULTI", injected_write("t1"), 1);

    let updated = store
        .update(
            "t1",
            r#"{"progress":50}"#,
            &UpdateOptions {
                expect_status: Some("pending".into()),
                ttl: TtlPolicy::Keep,
            },
        )
        .expect("update retries internally and wins")
        .expect("the task exists");

    // The first EXEC was aborted by Redis (the key changed under WATCH); the store started
    // over from the other client's version on its own, without surfacing `contended`.
    assert_eq!(proxy.seen("WATCH"), 2, "one retry, no more");
    assert_eq!(proxy.seen("EXEC"), 2);
    let stored: serde_json::Value = serde_json::from_slice(
        &plain_get(&mut plain(&server), &key("t1")).expect("the task is still there"),
    )
    .unwrap();
    assert_eq!(
        stored,
        serde_json::json!({
            "status": "pending",
            "progress": 50,
            "note": "written by another client",
        }),
        "neither the injected write nor the patch may be lost"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&updated).unwrap(),
        stored
    );
}

#[test]
fn a_status_change_between_get_and_exec_turns_into_a_conflict_on_the_retry() {
    let server = server();
    let (proxy, mut store) = proxied(&server);
    store.set("t2", DOC, None).unwrap();
    let completed = r#"{"status":"completed","progress":100}"#;
    proxy.arm(
        "MULTI",
        Fault::WriteFirst(vec![
            b"SET".to_vec(),
            key("t2").into_bytes(),
            completed.as_bytes().to_vec(),
            b"KEEPTTL".to_vec(),
        ]),
        1,
    );

    let err = store
        .update(
            "t2",
            r#"{"progress":50}"#,
            &UpdateOptions {
                expect_status: Some("pending".into()),
                ttl: TtlPolicy::Keep,
            },
        )
        .expect_err("the precondition no longer holds after the other write");

    // The retry re-read the task and found the other client's status: a conflict carrying
    // exactly what is stored, and the other client's write untouched.
    assert_eq!(err.current_document(), Some(completed), "{err:?}");
    assert_eq!(proxy.seen("WATCH"), 2);
    assert_eq!(
        plain_get(&mut plain(&server), &key("t2")).as_deref(),
        Some(completed.as_bytes())
    );
}

// --- a cluster while the tasks' slot moves ----------------------------------------------

/// Writers, each with a store of its own, updating the same tasks.
const CLUSTER_WRITERS: usize = 3;
/// Tasks in the migrating slot.
const SLOT_TASKS: usize = 4;
/// Rounds (one update of every task) each writer completes in every state of the migration
/// before the next step.
const ROUNDS_PER_STEP: usize = 2;
/// A writer stops after this many rounds whatever happens: every loop is bounded.
const MAX_ROUNDS: usize = 2_000;
/// The whole walk (two migrations) ends within this.
const WALK_DEADLINE: Duration = Duration::from_secs(120);

/// `count` ids whose keys share one hash slot served by node `index`, and that slot.
fn ids_in_one_slot(cluster: &RedisCluster, index: usize, count: usize) -> (u16, Vec<String>) {
    let owners = cluster.slot_owners().unwrap();
    let slot_of = |id: &str| key_slot(key(id).as_bytes());
    let first = (0..100_000)
        .map(|i| format!("moving-{i}"))
        .find(|id| owners[usize::from(slot_of(id))] == Some(index))
        .expect("a slot of the node");
    let slot = slot_of(&first);
    let mut ids = vec![first];
    ids.extend(
        (0..1_000_000)
            .map(|i| format!("m{i}"))
            .filter(|id| slot_of(id) == slot)
            .take(count - 1),
    );
    assert_eq!(ids.len(), count);
    (slot, ids)
}

fn assert_ok(reply: &[u8]) {
    assert!(
        reply.starts_with(b"+OK"),
        "{}",
        String::from_utf8_lossy(reply)
    );
}

/// Appends `"<member>": true` to the task under `key` on node `index` the way a plain
/// client that knows nothing of the component would, atomically (one Lua script), keeping
/// the TTL; `ASKING` first when the node is importing the slot.
fn plain_append(cluster: &RedisCluster, index: usize, asking: bool, key: &str, member: &str) {
    const APPEND: &str = r#"
        local current = redis.call('GET', KEYS[1])
        local body = string.match(current, '^(.*)}%s*$')
        redis.call('SET', KEYS[1], body .. ', "' .. ARGV[1] .. '": true}', 'KEEPTTL')
        return 1
    "#;
    let mut con = plain_url(&format!("redis://{}", cluster.nodes()[index].addr()));
    if asking {
        let () = redis::cmd("ASKING").query(&mut con).expect("ASKING");
    }
    let appended: i64 = redis::cmd("EVAL")
        .arg(APPEND)
        .arg(1)
        .arg(key)
        .arg(member)
        .query(&mut con)
        .unwrap_or_else(|e| panic!("plain append of {member} to {key} on node {index}: {e}"));
    assert_eq!(appended, 1);
}

/// What one writer did: the members of the updates acknowledged, and of those refused
/// (with the error), per task.
#[derive(Default)]
struct WriterLog {
    acknowledged: Vec<(String, String)>,
    refused: Vec<(String, String, String)>,
}

/// Updates every task once per round with a member of its own (`w<writer>_<round>`) until
/// `stop`, counting rounds in `rounds`.
fn write_until_stopped(
    url: &str,
    writer: usize,
    ids: &[String],
    rounds: &AtomicUsize,
    stop: &AtomicBool,
) -> WriterLog {
    let mut store = open_with(Options::new(url)).expect("the writer opens a cluster store");
    let mut log = WriterLog::default();
    for round in 0..MAX_ROUNDS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for id in ids {
            let member = format!("w{writer}_{round}");
            let patch = format!(r#"{{"{member}": true}}"#);
            match store.update(id, &patch, &UpdateOptions::default()) {
                Ok(Some(document)) => {
                    let value: Value = serde_json::from_str(&document).unwrap();
                    assert_eq!(value[&member], true, "{id}: the update returned {document}");
                    log.acknowledged.push((id.clone(), member));
                }
                Ok(None) => panic!("{id} vanished during the migration"),
                // What the WIT allows an update to report while slots move: a passing state
                // of the server (`TRYAGAIN`, `CLUSTERDOWN`, ...), nothing written. Anything
                // else fails the test here: a redirect surfacing, a protocol error, and
                // `contended` too, which three writers cannot cause against the component's
                // 100 attempts unless its own retry stopped working.
                Err(error)
                    if error.kind() == ErrorKind::Server
                        && error.is_retryable()
                        && !error.may_have_applied() =>
                {
                    log.refused.push((id.clone(), member, error.to_string()));
                }
                Err(error) => panic!("writer {writer}, {id}, round {round}: {error:?}"),
            }
        }
        rounds.fetch_add(1, Ordering::SeqCst);
    }
    log
}

/// The migration of the tasks' slot, one step at a time, with the writers at work.
struct Walk<'a> {
    cluster: &'a RedisCluster,
    slot: String,
    keys: Vec<String>,
    rounds: &'a [AtomicUsize],
    writers_done: &'a dyn Fn() -> bool,
    deadline: Instant,
    /// Members the plain client appended, per task index.
    plain_members: Vec<Vec<String>>,
    steps: usize,
}

impl Walk<'_> {
    /// After a step: the plain client appends a member to every task (on the node holding
    /// it, `ASKING` where that node imports the slot), then every writer completes
    /// [`ROUNDS_PER_STEP`] more rounds in this state.
    fn settle(&mut self, holder: impl Fn(usize) -> (usize, bool)) {
        self.steps += 1;
        for (index, key) in self.keys.iter().enumerate() {
            let member = format!("p{}", self.steps);
            let (node, asking) = holder(index);
            plain_append(self.cluster, node, asking, key, &member);
            self.plain_members[index].push(member);
        }
        let start: Vec<usize> = self
            .rounds
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect();
        loop {
            let behind = self
                .rounds
                .iter()
                .zip(&start)
                .any(|(now, start)| now.load(Ordering::SeqCst) < start + ROUNDS_PER_STEP);
            if !behind {
                return;
            }
            // A writer that ended early panicked or ran out of rounds: stop waiting, the
            // join reports it.
            if (self.writers_done)() {
                return;
            }
            assert!(
                Instant::now() < self.deadline,
                "the writers did not progress at step {}",
                self.steps
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Moves the slot from `source` to `target` the way `redis-cli --cluster reshard`
    /// does, one key per `MIGRATE`, settling after every step.
    fn migrate(&mut self, source: usize, target: usize) {
        let cluster = self.cluster;
        let slot = self.slot.clone();
        let on_source = |_| (source, false);
        self.settle(on_source);
        cluster
            .set_slot(target, &slot, "IMPORTING", source)
            .unwrap();
        self.settle(on_source);
        cluster
            .set_slot(source, &slot, "MIGRATING", target)
            .unwrap();
        self.settle(on_source);
        for moved in 0..self.keys.len() {
            let key = self.keys[moved].clone();
            cluster.migrate_key(source, target, &key).unwrap();
            // Keys up to `moved` are on the target (importing: ASKING), the rest still on
            // the source.
            self.settle(|index| {
                if index <= moved {
                    (target, true)
                } else {
                    (source, false)
                }
            });
        }
        // Hand the slot over: the target first, as redis-cli does, then the others.
        let mut nodes: Vec<usize> = vec![target, source];
        nodes.extend((0..cluster.nodes().len()).filter(|n| ![source, target].contains(n)));
        for node in nodes {
            cluster.set_slot(node, &slot, "NODE", target).unwrap();
            self.settle(|_| (target, false));
        }
    }
}

#[test]
fn updates_from_several_writers_while_their_slot_moves_are_never_lost() {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let (slot, ids) = ids_in_one_slot(&cluster, 0, SLOT_TASKS);
    let mut setup = open_with(Options::new(cluster.seed_url(0))).unwrap();
    for id in &ids {
        setup.set(id, r#"{"status": "running"}"#, None).unwrap();
    }
    let rounds: Vec<AtomicUsize> = (0..CLUSTER_WRITERS).map(|_| AtomicUsize::new(0)).collect();
    let stop = AtomicBool::new(false);

    let (logs, plain_members, steps) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..CLUSTER_WRITERS)
            .map(|writer| {
                let (url, ids, rounds, stop) =
                    (cluster.seed_url(writer), &ids, &rounds[writer], &stop);
                scope.spawn(move || write_until_stopped(&url, writer, ids, rounds, stop))
            })
            .collect();
        let writers_done = || writers.iter().any(|w| w.is_finished());
        let mut walk = Walk {
            cluster: &cluster,
            slot: slot.to_string(),
            keys: ids.iter().map(|id| key(id)).collect(),
            rounds: &rounds,
            writers_done: &writers_done,
            deadline: Instant::now() + WALK_DEADLINE,
            plain_members: vec![Vec::new(); ids.len()],
            steps: 0,
        };
        // There and back again: node 0 → node 1, then node 1 → node 0.
        walk.migrate(0, 1);
        assert_eq!(cluster.owner_of_slot(slot).unwrap(), 1);
        walk.migrate(1, 0);
        assert_eq!(cluster.owner_of_slot(slot).unwrap(), 0);
        stop.store(true, Ordering::SeqCst);
        let (plain_members, steps) = (walk.plain_members, walk.steps);
        let logs: Vec<WriterLog> = writers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .collect();
        (logs, plain_members, steps)
    });

    // A writer that ran out of rounds stopped taking part before the walk ended.
    assert!(
        rounds.iter().all(|r| r.load(Ordering::SeqCst) < MAX_ROUNDS),
        "a writer ran out of rounds during the walk"
    );
    let documents = setup.get_many(&ids).unwrap();
    let mut refusals = Vec::new();
    for (index, (id, document)) in ids.iter().zip(documents).enumerate() {
        let document = document.unwrap_or_else(|| panic!("{id} was lost"));
        let value: Value = serde_json::from_str(&document).expect("valid JSON");
        let members = value.as_object().expect("an object");
        let mut expected: BTreeSet<String> = plain_members[index].iter().cloned().collect();
        for log in &logs {
            expected.extend(
                log.acknowledged
                    .iter()
                    .filter(|(acked, _)| acked == id)
                    .map(|(_, member)| member.clone()),
            );
            for (refused, member, error) in &log.refused {
                if refused == id {
                    assert!(
                        !members.contains_key(member),
                        "{id}: {member} was refused ({error}) yet written"
                    );
                    refusals.push(error.clone());
                }
            }
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|member| members.get(member.as_str()) != Some(&Value::Bool(true)))
            .collect();
        assert!(missing.is_empty(), "{id}: lost updates {missing:?}");
        // Nothing but the status and what was acknowledged.
        assert_eq!(members.len(), 1 + expected.len(), "{id}: {document}");
        assert_eq!(members["status"], "running");
    }
    let acknowledged: usize = logs.iter().map(|log| log.acknowledged.len()).sum();
    let refused: BTreeSet<String> = refusals.into_iter().collect();
    eprintln!(
        "{steps} migration steps, {acknowledged} updates acknowledged, refusals: {refused:?}"
    );
    assert!(
        acknowledged >= steps * ROUNDS_PER_STEP * CLUSTER_WRITERS * SLOT_TASKS / 2,
        "the writers barely worked: {acknowledged} updates in {steps} steps"
    );
}

#[test]
fn a_key_migrated_between_get_and_exec_makes_update_follow_it_and_keep_every_write() {
    let cluster = RedisCluster::start(3).expect("a 3-master redis cluster starts");
    let (slot, ids) = ids_in_one_slot(&cluster, 0, 1);
    let (source, target) = (0, 1);
    // Node 0 tells clients it is at the proxy's port, so the store reaches it through the
    // proxy (and the other masters directly): the proxy can act between the steps of an
    // update on the node that holds the key.
    let proxy = FaultProxy::start(cluster.nodes()[source].addr());
    let proxy_port = proxy.addr().port().to_string();
    assert_ok(
        &cluster
            .command(
                source,
                &[
                    b"CONFIG",
                    b"SET",
                    b"cluster-announce-port",
                    proxy_port.as_bytes(),
                ],
            )
            .unwrap(),
    );
    let announced = eventually(PLAIN_TIMEOUT, || {
        let slots = cluster.command(source, &[b"CLUSTER", b"SLOTS"]).unwrap();
        slots
            .windows(proxy_port.len())
            .any(|w| w == proxy_port.as_bytes())
    });
    assert!(announced, "node 0 never announced the proxy's port");
    let mut store = open_with(Options::new(format!("redis+cluster://{}", proxy.addr()))).unwrap();
    let id = &ids[0];
    store.set(id, DOC, None).unwrap();

    let slot = slot.to_string();
    cluster
        .set_slot(target, &slot, "IMPORTING", source)
        .unwrap();
    cluster
        .set_slot(source, &slot, "MIGRATING", target)
        .unwrap();
    // First attempt, after its WATCH + GET on the source: another client writes the task,
    // so Redis aborts the EXEC. Second attempt, same place: the key leaves for the target,
    // so the source refuses the queued SET with ASK. (One fault per batch: the MULTI's
    // fault fires in the first attempt's MULTI/SET/EXEC batch, the EXEC's in the second.)
    let target_port = cluster.nodes()[target].port().to_string();
    proxy.arm("MULTI", injected_write(id), 1);
    proxy.arm(
        "EXEC",
        Fault::WriteFirst(vec![
            b"MIGRATE".to_vec(),
            b"127.0.0.1".to_vec(),
            target_port.into_bytes(),
            key(id).into_bytes(),
            b"0".to_vec(),
            b"5000".to_vec(),
        ]),
        1,
    );

    let updated = store
        .update(id, r#"{"progress":50}"#, &UpdateOptions::default())
        .expect("the update follows the key")
        .expect("the task exists");

    // Two attempts on the source, both stopped short of writing; the third ran whole on
    // the target (following the ASK, not through the proxy), from the other client's
    // version, with nothing surfacing to the caller.
    assert_eq!(proxy.seen("WATCH"), 2);
    assert_eq!(proxy.seen("EXEC"), 2);
    let mut on_target = plain_url(&format!("redis://{}", cluster.nodes()[target].addr()));
    let () = redis::cmd("ASKING").query(&mut on_target).unwrap();
    let stored: Value = serde_json::from_slice(
        &plain_get(&mut on_target, &key(id)).expect("the task is on the target"),
    )
    .unwrap();
    assert_eq!(
        stored,
        serde_json::json!({
            "status": "pending",
            "progress": 50,
            "note": "written by another client",
        }),
        "neither the other client's write nor the patch may be lost"
    );
    assert_eq!(serde_json::from_str::<Value>(&updated).unwrap(), stored);
}
