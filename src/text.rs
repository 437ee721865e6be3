//! Untrusted text (server bytes, parts of a URL) shown in error messages.

/// At most `max_chars` characters of `text`, quoted, with control characters shown as `?`
/// so a message stays one printable line. Cheaper in the component than `{:?}`, which
/// pulls in Unicode escape tables.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let mut shown = String::with_capacity(max_chars.min(text.len()) + 2);
    shown.push('"');
    shown.extend(
        text.chars()
            .take(max_chars)
            .map(|c| if c.is_control() { '?' } else { c }),
    );
    shown.push('"');
    shown
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn quotes_truncates_and_masks_control_characters() {
        assert_eq!(excerpt("ab\r\ncd", 5), "\"ab??c\"");
        assert_eq!(excerpt("", 5), "\"\"");
    }
}
