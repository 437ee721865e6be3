//! Task documents: request objects parsed without losing their text, new tasks built the way
//! the original Python service wrote them, and the generated id and timestamp.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Members the server sets on creation and a request may not supply.
pub const RESERVED_ON_CREATE: [&str; 3] = ["id", "status", "created_at"];

/// A JSON object's members in order, each value as its exact source text, so that numbers such
/// as `12345678901234567890` or `1e400` and string escapes survive untouched.
#[derive(Debug)]
pub struct Members(pub Vec<(String, Box<RawValue>)>);

impl Members {
    /// Parses one JSON object. Errors (a one-line reason): not UTF-8, not JSON, not an object,
    /// or a member name that occurs twice (the last-wins rule of most parsers would silently
    /// drop data).
    pub fn parse(text: &[u8]) -> Result<Members, String> {
        serde_json::from_slice::<Members>(text).map_err(|err| err.to_string())
    }

    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
                // A set, not a scan of `members`: a body may hold a million members.
                let mut seen = BTreeSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "member {key:?} appears more than once"
                        )));
                    }
                    let value = map.next_value::<Box<RawValue>>()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The value of a member if it is a JSON string.
pub fn as_string(value: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(value.get()).ok()
}

/// `text` as embeddable JSON if it is one JSON object; documents written by other clients are
/// not guaranteed to be.
pub fn as_object(text: &str) -> Option<&RawValue> {
    let raw = serde_json::from_str::<&RawValue>(text).ok()?;
    raw.get().starts_with('{').then_some(raw)
}

/// A JSON string literal.
pub fn string_literal(text: &str) -> String {
    // Serialising a `str` cannot fail; the empty fallback only satisfies the signature.
    serde_json::to_string(text).unwrap_or_default()
}

/// A new task's document: `id`, `status: "pending"`, `created_at`, then the request's members
/// in their order and exact text, with `json.dumps`'s `", "` and `": "` separators, as the
/// original service (and the store's merge patches) write them.
pub fn new_task_document(id: &str, created_at: &str, request: &Members) -> String {
    let mut out = String::with_capacity(
        96 + request
            .0
            .iter()
            .map(|(key, value)| key.len() + value.get().len() + 8)
            .sum::<usize>(),
    );
    out.push_str("{\"id\": ");
    out.push_str(&string_literal(id));
    out.push_str(", \"status\": \"pending\", \"created_at\": ");
    out.push_str(&string_literal(created_at));
    for (key, value) in &request.0 {
        out.push_str(", ");
        out.push_str(&string_literal(key));
        out.push_str(": ");
        out.push_str(value.get());
    }
    out.push('}');
    out
}

/// A version-4 UUID from 16 random bytes, as Python's `str(uuid.uuid4())`:
/// lowercase, hyphenated.
pub fn uuid_v4(random: [u8; 16]) -> String {
    uuid::Builder::from_random_bytes(random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Wall-clock time as Python's `datetime.now(timezone.utc).isoformat()` writes it, except that
/// the microseconds are always present (Python drops `.000000`; `fromisoformat` reads both):
/// `2025-03-01T12:34:56.789012+00:00`. `None` for a time outside years 1970..=9999.
pub fn rfc3339_utc_micros(seconds: u64, nanoseconds: u32) -> Option<String> {
    let seconds = i64::try_from(seconds).ok()?;
    let time = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    if time.year() > 9999 {
        return None;
    }
    // A host may report out-of-range nanoseconds; never let them carry into the seconds.
    let micros = nanoseconds.min(999_999_999) / 1000;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_order_and_exact_text() {
        let members = Members::parse(
            br#"{"query": "a\u00e9", "n": 12345678901234567890, "x": 1e400, "o": {"k": [1, 2]}}"#,
        )
        .unwrap();
        let texts: Vec<(&str, &str)> = members
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .collect();
        assert_eq!(
            texts,
            [
                ("query", r#""a\u00e9""#),
                ("n", "12345678901234567890"),
                ("x", "1e400"),
                ("o", r#"{"k": [1, 2]}"#)
            ]
        );
        assert_eq!(
            as_string(members.get("query").unwrap()).as_deref(),
            Some("aé")
        );
        assert_eq!(as_string(members.get("n").unwrap()), None);
    }

    #[test]
    fn members_refuse_non_objects_duplicates_and_bad_bytes() {
        for bad in [
            &b"[1]"[..],
            b"\"x\"",
            b"null",
            b"{",
            b"{} {}",
            b"",
            br#"{"a": 1, "a": 2}"#,
            b"{\"a\": \"\xff\"}",
        ] {
            assert!(
                Members::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(Members::parse(b" {} ").unwrap().0.is_empty());
        // Raw member values are skipped over without recursion: deep nesting cannot
        // overflow the guest's stack.
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let members = Members::parse(deep.as_bytes()).unwrap();
        assert_eq!(members.get("a").unwrap().get().len(), 200_000);
    }

    #[test]
    fn new_task_document_looks_like_json_dumps() {
        let members = Members::parse(br#"{"query":"q \"x\"","depth":3}"#).unwrap();
        let document = new_task_document("id-1", "2025-01-02T03:04:05.000006+00:00", &members);
        assert_eq!(
            document,
            r#"{"id": "id-1", "status": "pending", "created_at": "2025-01-02T03:04:05.000006+00:00", "query": "q \"x\"", "depth": 3}"#
        );
        assert!(as_object(&document).is_some());
    }

    #[test]
    fn as_object_accepts_only_one_object() {
        assert!(as_object(r#" {"a": 1} "#).is_some());
        for bad in ["[]", "1", "{", "{} x", "nope", ""] {
            assert!(as_object(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn uuid_is_version_4_lowercase_hyphenated() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4([0; 16]);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn timestamps_match_python_isoformat() {
        assert_eq!(
            rfc3339_utc_micros(0, 0).as_deref(),
            Some("1970-01-01T00:00:00.000000+00:00")
        );
        // datetime.fromtimestamp(1709210096.123456789, timezone.utc).isoformat() in Python,
        // which truncates to microseconds.
        assert_eq!(
            rfc3339_utc_micros(1_709_210_096, 123_456_789).as_deref(),
            Some("2024-02-29T12:34:56.123456+00:00")
        );
        assert_eq!(
            rfc3339_utc_micros(253_402_300_799, 1_500_000_000).as_deref(),
            Some("9999-12-31T23:59:59.999999+00:00")
        );
        assert_eq!(rfc3339_utc_micros(253_402_300_800, 0), None);
        assert_eq!(rfc3339_utc_micros(u64::MAX, 0), None);
    }

    #[test]
    fn many_members_parse_in_linear_time() {
        let body = format!(
            "{{{}}}",
            (0..200_000)
                .map(|i| format!("\"k{i}\": {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let started = std::time::Instant::now();
        assert_eq!(Members::parse(body.as_bytes()).unwrap().0.len(), 200_000);
        // Quadratic duplicate detection takes minutes here; linear takes well under a second.
        println!("200000 members parsed in {:?}", started.elapsed());
    }
}
