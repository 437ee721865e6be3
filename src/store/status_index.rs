//! The status index: one sorted set per status, so that listing by status reads the tasks
//! that (may) have it instead of every task.
//!
//! Key `<key-prefix without one trailing ':'>_status:<status>` (`research_task_status:pending`
//! by default); members are task ids, scores the task's expiry in milliseconds since the
//! epoch by the clock of the Redis server holding the index key (scripts read `TIME`, so no
//! client clock is involved), `inf` for a task without expiry.
//!
//! Entries are hints, never the truth: they form a superset of the tasks with that status.
//! A writer adds the entry for the new status before, or atomically with, the document
//! write; a reader re-reads every document and re-checks its status, and removes an entry
//! only under a condition that a concurrent writer's re-add always breaks:
//!
//! - every score carries a random fraction below 1/2 (a *final* entry), or at or above 1/2
//!   (a *provisional* entry: a cluster writer between its entry and its document write, which
//!   live in different slots); a re-add therefore changes the score, whatever the expiry;
//! - a reader removes an entry whose document is missing or has another status only with
//!   [`REMOVE_IF_SCORE`] (`ZREM` only if the score is still the one it read before reading
//!   the document), and never a provisional one — those go only when their expiry passes.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use taskstore_model::validate_id;

use crate::cluster::{decode_hex, push_hex};

/// How `list` with a status finds its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListingMode {
    /// Enumerate every key (`SCAN`) and read every document: never misses a task, whoever
    /// wrote it; costs O(all tasks) per listing. This store's writes keep no index.
    #[default]
    Scan,
    /// Read the status's index: costs O(tasks with that status). This store's writes keep the
    /// index; tasks written by anything else are found only after `reindex`.
    Index,
}

/// The index key of `status`, or `None` when the status is not indexed: statuses follow the
/// id rule (1 to 1024 bytes of UTF-8 without control characters); listing by any other
/// status falls back to scanning.
pub fn index_key(key_prefix: &str, status: &str) -> Option<Vec<u8>> {
    validate_id(status).ok()?;
    let base = key_prefix.strip_suffix(':').unwrap_or(key_prefix);
    Some(format!("{base}_status:{status}").into_bytes())
}

/// Expired entries stay this long past their score before a listing removes them: room for
/// the clocks of a cluster's nodes (the index key's and the document's) to disagree.
pub const EXPIRED_MARGIN_MS: u64 = 60_000;
/// An index key expires this long after its latest entry's expiry, so an abandoned index
/// disappears by itself.
pub const KEY_MARGIN_MS: u64 = 3_600_000;

/// Adds (or re-scores) one entry and keeps the index key's own expiry past it.
/// KEYS[1] index; ARGV: ttl in ms or `inf`, id, fraction (0 ≤ f < 1: ≥ 0.5 provisional),
/// `set` or `gt` (never lower the expiry, for writes that may not happen: the new score is
/// then the later of both expiries with the new fraction, so it still always changes), the
/// key's margin in ms; then, given KEYS[2] (a document key on the same server), the write
/// ARGV[6..] on it, whose reply the script returns: entry and document in one atomic step.
pub const ADD: &str = r"
local member, fraction = ARGV[2], tonumber(ARGV[3])
local function finish()
  if #KEYS > 1 then
    return redis.call(unpack(ARGV, 6))
  end
  return 1
end
local current = redis.call('ZSCORE', KEYS[1], member)
if ARGV[1] == 'inf' or (ARGV[4] == 'gt' and current == 'inf') then
  redis.call('ZADD', KEYS[1], 'inf', member)
  redis.call('PERSIST', KEYS[1])
  return finish()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
if ARGV[4] == 'gt' and current then
  expiry = math.max(expiry, math.floor(tonumber(current)))
end
local fresh = redis.call('EXISTS', KEYS[1]) == 0
redis.call('ZADD', KEYS[1], string.format('%.4f', expiry + fraction), member)
local keep = string.format('%.0f', expiry + tonumber(ARGV[5]))
if fresh then
  redis.call('PEXPIREAT', KEYS[1], keep)
else
  redis.call('PEXPIREAT', KEYS[1], keep, 'GT')
end
return finish()
";

/// Removes entries whose expiry passed more than ARGV[1] ms ago. KEYS[1] index.
pub const PRUNE_EXPIRED: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[1])))
";

/// Removes entry ARGV[1] only if its score is still ARGV[2] (as `ZSCAN` showed it): a
/// writer that added it again since changed the score. KEYS[1] index.
pub const REMOVE_IF_SCORE: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and score == ARGV[2] then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
";

/// The TTL an entry is scored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryTtl {
    Millis(u64),
    Persistent,
}

impl EntryTtl {
    pub fn seconds(seconds: u64) -> EntryTtl {
        EntryTtl::Millis(seconds.saturating_mul(1000))
    }

    /// From Redis's `PTTL` answer (-1: no expiry; -2, gone: the shortest TTL).
    pub fn from_pttl(pttl: i64) -> EntryTtl {
        match pttl {
            -1 => EntryTtl::Persistent,
            ms => EntryTtl::Millis(ms.max(1) as u64),
        }
    }

    fn text(self) -> String {
        match self {
            EntryTtl::Millis(ms) => ms.to_string(),
            EntryTtl::Persistent => "inf".into(),
        }
    }
}

/// Which kind of entry a write adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Added atomically with the document, or after it was written.
    Final,
    /// Added before a document write in another slot (a cluster).
    Provisional,
}

/// Random score fractions, so that two writes of one task never give one score.
pub struct Fractions(u64);

impl Fractions {
    pub fn new() -> Fractions {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        Fractions(hasher.finish() | 1)
    }

    /// A fraction in [0.001, 0.499] for a final entry, [0.501, 0.999] for a provisional one:
    /// three decimals, far above a score's precision (about 0.0002 at today's epoch ms).
    fn next(&mut self, entry: Entry) -> String {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let thousandths = 1 + self.0 % 499;
        let thousandths = match entry {
            Entry::Final => thousandths,
            Entry::Provisional => 500 + thousandths,
        };
        format!("0.{thousandths:03}")
    }
}

/// The arguments of one [`ADD`] call.
pub fn add_command(
    fractions: &mut Fractions,
    index: &[u8],
    id: &str,
    ttl: EntryTtl,
    entry: Entry,
    never_lower: bool,
) -> Vec<Vec<u8>> {
    vec![
        b"EVAL".to_vec(),
        ADD.as_bytes().to_vec(),
        b"1".to_vec(),
        index.to_vec(),
        ttl.text().into_bytes(),
        id.as_bytes().to_vec(),
        fractions.next(entry).into_bytes(),
        if never_lower {
            b"gt".to_vec()
        } else {
            b"set".to_vec()
        },
        KEY_MARGIN_MS.to_string().into_bytes(),
    ]
}

/// The arguments of one [`ADD`] call that also runs `write` on `key` (one server only: both
/// keys must be on it), atomically after the entry.
pub fn add_and_write_command(
    fractions: &mut Fractions,
    index: &[u8],
    id: &str,
    ttl: EntryTtl,
    never_lower: bool,
    key: &[u8],
    write: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut command = add_command(fractions, index, id, ttl, Entry::Final, never_lower);
    command[2] = b"2".to_vec();
    command.insert(4, key.to_vec());
    command.extend(write.iter().map(|arg| arg.to_vec()));
    command
}

/// The arguments of a [`PRUNE_EXPIRED`] call on `index`.
pub fn prune_expired_command(index: &[u8]) -> Vec<Vec<u8>> {
    vec![
        b"EVAL".to_vec(),
        PRUNE_EXPIRED.as_bytes().to_vec(),
        b"1".to_vec(),
        index.to_vec(),
        EXPIRED_MARGIN_MS.to_string().into_bytes(),
    ]
}

/// The arguments of a [`REMOVE_IF_SCORE`] call.
pub fn remove_if_score_command(index: &[u8], id: &str, score: &str) -> Vec<Vec<u8>> {
    vec![
        b"EVAL".to_vec(),
        REMOVE_IF_SCORE.as_bytes().to_vec(),
        b"1".to_vec(),
        index.to_vec(),
        id.as_bytes().to_vec(),
        score.as_bytes().to_vec(),
    ]
}

/// Whether a score, as Redis prints it, is a provisional entry's (fraction ≥ 1/2).
pub fn is_provisional(score: &str) -> bool {
    match score.parse::<f64>() {
        Ok(score) if score.is_finite() => score - score.floor() >= 0.5,
        _ => false,
    }
}

/// Borrowed views of owned commands, for [`crate::client::Client::pipeline`].
pub fn as_args(command: &[Vec<u8>]) -> Vec<&[u8]> {
    command.iter().map(Vec::as_slice).collect()
}

/// Where an index listing is: the `ZSCAN` cursor (`None` once it has ended) and the entries
/// a `ZSCAN` call returned that no page has read yet, with the scores it showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexCursor {
    pub position: Option<u64>,
    pub pending: Vec<(String, String)>,
}

/// Longest text the pending entries may take in an index cursor: room for the 128 entries
/// one `ZSCAN` call of a small (listpack) sorted set returns at once, with Redis's default
/// `zset-max-listpack-value` of 64 bytes, within the WIT's 17,410-byte cursor.
pub const MAX_INDEX_PENDING_BYTES: usize = 17_000;

impl IndexCursor {
    pub fn start() -> IndexCursor {
        IndexCursor {
            position: Some(0),
            pending: Vec::new(),
        }
    }

    pub fn pending_text_bytes(pending: &[(String, String)]) -> usize {
        pending
            .iter()
            .map(|(id, score)| 2 + 2 * id.len() + 2 + 2 * score.len())
            .sum()
    }

    /// `i<zscan cursor>` (just `i` once the `ZSCAN` has ended), then `p<id, hex>.w<score,
    /// hex>` per pending entry: the `i` tells it from a scan listing's cursor, which never
    /// starts with `i`.
    pub fn format(&self) -> String {
        let mut text = String::from("i");
        if let Some(position) = self.position {
            text.push_str(&position.to_string());
        }
        for (id, score) in &self.pending {
            text.push_str(".p");
            push_hex(&mut text, id.as_bytes());
            text.push_str(".w");
            push_hex(&mut text, score.as_bytes());
        }
        text
    }

    /// Parses [`IndexCursor::format`]'s text strictly; `None` if malformed.
    pub fn parse(text: &str) -> Option<IndexCursor> {
        if text.len() > MAX_INDEX_PENDING_BYTES + 64 {
            return None;
        }
        let mut fields = text.split('.');
        let head = fields.next()?.strip_prefix('i')?;
        let position = match head {
            "" => None,
            digits => {
                let canonical = digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0'));
                Some(digits.parse().ok().filter(|_| canonical)?)
            }
        };
        let mut pending = Vec::new();
        while let Some(id) = fields.next() {
            let id = String::from_utf8(decode_hex(id.strip_prefix('p')?)?).ok()?;
            let score = fields.next()?.strip_prefix('w')?;
            let score = String::from_utf8(decode_hex(score)?).ok()?;
            validate_id(&id).ok()?;
            score.parse::<f64>().ok()?;
            pending.push((id, score));
        }
        if Self::pending_text_bytes(&pending) > MAX_INDEX_PENDING_BYTES {
            return None;
        }
        Some(IndexCursor { position, pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_follow_the_prefix_and_refuse_odd_statuses() {
        assert_eq!(
            index_key("research_task:", "pending").unwrap(),
            b"research_task_status:pending"
        );
        assert_eq!(index_key("t", "done").unwrap(), b"t_status:done");
        assert_eq!(index_key("", "a b").unwrap(), b"_status:a b");
        assert_eq!(index_key("p:", ""), None);
        assert_eq!(index_key("p:", "a\nb"), None);
        assert_eq!(index_key("p:", &"x".repeat(1025)), None);
    }

    #[test]
    fn fractions_tell_final_from_provisional() {
        let mut fractions = Fractions::new();
        for _ in 0..1000 {
            let final_one: f64 = fractions.next(Entry::Final).parse().unwrap();
            let provisional: f64 = fractions.next(Entry::Provisional).parse().unwrap();
            assert!((0.001..0.5).contains(&final_one), "{final_one}");
            assert!((0.5..1.0).contains(&provisional), "{provisional}");
        }
        assert!(is_provisional("1764773000000.723"));
        assert!(!is_provisional("1764773000000.123"));
        assert!(!is_provisional("inf"));
    }

    #[test]
    fn index_cursors_round_trip_and_are_strict() {
        let cursor = IndexCursor {
            position: Some(17),
            pending: vec![("a.b".into(), "1764773000000.123".into())],
        };
        let text = cursor.format();
        assert!(text.starts_with("i17.p"), "{text}");
        assert_eq!(IndexCursor::parse(&text), Some(cursor));
        let ended = IndexCursor {
            position: None,
            pending: vec![("x".into(), "inf".into())],
        };
        assert_eq!(IndexCursor::parse(&ended.format()), Some(ended));
        for bad in [
            "",
            "s17",
            "i017",
            "i1.p61",
            "i1.w61.p61",
            "i1.pzz.w31",
            "i-1",
            "p61",
        ] {
            assert_eq!(IndexCursor::parse(bad), None, "{bad}");
        }
    }
}
