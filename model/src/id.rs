//! The task id rule, shared by the component and the HTTP function.

use crate::error::TaskError;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// An id is 1..=1024 bytes of UTF-8 without ASCII control characters (U+0000–U+001F, U+007F).
///
/// Any other text is allowed (spaces, `:`, `*`, non-ASCII letters): the key is
/// `<prefix><id>`, binary-safe in Redis, and listing escapes glob characters.
pub fn validate_id(id: &str) -> Result<(), TaskError> {
    if id.is_empty() {
        return Err(TaskError::invalid_input("task id is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(TaskError::invalid_input(format!(
            "task id is {} bytes long; the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_ascii_control()) {
        return Err(TaskError::invalid_input(format!(
            "task id contains the control character U+{:04X} at byte {at}",
            c as u32
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn the_limits_are_inclusive() {
        assert!(validate_id("a").is_ok());
        assert!(validate_id(&"é".repeat(MAX_ID_BYTES / 2)).is_ok());
        let error = validate_id(&"a".repeat(MAX_ID_BYTES + 1)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(error.message().contains("1025 bytes"), "{error}");
        assert_eq!(validate_id("").unwrap_err().message(), "task id is empty");
        let error = validate_id("a\u{7f}").unwrap_err();
        assert!(error.message().contains("U+007F at byte 1"), "{error}");
        // C1 controls are printable enough in a key and allowed, as before.
        assert!(validate_id("a\u{85}").is_ok());
    }

    proptest! {
        #[test]
        fn accepts_exactly_the_documented_ids(id in "\\PC{0,40}|[\\x00-\\x20a\\x7f]{0,8}") {
            let documented = !id.is_empty()
                && id.len() <= MAX_ID_BYTES
                && !id.bytes().any(|b| b < 0x20 || b == 0x7f);
            prop_assert_eq!(validate_id(&id).is_ok(), documented);
        }
    }
}
