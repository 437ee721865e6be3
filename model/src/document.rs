//! JSON documents: validation, the top-level `status`, and RFC 7386 merge patches that
//! rewrite only what the patch touches.
//!
//! A document is never round-tripped through a JSON value tree: keys, and members the patch
//! does not touch, are copied as their original text, so key order, whitespace inside
//! values, string escapes and number literals (`12345678901234567890`, `0.1`, `1e400`)
//! survive exactly.
//! Objects the patch does touch are re-emitted with Python `json.dumps`'s default
//! separators (`", "`, `": "`), the style the original service writes.
//!
//! Every operation is linear (hash lookups aside) in the size of the texts it reads, and
//! none recurses deeper than a patch's nesting, which is bounded by [`MAX_NESTING_DEPTH`]:
//! one large or deep document must not stall or trap the instance that reads it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::IgnoredAny;

/// A document or patch that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError(pub String);

/// A document or patch the caller gave is rejected before anything is sent.
impl From<DocumentError> for crate::TaskError {
    fn from(err: DocumentError) -> crate::TaskError {
        crate::TaskError::invalid_input(err.0)
    }
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most levels of nested objects and arrays a document or patch written through the store
/// may have; the top-level object is level 1. serde_json's default recursion limit (128) and
/// the WIT document the same bound, so documents that common parsers read are accepted.
pub const MAX_NESTING_DEPTH: usize = 128;

/// A document must be one JSON object no longer than `max_bytes`, nested at most
/// [`MAX_NESTING_DEPTH`] levels.
pub fn validate_document(document: &str, max_bytes: usize) -> Result<(), DocumentError> {
    if document.len() > max_bytes {
        return Err(DocumentError(format!(
            "document is {} bytes; the limit is {max_bytes}",
            document.len()
        )));
    }
    check_bounded_object(document, "document")
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

/// One member of a JSON object, as text slices of the object.
struct Member<'a> {
    /// The key as written, quotes and escapes included: re-emitted verbatim.
    raw_key: &'a str,
    /// The key decoded, for matching patch members to document members.
    key: Cow<'a, str>,
    /// The value as written.
    value: &'a str,
}

/// The members of the JSON object `text`, in order, or `None` if `text` is not an object.
/// Duplicate keys: the last one wins, in the last one's place, as in most parsers (Python's
/// included).
fn object_members(text: &str) -> Option<Vec<Member<'_>>> {
    let mut members = Vec::new();
    for_each_member(text, |member| members.push(member))?;
    // One map from each key to its last occurrence, rather than a search per member, keeps
    // an object of many members linear.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        last.insert(member.key.as_ref(), index);
    }
    if last.len() == members.len() {
        return Some(members);
    }
    let keep: Vec<bool> = members
        .iter()
        .enumerate()
        .map(|(index, member)| last.get(member.key.as_ref()) == Some(&index))
        .collect();
    drop(last);
    let mut keep = keep.into_iter();
    members.retain(|_| keep.next().unwrap_or(true));
    Some(members)
}

/// Calls `visit` with each member of the JSON object `text`, in order, duplicates included;
/// `None` if `text` is not an object.
///
/// A small scanner rather than serde: it keeps every key and value as its original text,
/// and typed deserialization would pull float formatting and much of serde's error
/// machinery into the component for nothing. It never panics and never recurses; on text
/// that is not valid JSON its answer is unspecified, so callers validate with serde_json
/// first where it matters.
fn for_each_member<'a>(text: &'a str, mut visit: impl FnMut(Member<'a>)) -> Option<()> {
    let bytes = text.as_bytes();
    let mut pos = skip_whitespace(bytes, 0);
    if bytes.get(pos) != Some(&b'{') {
        return None;
    }
    pos = skip_whitespace(bytes, pos + 1);
    if bytes.get(pos) == Some(&b'}') {
        return Some(());
    }
    loop {
        if bytes.get(pos) != Some(&b'"') {
            return None;
        }
        let key_end = skip_string(bytes, pos)?;
        let raw_key = &text[pos..key_end];
        pos = skip_whitespace(bytes, key_end);
        if bytes.get(pos) != Some(&b':') {
            return None;
        }
        pos = skip_whitespace(bytes, pos + 1);
        let value_end = skip_value(bytes, pos)?;
        visit(Member {
            raw_key,
            key: decode_string(raw_key)?,
            value: &text[pos..value_end],
        });
        pos = skip_whitespace(bytes, value_end);
        match bytes.get(pos) {
            Some(b',') => pos = skip_whitespace(bytes, pos + 1),
            Some(b'}') => return Some(()),
            _ => return None,
        }
    }
}

/// Whether the JSON text `text` nests objects and arrays more than `max_depth` levels deep;
/// one pass, no recursion.
fn nests_deeper_than(text: &str, max_depth: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut pos = 0;
    while let Some(&byte) = bytes.get(pos) {
        match byte {
            b'"' => match skip_string(bytes, pos) {
                Some(end) => {
                    pos = end;
                    continue;
                }
                None => return false,
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        pos += 1;
    }
    false
}

fn skip_whitespace(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// End (one past the closing quote) of the string whose opening quote is at `pos`.
fn skip_string(bytes: &[u8], pos: usize) -> Option<usize> {
    let mut i = pos + 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End of the JSON value starting at `pos`. Every end it returns is an ASCII delimiter's
/// position or the text's end, so slicing there is always on a character boundary.
fn skip_value(bytes: &[u8], pos: usize) -> Option<usize> {
    match bytes.get(pos)? {
        b'"' => skip_string(bytes, pos),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = pos;
            while let Some(&byte) = bytes.get(i) {
                match byte {
                    b'"' => {
                        i = skip_string(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let end = bytes[pos..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(bytes.len(), |offset| pos + offset);
            // Validated JSON never has an empty scalar here (`end == pos` would need a
            // delimiter where a value starts), so `>=` would behave the same: an equivalent
            // mutant that cargo-mutants reports as missed.
            (end > pos).then_some(end)
        }
    }
}

/// The text of the JSON string literal `raw` (quotes included), escapes decoded.
fn decode_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.next()? {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let high = hex4(&mut chars)?;
                if (0xD800..0xDC00).contains(&high) {
                    // A surrogate pair: the low half must follow as another \u escape.
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let low = hex4(&mut chars)?;
                    char::from_u32(0x10000 + ((high - 0xD800) << 10) + low.checked_sub(0xDC00)?)?
                } else {
                    char::from_u32(high)?
                }
            }
            other => other,
        };
        out.push(decoded);
    }
    Some(Cow::Owned(out))
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let mut value = 0;
    for _ in 0..4 {
        value = value * 16 + chars.next()?.to_digit(16)?;
    }
    Some(value)
}

/// The members of `text`, which must be valid JSON, an object, and nested at most
/// [`MAX_NESTING_DEPTH`] levels; `what` names it in errors.
fn parse_object<'a>(text: &'a str, what: &str) -> Result<Vec<Member<'a>>, DocumentError> {
    check_bounded_object(text, what)?;
    object_members(text).ok_or_else(|| not_an_object(text, what))
}

/// Checks that `text` is valid JSON, an object, and nested at most [`MAX_NESTING_DEPTH`]
/// levels; `what` names it in errors.
fn check_bounded_object(text: &str, what: &str) -> Result<(), DocumentError> {
    check_json_object(text, what)?;
    if nests_deeper_than(text, MAX_NESTING_DEPTH) {
        return Err(DocumentError(format!(
            "{what} is nested more than {MAX_NESTING_DEPTH} levels deep"
        )));
    }
    Ok(())
}

/// Checks that `text` is valid JSON and an object, at any depth: serde_json skips values
/// without recursion.
fn check_json_object(text: &str, what: &str) -> Result<(), DocumentError> {
    if let Err(err) = serde_json::from_str::<IgnoredAny>(text) {
        return Err(DocumentError(format!("{what} is not valid JSON: {err}")));
    }
    match json_kind(text) {
        "an object" => Ok(()),
        _ => Err(not_an_object(text, what)),
    }
}

fn not_an_object(text: &str, what: &str) -> DocumentError {
    DocumentError(format!(
        "{what} must be a JSON object, not {}",
        json_kind(text)
    ))
}

/// The document's top-level `"status"` when it is a string; `None` otherwise (absent, not a
/// string, or the document is not a JSON object). One pass over the document; with duplicate
/// keys the last `"status"` counts.
pub fn top_level_status(document: &str) -> Option<String> {
    let mut status = None;
    for_each_member(document, |member| {
        if member.key == "status" {
            status = Some(member.value);
        }
    })?;
    let status = status?;
    if !status.starts_with('"') {
        return None;
    }
    decode_string(status).map(Cow::into_owned)
}

/// Checks that `patch` is a JSON object usable as a merge patch, nested at most
/// [`MAX_NESTING_DEPTH`] levels (merging recurses along the patch's nesting).
pub fn validate_patch(patch: &str, max_bytes: usize) -> Result<(), DocumentError> {
    if patch.len() > max_bytes {
        return Err(DocumentError(format!(
            "patch is {} bytes; the limit is {max_bytes}",
            patch.len()
        )));
    }
    check_bounded_object(patch, "patch")
}

/// Applies the RFC 7386 merge patch `patch` (a JSON object) to `document` (a JSON object).
/// The document may be nested at any depth (another client may have written it); the patch
/// at most [`MAX_NESTING_DEPTH`] levels.
pub fn merge_patch(document: &str, patch: &str) -> Result<String, DocumentError> {
    check_json_object(document, "stored document")?;
    let target =
        object_members(document).ok_or_else(|| not_an_object(document, "stored document"))?;
    let patch = parse_object(patch, "patch")?;
    let mut out = String::with_capacity(document.len() + patch.len() * 16);
    merge_objects(Some(target), patch, &mut out);
    Ok(out)
}

/// Writes `target` merged with `patch` as an object; `None` is "not an object", which a
/// patch object replaces with `{}` (RFC 7386). Both are already validated JSON, and neither
/// holds a key twice ([`object_members`]). Recurses once per level of the patch's nesting.
fn merge_objects<'a>(target: Option<Vec<Member<'a>>>, patch: Vec<Member<'a>>, out: &mut String) {
    let target = target.unwrap_or_default();
    // `None`: removed by the patch; left in place so positions stay valid.
    let mut merged: Vec<(&str, Option<Cow<'_, str>>)> = target
        .iter()
        .map(|member| (member.raw_key, Some(Cow::Borrowed(member.value))))
        .collect();
    let mut position: HashMap<&str, usize> = target
        .iter()
        .enumerate()
        .map(|(index, member)| (member.key.as_ref(), index))
        .collect();
    for member in &patch {
        let at = position.get(member.key.as_ref()).copied();
        if member.value == "null" {
            if let Some(at) = at {
                merged[at].1 = None;
            }
            continue;
        }
        let value = match object_members(member.value) {
            Some(nested_patch) => {
                let nested_target = at
                    .and_then(|at| merged[at].1.as_deref())
                    .and_then(object_members);
                let mut text = String::new();
                merge_objects(nested_target, nested_patch, &mut text);
                Cow::Owned(text)
            }
            None => Cow::Borrowed(member.value),
        };
        match at {
            Some(at) => merged[at].1 = Some(value),
            None => {
                position.insert(member.key.as_ref(), merged.len());
                merged.push((member.raw_key, Some(value)));
            }
        }
    }
    out.push('{');
    let mut first = true;
    for (raw_key, value) in &merged {
        let Some(value) = value else {
            continue;
        };
        if !first {
            out.push_str(", ");
        }
        first = false;
        out.push_str(raw_key);
        out.push_str(": ");
        out.push_str(value);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_size_limit_is_inclusive_and_the_error_says_both_sizes() {
        assert!(validate_document("{}", 2).is_ok());
        let err = validate_document("{ }", 2).unwrap_err();
        assert_eq!(err.to_string(), "document is 3 bytes; the limit is 2");
    }

    #[test]
    fn the_patch_size_limit_is_inclusive() {
        assert!(validate_patch("{}", 2).is_ok());
        let err = validate_patch("{ }", 2).unwrap_err();
        assert_eq!(err.to_string(), "patch is 3 bytes; the limit is 2");
    }

    #[test]
    fn closing_brackets_inside_nested_strings_do_not_end_a_value() {
        // The member scanner skips nested values by counting brackets: one inside a string
        // literal must not count, or `"b"` would be taken for part of `"a"`'s value.
        let document = r#"{"a":{"s":"}]","t":["]}"]},"b":1}"#;
        assert_eq!(
            merge_patch(document, r#"{"b":2}"#).unwrap(),
            r#"{"a": {"s":"}]","t":["]}"]}, "b": 2}"#
        );
        assert_eq!(
            top_level_status(r#"{"x":{"y":"}"},"status":"done"}"#).as_deref(),
            Some("done")
        );
    }

    #[test]
    fn a_non_object_is_named_by_its_kind() {
        for (text, kind) in [
            ("[1]", "an array"),
            ("\"x\"", "a string"),
            ("true", "a boolean"),
            ("false", "a boolean"),
            ("null", "null"),
            ("-1.5", "a number"),
        ] {
            let err = validate_document(text, 64).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("document must be a JSON object, not {kind}"),
            );
        }
    }

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

    #[test]
    fn escaped_keys_match_their_decoded_form_and_keep_their_text() {
        let merged = merge_patch(
            r#"{"st\u0061tus": "a", "caf\u00e9": 1, "\ud83d\ude80": 2}"#,
            r#"{"status": "b", "café": null, "🚀": 3}"#,
        )
        .unwrap();
        assert_eq!(merged, r#"{"st\u0061tus": "b", "\ud83d\ude80": 3}"#);
        assert_eq!(
            top_level_status(r#"{"st\u0061tus": "r\u00fcn \"x\""}"#).as_deref(),
            Some("rün \"x\"")
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        assert_eq!(
            top_level_status(r#"{"status": "a", "status": "b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            merge_patch(r#"{"a": 1, "a": 2}"#, "{}").unwrap(),
            r#"{"a": 2}"#
        );
    }

    /// An object holding `levels` levels in all: `{"a": {"a": … {"status": "s"} … }}`.
    fn nested_object(levels: usize) -> String {
        let mut text = "{\"a\": ".repeat(levels - 1);
        text.push_str("{\"status\": \"s\"}");
        text.push_str(&"}".repeat(levels - 1));
        text
    }

    #[test]
    fn nesting_is_accepted_up_to_the_limit_and_rejected_beyond() {
        validate_document(&nested_object(MAX_NESTING_DEPTH), usize::MAX).unwrap();
        validate_patch(&nested_object(MAX_NESTING_DEPTH), usize::MAX).unwrap();
        let arrays = format!(
            "{{\"a\": {}1{}}}",
            "[".repeat(MAX_NESTING_DEPTH),
            "]".repeat(MAX_NESTING_DEPTH)
        );
        assert_eq!(
            validate_document(&arrays, usize::MAX).unwrap_err().0,
            "document is nested more than 128 levels deep"
        );
        assert_eq!(
            validate_patch(&nested_object(MAX_NESTING_DEPTH + 1), usize::MAX)
                .unwrap_err()
                .0,
            "patch is nested more than 128 levels deep"
        );
        // Brackets inside strings are text, not nesting.
        let brackets = format!("{{\"a\": \"{}\"}}", "[{".repeat(10_000));
        validate_document(&brackets, usize::MAX).unwrap();
    }

    #[test]
    fn deep_patches_are_rejected_without_recursing() {
        let deep = nested_object(100_000);
        assert_eq!(
            merge_patch("{}", &deep).unwrap_err().0,
            "patch is nested more than 128 levels deep"
        );
        assert!(validate_document(&deep, usize::MAX).is_err());
    }

    #[test]
    fn deep_stored_documents_are_read_and_patched_without_recursing() {
        // Written by another client: the store never rejects what it only reads.
        let deep = format!(
            "{{\"status\": \"done\", \"x\": {}}}",
            nested_object(100_000)
        );
        assert_eq!(top_level_status(&deep).as_deref(), Some("done"));
        let merged = merge_patch(&deep, r#"{"status": "archived", "x": {"b": 1}}"#).unwrap();
        assert_eq!(top_level_status(&merged).as_deref(), Some("archived"));
        assert!(merged.ends_with(&format!("{}, \"b\": 1}}}}", "}".repeat(99_999))));
    }

    #[test]
    fn objects_with_many_members_merge_correctly() {
        let members = 80_000;
        let document = format!(
            "{{\"status\": \"pending\", {}}}",
            (0..members)
                .map(|i| format!("\"k{i}\": {i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let patch = format!(
            "{{\"status\": \"running\", {}, \"k7\": null, \"new\": true}}",
            (0..members)
                .step_by(2)
                .map(|i| format!("\"k{i}\": \"v{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let merged = merge_patch(&document, &patch).unwrap();
        let merged: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&merged).unwrap();
        assert_eq!(merged.len(), members + 1);
        assert_eq!(merged["status"], "running");
        assert_eq!(merged["k2"], "v2");
        assert_eq!(merged["k3"], 3);
        assert!(!merged.contains_key("k7"));
        assert_eq!(merged["new"], true);
        assert_eq!(top_level_status(&patch).as_deref(), Some("running"));
    }

    #[test]
    fn duplicate_keys_in_many_members_keep_the_last_in_its_place() {
        let merged =
            merge_patch(r#"{"a": 1, "b": 2, "a": 3, "c": 4, "b": 5}"#, r#"{"c": 6}"#).unwrap();
        assert_eq!(merged, r#"{"a": 3, "c": 6, "b": 5}"#);
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
        fn scanning_arbitrary_text_never_panics(text in "[{}\\[\\]\":,\\\\a-c0-9 u]{0,40}|\\PC{0,40}") {
            let _ = top_level_status(&text);
            let _ = object_members(&text);
            let _ = merge_patch(&text, &text);
        }

        #[test]
        fn nesting_depth_matches_serde_json(value in json_value()) {
            fn depth(value: &serde_json::Value) -> usize {
                match value {
                    serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                    serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                    _ => 0,
                }
            }
            let text = value.to_string();
            let levels = depth(&value);
            prop_assert!(!nests_deeper_than(&text, levels));
            prop_assert_eq!(nests_deeper_than(&text, levels.saturating_sub(1)), levels > 0);
        }

        #[test]
        fn status_matches_serde_json_on_valid_objects(
            members in proptest::collection::btree_map("[a-z]{1,6}|status", json_value(), 0..5),
        ) {
            let document = serde_json::Value::Object(members.into_iter().collect());
            let expected = document.get("status").and_then(|s| s.as_str()).map(str::to_owned);
            prop_assert_eq!(top_level_status(&document.to_string()), expected);
        }

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
