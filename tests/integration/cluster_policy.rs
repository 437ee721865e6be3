//! Where a cluster URL lets the component go: the cluster's own answers never widen the
//! sandbox beyond the operator's allow-list, so a seed cannot send the component, and the
//! cluster password with it, anywhere it likes.

use taskstore_host::{ErrorKind, Options};
use taskstore_testing::redis_cluster::start_node_announcing;

use crate::support::{open_with, plain_url, RedisServer};

const PASSWORD: &str = "Cluster/Pa55@word";

/// A one-node cluster, listening on 127.0.0.1 and 127.0.0.2, that tells its clients it is
/// at 127.0.0.2 (`cluster-announce-ip`), as any seed may claim any address.
fn node_announcing_127_0_0_2() -> RedisServer {
    start_node_announcing("127.0.0.2", Some(PASSWORD))
        .expect("a cluster-enabled redis-server starts")
}

/// Connections the node has accepted on 127.0.0.2, the address it announced.
fn clients_on_announced_address(node: &RedisServer) -> usize {
    let mut admin = plain_url(&format!(
        "redis://:{}@127.0.0.1:{}",
        PASSWORD.replace('/', "%2F").replace('@', "%40"),
        node.port()
    ));
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut admin)
        .expect("CLIENT LIST");
    list.lines()
        .filter(|line| line.contains(&format!("laddr=127.0.0.2:{}", node.port())))
        .count()
}

fn options(node: &RedisServer) -> Options {
    Options {
        password: Some(PASSWORD.to_owned()),
        ..Options::new(format!("redis+cluster://127.0.0.1:{}", node.port()))
    }
}

#[test]
fn a_node_reported_outside_the_allow_list_is_never_contacted() {
    let node = node_announcing_127_0_0_2();
    let error = open_with(options(&node))
        .and_then(|mut store| store.get("t1"))
        .expect_err("the announced address is outside the allow-list");
    assert_eq!(error.kind(), ErrorKind::Connection, "{error:?}");
    assert!(!error.to_string().contains("Pa55"), "{error}");
    assert_eq!(clients_on_announced_address(&node), 0, "contacted: {error}");
}

#[test]
fn the_operator_can_widen_the_allow_list_to_the_reported_node() {
    let node = node_announcing_127_0_0_2();
    let mut store = open_with(Options {
        cluster_allow: vec![format!("127.0.0.2:{}", node.port()).parse().unwrap()],
        ..options(&node)
    })
    .expect("the store opens");
    store
        .set("t1", r#"{"id":"t1","status":"pending"}"#, None)
        .unwrap();
    assert!(store.exists("t1").unwrap());
    assert!(clients_on_announced_address(&node) > 0);
}
