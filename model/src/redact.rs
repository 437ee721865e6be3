//! The one redactor of secrets in text bound for a message, a log line or a panic.

/// `text` with every occurrence of each non-empty secret replaced by `***`.
///
/// Every length counts: a one-character password is redacted too, even though that garbles
/// the message, because a message that reveals a short password is worse than an ugly one.
/// Longer secrets go first, so a secret that contains another is replaced whole.
pub fn redact_secrets(mut text: String, secrets: &[String]) -> String {
    let mut ordered: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|secret| !secret.is_empty())
        .collect();
    ordered.sort_unstable_by_key(|secret| std::cmp::Reverse(secret.len()));
    for secret in ordered {
        if text.contains(secret) {
            text = text.replace(secret, "***");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_of_every_length_are_replaced() {
        for secret in ["p", "pw", "pwd", "correct horse"] {
            let text = format!("WRONGPASS for {secret} at 127.0.0.1:6379");
            let clean = redact_secrets(text, &[secret.to_owned()]);
            assert!(!clean.contains(secret), "{secret}: {clean}");
            assert!(clean.contains("***"), "{clean}");
        }
    }

    #[test]
    fn an_empty_secret_changes_nothing_and_the_longest_goes_first() {
        assert_eq!(redact_secrets("abc".into(), &[String::new()]), "abc");
        let clean = redact_secrets("key=hunter22".into(), &["hunter".into(), "hunter22".into()]);
        assert_eq!(clean, "key=***");
    }
}
