//! JSON documents: validation, the top-level `status`, and RFC 7386 merge patches that
//! rewrite only what the patch touches.
//!
//! A document is never round-tripped through a JSON value tree: members the patch does not
//! touch are copied as their original text, so key order, whitespace inside them, string
//! escapes and number literals (`12345678901234567890`, `0.1`, `1e400`) survive exactly.
//! Objects the patch does touch are re-emitted with Python `json.dumps`'s default
//! separators (`", "`, `": "`), the style the original service writes.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A document or patch that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError(pub String);

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document must be one JSON object no longer than `max_bytes`.
pub fn validate_document(document: &str, max_bytes: usize) -> Result<(), DocumentError> {
    if document.len() > max_bytes {
        return Err(DocumentError(format!(
            "document is {} bytes; the limit is {max_bytes}",
            document.len()
        )));
    }
    if let Err(err) = serde_json::from_str::<IgnoredAny>(document) {
        return Err(DocumentError(format!("document is not valid JSON: {err}")));
    }
    match json_kind(document) {
        "an object" => Ok(()),
        kind => Err(DocumentError(format!(
            "document must be a JSON object, not {kind}"
        ))),
    }
}

/// What kind of JSON value `text` (already known to be valid JSON) is, as a noun phrase.
fn json_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The members of one JSON object, in document order, values kept as raw text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    // RFC 8259 leaves duplicate names undefined; like most parsers (and
                    // Python), the last one wins.
                    members.retain(|(existing, _): &(String, &RawValue)| *existing != key);
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

fn parse_object<'a>(text: &'a str, what: &str) -> Result<Members<'a>, DocumentError> {
    serde_json::from_str::<Members<'a>>(text).map_err(|err| {
        if serde_json::from_str::<IgnoredAny>(text).is_ok() {
            DocumentError(format!(
                "{what} must be a JSON object, not {}",
                json_kind(text)
            ))
        } else {
            DocumentError(format!("{what} is not valid JSON: {err}"))
        }
    })
}

/// The document's top-level `"status"` when it is a string; `None` otherwise (absent, not a
/// string, or the document is not a JSON object).
pub fn top_level_status(document: &str) -> Option<String> {
    let members = serde_json::from_str::<Members<'_>>(document).ok()?;
    let (_, raw) = members.0.into_iter().find(|(key, _)| key == "status")?;
    serde_json::from_str::<String>(raw.get()).ok()
}

/// Checks that `patch` is a JSON object usable as a merge patch.
pub fn validate_patch(patch: &str, max_bytes: usize) -> Result<(), DocumentError> {
    if patch.len() > max_bytes {
        return Err(DocumentError(format!(
            "patch is {} bytes; the limit is {max_bytes}",
            patch.len()
        )));
    }
    parse_object(patch, "patch").map(|_| ())
}

/// Applies the RFC 7386 merge patch `patch` (a JSON object) to `document` (a JSON object).
pub fn merge_patch(document: &str, patch: &str) -> Result<String, DocumentError> {
    let target = parse_object(document, "stored document")?;
    let patch = parse_object(patch, "patch")?;
    let mut out = String::with_capacity(document.len() + patch.0.len() * 16);
    merge_objects(Some(target), patch, &mut out)?;
    Ok(out)
}

/// Writes `target` merged with `patch` as an object; `None` is "not an object", which a
/// patch object replaces with `{}` (RFC 7386).
fn merge_objects(
    target: Option<Members<'_>>,
    patch: Members<'_>,
    out: &mut String,
) -> Result<(), DocumentError> {
    let mut members: Vec<(String, Value<'_>)> = target
        .map(|target| {
            target
                .0
                .into_iter()
                .map(|(key, raw)| (key, Value::Raw(raw)))
                .collect()
        })
        .unwrap_or_default();
    for (key, patch_value) in patch.0 {
        let position = members.iter().position(|(existing, _)| *existing == key);
        if patch_value.get() == "null" {
            if let Some(at) = position {
                members.remove(at);
            }
            continue;
        }
        let merged = if patch_value.get().starts_with('{') {
            let nested_patch = serde_json::from_str::<Members<'_>>(patch_value.get())
                .map_err(|err| DocumentError(format!("patch is not valid JSON: {err}")))?;
            let nested_target = position.and_then(|at| match &members[at].1 {
                Value::Raw(raw) => serde_json::from_str::<Members<'_>>(raw.get()).ok(),
                Value::Written(_) => None,
            });
            let mut text = String::new();
            merge_objects(nested_target, nested_patch, &mut text)?;
            Value::Written(text)
        } else {
            Value::Raw(patch_value)
        };
        match position {
            Some(at) => members[at].1 = merged,
            None => members.push((key, merged)),
        }
    }
    out.push('{');
    for (index, (key, value)) in members.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        out.push_str(&serde_json::to_string(key).expect("a string always serializes"));
        out.push_str(": ");
        out.push_str(match value {
            Value::Raw(raw) => raw.get(),
            Value::Written(text) => text,
        });
    }
    out.push('}');
    Ok(())
}

enum Value<'a> {
    /// Untouched text from the document or the patch.
    Raw(&'a RawValue),
    /// An object this merge wrote.
    Written(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patch_replaces_adds_and_removes_members_in_place() {
        let merged = merge_patch(
            r#"{"id": "t1", "status": "pending", "progress": 0, "gone": 1}"#,
            r#"{"status": "running", "progress": 40, "gone": null, "worker": "w1"}"#,
        )
        .unwrap();
        assert_eq!(
            merged,
            r#"{"id": "t1", "status": "running", "progress": 40, "worker": "w1"}"#
        );
    }

    #[test]
    fn untouched_members_keep_their_exact_text() {
        let document = "{\"big\": 12345678901234567890123,\"f\":0.1, \"e\" : 1e400,\"u\":\"caf\\u00e9 \u{1F680}\",\"n\":{ \"x\" :[1 ,2] }}";
        let merged = merge_patch(document, r#"{"status": "done"}"#).unwrap();
        assert_eq!(
            merged,
            "{\"big\": 12345678901234567890123, \"f\": 0.1, \"e\": 1e400, \"u\": \"caf\\u00e9 \u{1F680}\", \"n\": { \"x\" :[1 ,2] }, \"status\": \"done\"}"
        );
    }

    #[test]
    fn patch_values_are_written_as_given() {
        let merged = merge_patch(r#"{"a": 1}"#, r#"{"a": 9007199254740993, "b": 1.10}"#).unwrap();
        assert_eq!(merged, r#"{"a": 9007199254740993, "b": 1.10}"#);
    }

    #[test]
    fn nested_objects_merge_recursively_and_non_objects_are_replaced() {
        let merged = merge_patch(
            r#"{"meta": {"a": 1, "b": {"c": 2}}, "list": [1, 2], "s": "x"}"#,
            r#"{"meta": {"b": {"d": 3}, "a": null}, "list": {"k": 1}, "s": {"t": null}}"#,
        )
        .unwrap();
        assert_eq!(
            merged,
            r#"{"meta": {"b": {"c": 2, "d": 3}}, "list": {"k": 1}, "s": {}}"#
        );
    }

    #[test]
    fn rfc7386_appendix_a_examples() {
        let cases = [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"c"}"#, r#"{"a":["b"]}"#, r#"{"a":["b"]}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ];
        for (document, patch, expected) in cases {
            let merged: serde_json::Value =
                serde_json::from_str(&merge_patch(document, patch).unwrap()).unwrap();
            let expected: serde_json::Value = serde_json::from_str(expected).unwrap();
            assert_eq!(merged, expected, "{document} + {patch}");
        }
    }

    #[test]
    fn rejects_non_object_patches_and_documents() {
        assert_eq!(
            merge_patch("{}", "[1]").unwrap_err().0,
            "patch must be a JSON object, not an array"
        );
        assert!(merge_patch("{}", "{")
            .unwrap_err()
            .0
            .starts_with("patch is not valid JSON"));
        assert_eq!(
            merge_patch("\"x\"", "{}").unwrap_err().0,
            "stored document must be a JSON object, not a string"
        );
    }

    #[test]
    fn reads_the_top_level_status() {
        assert_eq!(
            top_level_status(r#"{"status": "running"}"#).as_deref(),
            Some("running")
        );
        assert_eq!(top_level_status(r#"{"status": 3}"#), None);
        assert_eq!(top_level_status(r#"{"x": {"status": "nested"}}"#), None);
        assert_eq!(top_level_status("not json"), None);
    }

    #[test]
    fn validates_documents_by_size_and_shape() {
        assert_eq!(
            validate_document(&format!("{{\"a\":\"{}\"}}", "x".repeat(100)), 50)
                .unwrap_err()
                .0,
            "document is 108 bytes; the limit is 50"
        );
        assert_eq!(
            validate_document(" [1]", 100).unwrap_err().0,
            "document must be a JSON object, not an array"
        );
        assert!(validate_document(" {\"k\": [1, 2.5e300, -0]} \n", 100).is_ok());
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "[a-c]{0,3}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// RFC 7386's reference algorithm over value trees, to compare against.
    fn reference_merge(target: &serde_json::Value, patch: &serde_json::Value) -> serde_json::Value {
        let serde_json::Value::Object(patch) = patch else {
            return patch.clone();
        };
        let mut result = match target {
            serde_json::Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        for (key, value) in patch {
            if value.is_null() {
                result.remove(key);
            } else {
                let merged =
                    reference_merge(result.get(key).unwrap_or(&serde_json::Value::Null), value);
                result.insert(key.clone(), merged);
            }
        }
        serde_json::Value::Object(result)
    }

    proptest! {
        #[test]
        fn merge_matches_the_rfc_reference_algorithm(
            target in proptest::collection::btree_map("[a-d]", json_value(), 0..5),
            patch in proptest::collection::btree_map("[a-d]", json_value(), 0..5),
        ) {
            let target = serde_json::Value::Object(target.into_iter().collect());
            let patch = serde_json::Value::Object(patch.into_iter().collect());
            let merged = merge_patch(&target.to_string(), &patch.to_string()).unwrap();
            let merged: serde_json::Value = serde_json::from_str(&merged).unwrap();
            prop_assert_eq!(merged, reference_merge(&target, &patch));
        }
    }
}
