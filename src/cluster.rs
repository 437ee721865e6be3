//! Redis Cluster, the pure part: key slots, the slot map from `CLUSTER SLOTS`, `MOVED` /
//! `ASK` redirects, and the listing cursor that spans every master. No I/O here; the
//! cluster-aware client in [`crate::cluster_client`] uses these.

use std::fmt;

use crate::resp::Reply;
use crate::transport::Endpoint;

/// Redis Cluster divides the key space into this many hash slots.
pub const SLOT_COUNT: usize = 16_384;

/// The hash slot of `key`: CRC16 (XMODEM) modulo 16384 of the key, or of its hash tag —
/// the text between the first `{` and the next `}`, when that is not empty — so that keys
/// sharing a tag share a slot (and therefore a node).
pub fn key_slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// Which redirect a node answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    /// The slot lives on another node now: update the slot map and go there.
    Moved,
    /// The slot is being migrated and this key is already on the target: ask the target
    /// once (`ASKING` first), without changing the slot map.
    Ask,
}

/// A `-MOVED <slot> <host>:<port>` or `-ASK <slot> <host>:<port>` error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub kind: RedirectKind,
    pub slot: u16,
    pub target: Endpoint,
}

/// Parses a redirect error message (the text after `-`). `answering_host` stands in for an
/// empty host, which Redis sends when the target's address is the one it was reached by.
/// `None` for any other message.
pub fn parse_redirect(message: &str, answering_host: &str) -> Option<Redirect> {
    let mut parts = message.split(' ');
    let kind = match parts.next()? {
        "MOVED" => RedirectKind::Moved,
        "ASK" => RedirectKind::Ask,
        _ => return None,
    };
    let slot: u16 = parts.next()?.parse().ok()?;
    let address = parts.next()?;
    if parts.next().is_some() || usize::from(slot) >= SLOT_COUNT {
        return None;
    }
    // IPv6 addresses come unbracketed (`::1:7000`): the port follows the last colon.
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|port| *port != 0)?;
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => answering_host,
        host => host,
    };
    valid_host(host).then(|| Redirect {
        kind,
        slot,
        target: Endpoint {
            host: host.to_owned(),
            port,
        },
    })
}

/// A host name or IP literal as a node may announce it; anything else is not dialled.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// One contiguous range of slots and the master serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub master: Endpoint,
}

/// Parses a `CLUSTER SLOTS` reply: an array of `[first, last, [host, port, id, …], replicas…]`.
/// Replicas are ignored (every command goes to a master). A master announced with an empty
/// host is `answering_host`; one announced as `?` (no known endpoint) leaves its range out,
/// so keys there fail with a clear error rather than a connection to nowhere.
///
/// # Errors
/// The reply is not shaped like `CLUSTER SLOTS`; the message says what is wrong.
pub fn parse_cluster_slots(reply: &Reply, answering_host: &str) -> Result<Vec<SlotRange>, String> {
    let Reply::Array(entries) = reply else {
        return Err("CLUSTER SLOTS did not answer an array".into());
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Reply::Array(fields) = entry else {
            return Err("a CLUSTER SLOTS entry is not an array".into());
        };
        let slot = |field: Option<&Reply>| match field {
            Some(Reply::Integer(n)) if (0..SLOT_COUNT as i64).contains(n) => Ok(*n as u16),
            _ => Err("a CLUSTER SLOTS entry has a bad slot number".to_owned()),
        };
        let first = slot(fields.first())?;
        let last = slot(fields.get(1))?;
        if first > last {
            return Err(format!(
                "a CLUSTER SLOTS entry has slots {first}..{last} reversed"
            ));
        }
        let Some(Reply::Array(node)) = fields.get(2) else {
            return Err("a CLUSTER SLOTS entry has no master".into());
        };
        let host = match node.first() {
            Some(Reply::BulkString(host)) => std::str::from_utf8(host)
                .map_err(|_| "a CLUSTER SLOTS host is not UTF-8".to_owned())?,
            _ => return Err("a CLUSTER SLOTS master has no host".into()),
        };
        let port = match node.get(1) {
            Some(Reply::Integer(port)) if (1..=65_535).contains(port) => *port as u16,
            _ => return Err("a CLUSTER SLOTS master has a bad port".into()),
        };
        let host = match host {
            "?" => continue,
            "" => answering_host,
            host => host,
        };
        if !valid_host(host) {
            return Err("a CLUSTER SLOTS master has a malformed host".into());
        }
        ranges.push(SlotRange {
            first,
            last,
            master: Endpoint {
                host: host.to_owned(),
                port,
            },
        });
    }
    Ok(ranges)
}

/// Where a cluster listing is: which master (by its index in the masters sorted by address),
/// that master's `SCAN` cursor, and how many keys of that SCAN batch were already returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub shard: usize,
    pub scan: u64,
    pub skip: usize,
}

impl ListCursor {
    /// Parses `"<scan>:<skip>"` (one server, as before clusters) or, when `cluster`,
    /// `"<shard>:<scan>:<skip>"`; the other form is malformed.
    pub fn parse(text: &str, cluster: bool) -> Option<ListCursor> {
        let mut parts = text.split(':');
        let numbers: Vec<&str> = parts.by_ref().take(3).collect();
        if parts.next().is_some() {
            return None;
        }
        match numbers.as_slice() {
            [scan, skip] if !cluster => Some(ListCursor {
                shard: 0,
                scan: scan.parse().ok()?,
                skip: skip.parse().ok()?,
            }),
            [shard, scan, skip] if cluster => Some(ListCursor {
                shard: shard.parse().ok()?,
                scan: scan.parse().ok()?,
                skip: skip.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// The cursor's text: two parts for one server, so single-server cursors keep their
    /// form; three for a cluster.
    pub fn format(&self, cluster: bool) -> String {
        self.to_text(cluster)
    }

    fn to_text(self, with_shard: bool) -> String {
        if with_shard {
            format!("{}:{}:{}", self.shard, self.scan, self.skip)
        } else {
            format!("{}:{}", self.scan, self.skip)
        }
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn endpoint(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn key_slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"research_task:t1"), key_slot(b"research_task:t1"));
    }

    #[test]
    fn hash_tags_decide_the_slot() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(
            key_slot(b"{research_task}:a"),
            key_slot(b"{research_task}:zzz")
        );
        // Only the first `{…}` counts, and an empty tag means the whole key.
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            redis_protocol::redis_keyslot(b"foo{}{bar}")
        );
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"a{"), key_slot(b"a{"));
    }

    #[test]
    fn parses_moved_and_ask() {
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381", "h"),
            Some(Redirect {
                kind: RedirectKind::Moved,
                slot: 3999,
                target: endpoint("127.0.0.1", 6381)
            })
        );
        assert_eq!(
            parse_redirect("ASK 16383 ::1:7000", "h"),
            Some(Redirect {
                kind: RedirectKind::Ask,
                slot: 16383,
                target: endpoint("::1", 7000)
            })
        );
        assert_eq!(
            parse_redirect("MOVED 1 :7002", "10.0.0.5").unwrap().target,
            endpoint("10.0.0.5", 7002)
        );
    }

    #[test]
    fn other_errors_are_not_redirects() {
        for message in [
            "ERR wrong",
            "MOVED",
            "MOVED 1",
            "MOVED 16384 h:1",
            "MOVED x h:1",
            "MOVED 1 h",
            "MOVED 1 h:0",
            "MOVED 1 h:1 extra",
            "ASK 1 bad host:1",
            "WRONGTYPE Operation",
            "moved 1 h:1",
        ] {
            assert_eq!(parse_redirect(message, "h"), None, "{message}");
        }
    }

    fn bulk(text: &str) -> Reply {
        Reply::BulkString(text.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Reply {
        Reply::Array(vec![bulk(host), Reply::Integer(port), bulk("0123abcd")])
    }

    #[test]
    fn parses_cluster_slots_masters_and_skips_replicas() {
        let reply = Reply::Array(vec![
            Reply::Array(vec![
                Reply::Integer(0),
                Reply::Integer(5460),
                node("127.0.0.1", 30001),
                node("127.0.0.1", 30004),
            ]),
            Reply::Array(vec![
                Reply::Integer(5461),
                Reply::Integer(10922),
                node("", 30002),
            ]),
            Reply::Array(vec![
                Reply::Integer(10923),
                Reply::Integer(16383),
                node("?", 30003),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(&reply, "seed.local").unwrap(),
            vec![
                SlotRange {
                    first: 0,
                    last: 5460,
                    master: endpoint("127.0.0.1", 30001)
                },
                SlotRange {
                    first: 5461,
                    last: 10922,
                    master: endpoint("seed.local", 30002)
                },
            ]
        );
    }

    #[test]
    fn rejects_malformed_cluster_slots() {
        let entry = |fields: Vec<Reply>| Reply::Array(vec![Reply::Array(fields)]);
        let bad = [
            Reply::Integer(1),
            Reply::Array(vec![Reply::Integer(1)]),
            entry(vec![Reply::Integer(0)]),
            entry(vec![Reply::Integer(5), Reply::Integer(1), node("h", 1)]),
            entry(vec![Reply::Integer(0), Reply::Integer(16384), node("h", 1)]),
            entry(vec![Reply::Integer(0), Reply::Integer(1), node("h", 0)]),
            entry(vec![Reply::Integer(0), Reply::Integer(1), node("h", 70000)]),
            entry(vec![Reply::Integer(0), Reply::Integer(1), node("a b", 1)]),
            entry(vec![Reply::Integer(0), Reply::Integer(1), bulk("h")]),
        ];
        for reply in bad {
            assert!(parse_cluster_slots(&reply, "h").is_err(), "{reply:?}");
        }
    }

    #[test]
    fn cursors_keep_the_single_server_form() {
        let cursor = ListCursor {
            shard: 0,
            scan: 17,
            skip: 3,
        };
        assert_eq!(cursor.format(false), "17:3");
        assert_eq!(cursor.format(true), "0:17:3");
        assert_eq!(ListCursor::parse("17:3", false), Some(cursor));
        assert_eq!(ListCursor::parse("0:17:3", true), Some(cursor));
        assert_eq!(ListCursor::parse("0:17:3", false), None);
        assert_eq!(ListCursor::parse("17:3", true), None);
        for bad in ["", "1", "a:1", "1:2:3:4", "-1:2", "1::2", "1:2:", "1:-2:3"] {
            assert_eq!(ListCursor::parse(bad, false), None, "{bad}");
            assert_eq!(ListCursor::parse(bad, true), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn redirect_parser_never_panics_and_round_trips(
            slot in 0u16..16384, port in 1u16.., host in "[a-z0-9.-]{1,20}", noise in "\\PC{0,40}"
        ) {
            let _ = parse_redirect(&noise, "h");
            let text = format!("ASK {slot} {host}:{port}");
            let parsed = parse_redirect(&text, "h").unwrap();
            prop_assert_eq!(parsed.slot, slot);
            prop_assert_eq!(parsed.target, endpoint(&host, port));
        }

        #[test]
        fn cursor_round_trips(shard in 0usize..1000, scan: u64, skip in 0usize..100_000, cluster: bool) {
            let cursor = ListCursor { shard: if cluster { shard } else { 0 }, scan, skip };
            prop_assert_eq!(ListCursor::parse(&cursor.format(cluster), cluster), Some(cursor));
        }

        #[test]
        fn slot_is_in_range_and_tag_equivalent(tag in "[a-z]{1,8}", a in "[^{}]{0,8}", b in "[^{}]{0,8}") {
            let one = format!("{a}{{{tag}}}x");
            let two = format!("{b}{{{tag}}}y");
            prop_assert!(usize::from(key_slot(one.as_bytes())) < SLOT_COUNT);
            prop_assert_eq!(key_slot(one.as_bytes()), key_slot(two.as_bytes()));
        }
    }
}
