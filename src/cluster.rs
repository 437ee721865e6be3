//! Redis Cluster, the pure part: key slots, the slot map from `CLUSTER SLOTS`, `MOVED` /
//! `ASK` redirects, the slots a node serves, and the listing cursor. No I/O here; the
//! cluster-aware client in [`crate::cluster_client`] and the store use these.

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

/// A set of hash slots, as a bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSet(Vec<u64>);

impl Default for SlotSet {
    fn default() -> SlotSet {
        SlotSet(vec![0; SLOT_COUNT / 64])
    }
}

impl SlotSet {
    pub fn contains(&self, slot: u16) -> bool {
        let slot = usize::from(slot);
        slot < SLOT_COUNT && self.0[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub fn insert(&mut self, slot: u16) {
        let slot = usize::from(slot);
        if slot < SLOT_COUNT {
            self.0[slot / 64] |= 1 << (slot % 64);
        }
    }

    pub fn remove(&mut self, slot: u16) {
        let slot = usize::from(slot);
        if slot < SLOT_COUNT {
            self.0[slot / 64] &= !(1 << (slot % 64));
        }
    }

    pub fn insert_range(&mut self, first: u16, last: u16) {
        for slot in first..=last {
            self.insert(slot);
        }
    }

    /// Adds the slots that are in both `a` and `b`.
    pub fn add_intersection(&mut self, a: &SlotSet, b: &SlotSet) {
        for ((word, a), b) in self.0.iter_mut().zip(&a.0).zip(&b.0) {
            *word |= a & b;
        }
    }

    /// The slots in order, as inclusive ranges.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for slot in 0..SLOT_COUNT as u16 {
            if !self.contains(slot) {
                continue;
            }
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == slot => *last = slot,
                _ => ranges.push((slot, slot)),
            }
        }
        ranges
    }

    /// The text form: `r` and the ranges (`0-5460_6000`), or, when that would be longer (a
    /// badly fragmented set), `b` and the bitmap in hex — so the text is never longer than
    /// [`SlotSet::MAX_TEXT_BYTES`].
    fn to_text(&self) -> String {
        let mut ranges = String::from("r");
        for (index, (first, last)) in self.ranges().into_iter().enumerate() {
            if index > 0 {
                ranges.push('_');
            }
            ranges.push_str(&first.to_string());
            if last > first {
                ranges.push('-');
                ranges.push_str(&last.to_string());
            }
            if ranges.len() > Self::MAX_TEXT_BYTES {
                break;
            }
        }
        if ranges.len() <= Self::MAX_TEXT_BYTES {
            return ranges;
        }
        let mut bitmap = String::with_capacity(Self::MAX_TEXT_BYTES);
        bitmap.push('b');
        for word in &self.0 {
            for byte in word.to_le_bytes() {
                push_hex_byte(&mut bitmap, byte);
            }
        }
        bitmap
    }

    /// One past the longest text form: `b` and 2048 bytes in hex.
    pub const MAX_TEXT_BYTES: usize = 1 + SLOT_COUNT / 4;

    fn parse(text: &str) -> Option<SlotSet> {
        let mut set = SlotSet::default();
        if let Some(hex) = text.strip_prefix('b') {
            let bytes = decode_hex(hex)?;
            if bytes.len() != SLOT_COUNT / 8 {
                return None;
            }
            for (word, chunk) in set.0.iter_mut().zip(bytes.chunks_exact(8)) {
                *word = u64::from_le_bytes(chunk.try_into().ok()?);
            }
            return Some(set);
        }
        let ranges = text.strip_prefix('r')?;
        if ranges.is_empty() {
            return Some(set);
        }
        // Canonical only: ascending, disjoint, not touching, `a-b` only for b > a.
        let mut next_allowed = 0u32;
        for range in ranges.split('_') {
            let (first, last) = match range.split_once('-') {
                Some((first, last)) => (parse_decimal(first)?, parse_decimal(last)?),
                None => (parse_decimal(range)?, parse_decimal(range)?),
            };
            let valid = first >= u64::from(next_allowed)
                && (last > first || !range.contains('-'))
                && last < SLOT_COUNT as u64;
            if !valid {
                return None;
            }
            set.insert_range(first as u16, last as u16);
            next_allowed = last as u32 + 2;
        }
        Some(set)
    }
}

/// The slots the node that answered `CLUSTER NODES` (`text`, its reply) serves and is not
/// migrating away: its `myself` line's slots, less those marked `[slot->-node]`.
/// Importing slots (`[slot-<-node]`) are not its own yet, so they are not included.
///
/// # Errors
/// The text has no `myself` line or a malformed slot entry; the message says which.
pub fn stable_own_slots(text: &str) -> Result<SlotSet, String> {
    let line = text
        .lines()
        .find(|line| {
            line.split(' ')
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
        })
        .ok_or("CLUSTER NODES has no line for the node itself")?;
    let mut owned = SlotSet::default();
    let mut migrating = Vec::new();
    for entry in line.split(' ').skip(8).filter(|entry| !entry.is_empty()) {
        let bad = || format!("CLUSTER NODES has a malformed slot entry {entry:.40?}");
        if let Some(inner) = entry.strip_prefix('[') {
            if let Some((slot, _)) = inner.split_once("->-") {
                let slot = parse_decimal(slot).filter(|slot| *slot < SLOT_COUNT as u64);
                migrating.push(slot.ok_or_else(bad)? as u16);
            }
            continue;
        }
        let (first, last) = match entry.split_once('-') {
            Some((first, last)) => (parse_decimal(first), parse_decimal(last)),
            None => (parse_decimal(entry), parse_decimal(entry)),
        };
        match (first, last) {
            (Some(first), Some(last)) if first <= last && last < SLOT_COUNT as u64 => {
                owned.insert_range(first as u16, last as u16)
            }
            _ => return Err(bad()),
        }
    }
    for slot in migrating {
        owned.remove(slot);
    }
    Ok(owned)
}

/// The scan of one cluster master that a listing has under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeScan {
    /// The master, as the slot map names it.
    pub node: Endpoint,
    /// Its `SCAN` cursor.
    pub position: u64,
    /// The slots it served, not migrating, when its scan began.
    pub owned_before: SlotSet,
}

/// Where a listing is: the `SCAN` under way, the keys a `SCAN` call returned that no page has
/// listed yet, and, on a cluster, which slots are done.
///
/// The keys of a `SCAN` call that did not fit in a page travel in the cursor, so no `SCAN`
/// call is ever repeated: the calls of a listing form one uninterrupted `SCAN` iteration per
/// server (or master), and `SCAN`'s own guarantee — every key present for the whole
/// iteration is returned — carries over to the listing. On a cluster a slot counts as done
/// only when one master served it (not migrating) both before and after a whole scan of
/// that master; masters are scanned until every served slot is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// One server: the next `SCAN` cursor, or `None` once its scan has ended.
    pub position: Option<u64>,
    /// A cluster: the master being scanned, if any.
    pub node_scan: Option<NodeScan>,
    /// A cluster: slots whose keys have all been listed.
    pub covered: SlotSet,
    /// A cluster: master scans begun, to bound a listing while slots keep moving.
    pub node_scans: u32,
    /// Ids from `SCAN` not yet listed, in order: the next page reads them first.
    pub pending: Vec<String>,
}

/// On a cluster, a listing scans at most this many masters per master in the slot map
/// before giving up on slots that keep migrating.
pub const MAX_SCAN_ROUNDS: u32 = 4;

/// Longest cursor text, in bytes (17,410, as the WIT says): two slot sets, the pending ids,
/// and under 1 KiB for the rest (a master's address is at most 255 + 6 bytes, in hex).
pub const MAX_CURSOR_BYTES: usize = 2 * SlotSet::MAX_TEXT_BYTES + MAX_PENDING_CURSOR_BYTES + 1024;
/// The most the pending ids may take in a cursor: at least 4 ids of the longest kind (1024
/// bytes), or ~110 UUIDs. More would make the page resume its last `SCAN` call instead.
pub const MAX_PENDING_CURSOR_BYTES: usize = 8192;

impl ListCursor {
    /// The start of a listing.
    pub fn start() -> ListCursor {
        ListCursor {
            position: Some(0),
            node_scan: None,
            covered: SlotSet::default(),
            node_scans: 0,
            pending: Vec::new(),
        }
    }

    /// Bytes the pending ids take in the cursor text.
    pub fn pending_text_bytes(pending: &[String]) -> usize {
        pending.iter().map(|id| 2 + 2 * id.len()).sum()
    }

    /// The cursor as text: URL-safe ASCII (`[0-9a-z._-]`), fields separated by `.`, each a
    /// tag letter and a value: one server `s<scan cursor>` (absent once the scan has ended);
    /// a cluster `n<master, hex>` `o<slots>` `s<scan cursor>` (a master scan under way),
    /// `c<slots covered>`, `k<master scans begun>`; then `p<id, hex>` per pending id.
    pub fn format(&self, cluster: bool) -> String {
        let mut fields: Vec<String> = Vec::new();
        if cluster {
            if let Some(scan) = &self.node_scan {
                let mut node = String::from("n");
                let address = format!("{}:{}", scan.node.host, scan.node.port);
                for byte in address.bytes() {
                    push_hex_byte(&mut node, byte);
                }
                fields.push(node);
                fields.push(format!("o{}", scan.owned_before.to_text()));
                fields.push(format!("s{}", scan.position));
            }
            fields.push(format!("c{}", self.covered.to_text()));
            fields.push(format!("k{}", self.node_scans));
        } else if let Some(position) = self.position {
            fields.push(format!("s{position}"));
        }
        for id in &self.pending {
            let mut field = String::with_capacity(1 + 2 * id.len());
            field.push('p');
            for byte in id.bytes() {
                push_hex_byte(&mut field, byte);
            }
            fields.push(field);
        }
        fields.join(".")
    }

    /// Parses [`ListCursor::format`]'s text, strictly: fields in that order, each once
    /// (`p` repeated), canonical numbers, lowercase hex, nothing else. `None` if malformed.
    /// Pending ids are returned as text; the caller checks them as ids.
    pub fn parse(text: &str, cluster: bool) -> Option<ListCursor> {
        // A cheap guard before any work; a text it lets through is refused by the checks
        // below anyway (no valid cursor is empty or longer), so cargo-mutants' `&&`/`>=`
        // here survive as equivalent mutants.
        if text.is_empty() || text.len() > MAX_CURSOR_BYTES {
            return None;
        }
        let mut cursor = ListCursor {
            position: None,
            ..ListCursor::start()
        };
        let mut fields = text.split('.').peekable();
        let mut take = |tag: char| {
            fields
                .next_if(|field| field.starts_with(tag))
                .map(|f| &f[1..])
        };
        if cluster {
            if let Some(node) = take('n') {
                let node = String::from_utf8(decode_hex(node)?).ok()?;
                let (host, port) = node.rsplit_once(':')?;
                let port = parse_decimal(port).filter(|p| (1..=u64::from(u16::MAX)).contains(p))?;
                if !valid_host(host) {
                    return None;
                }
                let owned_before = SlotSet::parse(take('o')?)?;
                let position = parse_decimal(take('s')?)?;
                cursor.node_scan = Some(NodeScan {
                    node: Endpoint {
                        host: host.to_owned(),
                        port: port as u16,
                    },
                    position,
                    owned_before,
                });
            }
            cursor.covered = SlotSet::parse(take('c')?)?;
            cursor.node_scans = u32::try_from(parse_decimal(take('k')?)?).ok()?;
        } else if let Some(position) = take('s') {
            cursor.position = Some(parse_decimal(position)?);
        }
        while let Some(id) = take('p') {
            cursor
                .pending
                .push(String::from_utf8(decode_hex(id)?).ok()?);
        }
        if fields.next().is_some()
            || Self::pending_text_bytes(&cursor.pending) > MAX_PENDING_CURSOR_BYTES
        {
            return None;
        }
        Some(cursor)
    }
}

/// A canonical decimal: digits only, no sign, no leading zero (but `0`).
fn parse_decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// Lowercase hex of `bytes`, appended to `out` (cursor texts: here and the status index's).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        push_hex_byte(out, byte);
    }
}

fn push_hex_byte(out: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(DIGITS[usize::from(byte >> 4)]));
    out.push(char::from(DIGITS[usize::from(byte & 15)]));
}

/// Lowercase hex of at least one byte.
pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks_exact(2)
        // `^` for `|` is an equivalent mutant: the two nibbles never share a bit.
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"research_task:t1"), 14403);
        assert_eq!(key_slot(b"research_task:"), 13513);
    }

    #[test]
    fn hash_tags_decide_the_slot() {
        // Every literal below is `redis-cli CLUSTER KEYSLOT` of Redis 7.0.15, so a tag rule
        // of our own that agreed with itself but not with Redis would fail here.
        assert_eq!(key_slot(b"{user1000}.following"), 3443);
        assert_eq!(key_slot(b"user1000"), 3443);
        assert_eq!(key_slot(b"{research_task}:a"), 7481);
        assert_eq!(key_slot(b"{research_task}:zzz"), 7481);
        // Only the first `{…}` counts, and an empty tag means the whole key.
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(key_slot(b"{bar"), 4015);
        // An unclosed `{` is no tag: the whole key is hashed.
        assert_eq!(key_slot(b"a{"), 14311);
    }

    #[test]
    fn parses_moved_and_ask() {
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381", "h"),
            Some(Redirect {
                kind: RedirectKind::Moved,
                slot: 3999,
                target: Endpoint::new("127.0.0.1", 6381)
            })
        );
        assert_eq!(
            parse_redirect("ASK 16383 ::1:7000", "h"),
            Some(Redirect {
                kind: RedirectKind::Ask,
                slot: 16383,
                target: Endpoint::new("::1", 7000)
            })
        );
        assert_eq!(
            parse_redirect("MOVED 1 :7002", "10.0.0.5").unwrap().target,
            Endpoint::new("10.0.0.5", 7002)
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
                    master: Endpoint::new("127.0.0.1", 30001)
                },
                SlotRange {
                    first: 5461,
                    last: 10922,
                    master: Endpoint::new("seed.local", 30002)
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

    fn cluster_cursor() -> ListCursor {
        let mut owned_before = SlotSet::default();
        owned_before.insert_range(0, 5460);
        owned_before.insert(6000);
        let mut covered = SlotSet::default();
        covered.insert_range(10923, 16383);
        ListCursor {
            position: None,
            node_scan: Some(NodeScan {
                node: Endpoint::new("::1", 7000),
                position: 17,
                owned_before,
            }),
            covered,
            node_scans: 2,
            pending: vec!["t1".into(), "café 🚀".into()],
        }
    }

    #[test]
    fn cursors_are_url_safe_and_round_trip() {
        let single = ListCursor {
            position: Some(17),
            pending: vec!["a b/c?d".into()],
            ..ListCursor::start()
        };
        assert_eq!(single.format(false), "s17.p6120622f633f64");
        assert_eq!(
            ListCursor::parse("s17.p6120622f633f64", false),
            Some(single)
        );
        let done = ListCursor {
            position: None,
            pending: vec!["x".into()],
            ..ListCursor::start()
        };
        assert_eq!(ListCursor::parse(&done.format(false), false), Some(done));
        let cluster = cluster_cursor();
        let text = cluster.format(true);
        assert_eq!(
            text,
            "n3a3a313a37303030.or0-5460_6000.s17.cr10923-16383.k2.p7431.p636166c3a920f09f9a80"
        );
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        assert_eq!(ListCursor::parse(&text, true), Some(cluster));
        // Each form is malformed for the other kind of store.
        assert_eq!(ListCursor::parse(&text, false), None);
        assert_eq!(ListCursor::parse("s17", true), None);
    }

    #[test]
    fn malformed_cursors_are_rejected() {
        for bad in [
            "",
            "12",
            "x",
            "abc",
            ":",
            "1:2",
            "0:17:3",
            "s",
            "s-1",
            "s+1",
            "s01",
            "s1.s2",
            "s18446744073709551616",
            "p",
            "p6",
            "p6G",
            "p61.s1",
            "s1.p61.x",
            "s1.",
            ".s1",
            "s1..p61",
        ] {
            assert_eq!(ListCursor::parse(bad, false), None, "{bad}");
        }
        for bad in [
            "cr.k0.x",
            "k0",
            "cr",
            "cr0-0.k0",
            "cr5-3.k0",
            "cr3_1.k0",
            "cr1_2.k0",
            "cr16384.k0",
            "cb00.k0",
            "cr.k-1",
            "cr.k4294967296",
            "n3a3a313a30.cr.k0",
            "n6120623a31.or.s0.cr.k0",
            "n683a30.or.s0.cr.k0",
            "or.s0.cr.k0",
        ] {
            assert_eq!(ListCursor::parse(bad, true), None, "{bad}");
        }
        assert!(ListCursor::parse("cr.k0", true).is_some());
        let long = format!("s1{}", ".p61".repeat(MAX_PENDING_CURSOR_BYTES / 4 + 1));
        assert_eq!(ListCursor::parse(&long, false), None);
    }

    #[test]
    fn the_cursor_bound_is_the_documented_one() {
        assert_eq!(MAX_CURSOR_BYTES, 17_410);
    }

    #[test]
    fn fragmented_slot_sets_fall_back_to_a_bitmap_of_bounded_length() {
        let mut every_other = SlotSet::default();
        for slot in (0..SLOT_COUNT as u16).step_by(2) {
            every_other.insert(slot);
        }
        let text = every_other.to_text();
        assert!(text.starts_with('b'));
        assert_eq!(text.len(), SlotSet::MAX_TEXT_BYTES);
        assert_eq!(SlotSet::parse(&text), Some(every_other));
        let mut all = SlotSet::default();
        all.insert_range(0, 16383);
        assert_eq!(all.to_text(), "r0-16383");
    }

    #[test]
    fn slot_sets_touch_exactly_the_slot_named_and_ignore_slots_out_of_range() {
        let mut set = SlotSet::default();
        set.insert_range(0, 200);
        set.remove(64);
        set.remove(130);
        assert_eq!(set.ranges(), vec![(0, 63), (65, 129), (131, 200)]);
        assert!(!set.contains(64) && set.contains(63) && set.contains(65));
        // 16384 is one past the last slot: ignored, never a panic.
        set.insert(SLOT_COUNT as u16);
        set.remove(SLOT_COUNT as u16);
        assert!(!set.contains(SLOT_COUNT as u16));
        let mut last = SlotSet::default();
        last.insert(SLOT_COUNT as u16 - 1);
        assert_eq!(last.ranges(), vec![(16383, 16383)]);
    }

    #[test]
    fn add_intersection_adds_the_common_slots_and_keeps_the_rest() {
        let (mut a, mut b, mut into) = (SlotSet::default(), SlotSet::default(), SlotSet::default());
        a.insert_range(0, 99);
        b.insert_range(50, 149);
        into.insert(1000);
        into.add_intersection(&a, &b);
        assert_eq!(into.ranges(), vec![(50, 99), (1000, 1000)]);
    }

    #[test]
    fn range_text_that_reaches_the_limit_exactly_is_not_cut_short() {
        // 817 four-digit singletons and two five-digit ones make "r1000_1002_…_10002": exactly
        // MAX_TEXT_BYTES (1 + 817 × 5 + 2 × 6 = 4097). Two more ranges follow, so the text
        // form must switch to the bitmap rather than stop at the limit.
        let mut set = SlotSet::default();
        for i in 0..817 {
            set.insert(1000 + 2 * i);
        }
        for slot in [10000, 10002, 10004, 10006] {
            set.insert(slot);
        }
        let text = set.to_text();
        assert!(text.starts_with('b'), "{}", &text[..20]);
        assert!(text.len() <= SlotSet::MAX_TEXT_BYTES);
        assert_eq!(SlotSet::parse(&text), Some(set));
    }

    #[test]
    fn pending_ids_may_fill_the_cursor_budget_exactly() {
        assert_eq!(
            ListCursor::pending_text_bytes(&["ab".into(), "c".into()]),
            6 + 4
        );
        // One id of 4095 bytes takes `.p` + 8190 hex digits = 8192 bytes: the whole budget.
        let cursor = |len: usize| ListCursor {
            pending: vec!["x".repeat(len)],
            ..ListCursor::start()
        };
        let fits = cursor(4095).format(false);
        assert_eq!(ListCursor::parse(&fits, false), Some(cursor(4095)));
        let over = cursor(4096).format(false);
        assert_eq!(ListCursor::parse(&over, false), None);
    }

    #[test]
    fn a_single_slot_range_is_a_valid_cluster_slots_entry() {
        let reply = Reply::Array(vec![Reply::Array(vec![
            Reply::Integer(7),
            Reply::Integer(7),
            node("127.0.0.1", 7000),
        ])]);
        let ranges = parse_cluster_slots(&reply, "seed").unwrap();
        assert_eq!((ranges[0].first, ranges[0].last), (7, 7));
    }

    #[test]
    fn stable_own_slots_leave_out_migrating_and_importing_slots() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 master - 0 1 4 connected 5461-10922
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 6000 [5000->-07c3] [7000-<-07c3]
";
        // The expected set is written as ranges, not built with the code under test.
        let stable = stable_own_slots(nodes).unwrap();
        assert_eq!(stable.ranges(), vec![(0, 4999), (5001, 5460), (6000, 6000)]);
        let out_of_range = "e7d1 h:1@2 myself,master - 0 0 1 connected 0-5 [16384->-07c3]";
        assert!(stable_own_slots(out_of_range).is_err());
        assert!(stable_own_slots("e7d1 h:1@2 master - 0 0 1 connected 0-5460").is_err());
        assert!(stable_own_slots("e7d1 h:1@2 myself,master - 0 0 1 connected 9-x").is_err());
        assert!(stable_own_slots("e7d1 h:1@2 myself,master - 0 0 1 connected 0-16384").is_err());
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
            prop_assert_eq!(parsed.target, Endpoint::new(&host, port));
        }

        #[test]
        fn cursor_round_trips(
            position: u64,
            ranges in proptest::collection::vec((0u16..16384, 0u16..64), 0..40),
            pending in proptest::collection::vec("\\PC{1,12}", 0..5),
            node_scans: u32,
            cluster: bool,
        ) {
            let mut covered = SlotSet::default();
            for (first, width) in ranges {
                covered.insert_range(first, first.saturating_add(width).min(16383));
            }
            let cursor = if cluster {
                ListCursor {
                    position: None,
                    node_scan: Some(NodeScan { node: Endpoint::new("n1.local", 7000), position, owned_before: covered.clone() }),
                    covered,
                    node_scans,
                    pending,
                }
            } else {
                ListCursor { position: Some(position), pending, ..ListCursor::start() }
            };
            let text = cursor.format(cluster);
            prop_assert!(text.len() <= MAX_CURSOR_BYTES);
            prop_assert_eq!(ListCursor::parse(&text, cluster), Some(cursor));
        }

        #[test]
        fn cursor_parser_never_panics(text in "[a-z0-9._-]{0,40}|\\PC{0,40}", cluster: bool) {
            let _ = ListCursor::parse(&text, cluster);
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
