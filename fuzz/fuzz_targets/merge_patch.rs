//! Merge patches agree with RFC 7386 as computed on serde_json value trees, produce a valid
//! JSON object, and are idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskstore::document::{merge_patch, validate_document, validate_patch};

/// RFC 7386, section 2, on value trees.
fn reference(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(members) = target else {
        unreachable!()
    };
    for (name, value) in patch {
        if value.is_null() {
            members.remove(name);
        } else {
            reference(members.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Document and patch, separated by the first 0xff (never part of UTF-8).
    let Some(split) = data.iter().position(|&b| b == 0xff) else {
        return;
    };
    let (Ok(document), Ok(patch)) = (
        std::str::from_utf8(&data[..split]),
        std::str::from_utf8(&data[split + 1..]),
    ) else {
        return;
    };
    let valid = validate_document(document, usize::MAX).is_ok()
        && validate_patch(patch, usize::MAX).is_ok();
    let merged = merge_patch(document, patch);
    if !valid {
        assert!(merged.is_err(), "{document:?} + {patch:?} = {merged:?}");
        return;
    }
    let merged = merged.unwrap_or_else(|e| panic!("{document:?} + {patch:?}: {e}"));
    assert!(
        validate_document(&merged, usize::MAX).is_ok(),
        "{document:?} + {patch:?} = {merged:?} is not a JSON object"
    );
    let again = merge_patch(&merged, patch).expect("a merged document patches again");
    let (Ok(mut expected), Ok(patch_value), Ok(got), Ok(got_again)) = (
        serde_json::from_str::<Value>(document),
        serde_json::from_str::<Value>(patch),
        serde_json::from_str::<Value>(&merged),
        serde_json::from_str::<Value>(&again),
    ) else {
        // Numbers beyond f64 (kept as text by the store) have no value tree to compare.
        return;
    };
    reference(&mut expected, &patch_value);
    assert_eq!(got, expected, "{document:?} + {patch:?} = {merged:?}");
    assert_eq!(
        got_again, got,
        "patching twice changed {merged:?} to {again:?}"
    );
});
