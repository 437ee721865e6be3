//! The one error type of the host API: the WIT `error` variant plus [`TaskError::Host`].

use std::fmt;

use crate::bindings::exports::taskstore::storage::task_storage as wit;

/// Why a store operation failed.
///
/// The first ten cases are the component's own (the WIT `error` variant, see
/// `wit/task-storage.wit` for what each means); [`TaskError::Host`] is the host's: the
/// component could not be instantiated, trapped, or the host could not set it up.
///
/// `Display` is one line (`<kind>: <message>`), and no message contains the password from
/// the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// Redis could not be reached, or the connection broke. Retrying later may succeed.
    Connection(String),
    /// Redis did not answer within the timeout; a write may or may not have been applied.
    Timeout(String),
    /// Redis refused the credentials, or requires some and the URL gives none.
    Authentication(String),
    /// Redis's reply was malformed, of an unexpected type, or too large.
    Protocol(String),
    /// Redis answered with an error reply (`WRONGTYPE`, `OOM`, `READONLY`, ...).
    Server(String),
    /// The input was rejected before anything was sent: a bad id, document, TTL, option or
    /// URL. Retrying with the same input fails the same way.
    InvalidInput(String),
    /// The stored value cannot be returned as a document (it is not UTF-8), or cannot be
    /// patched (it is not a JSON object).
    CorruptData(String),
    /// `update`'s status precondition failed. Carries the task's current document, exactly
    /// as stored; nothing was changed.
    Conflict(String),
    /// `update` gave up after the task kept changing underneath it; nothing was changed.
    Contended(String),
    /// Anything else the component reports.
    Other(String),
    /// The host failed: the component could not be compiled or instantiated, or it trapped.
    /// After a trap the instance is discarded and the next call starts a fresh one.
    Host(String),
}

impl TaskError {
    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Connection(m)
            | TaskError::Timeout(m)
            | TaskError::Authentication(m)
            | TaskError::Protocol(m)
            | TaskError::Server(m)
            | TaskError::InvalidInput(m)
            | TaskError::CorruptData(m)
            | TaskError::Conflict(m)
            | TaskError::Contended(m)
            | TaskError::Other(m)
            | TaskError::Host(m) => m,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            TaskError::Connection(_) => "connection failed",
            TaskError::Timeout(_) => "timed out",
            TaskError::Authentication(_) => "authentication failed",
            TaskError::Protocol(_) => "protocol error",
            TaskError::Server(_) => "Redis error",
            TaskError::InvalidInput(_) => "invalid input",
            TaskError::CorruptData(_) => "corrupt data",
            TaskError::Conflict(_) => "conflict",
            TaskError::Contended(_) => "contended",
            TaskError::Other(_) => "error",
            TaskError::Host(_) => "host error",
        }
    }

    /// The component's error, mapped case for case.
    pub(crate) fn from_guest(error: wit::Error) -> TaskError {
        match error {
            wit::Error::Connection(m) => TaskError::Connection(m),
            wit::Error::Timeout(m) => TaskError::Timeout(m),
            wit::Error::Authentication(m) => TaskError::Authentication(m),
            wit::Error::Protocol(m) => TaskError::Protocol(m),
            wit::Error::Server(m) => TaskError::Server(m),
            wit::Error::InvalidInput(m) => TaskError::InvalidInput(m),
            wit::Error::CorruptData(m) => TaskError::CorruptData(m),
            wit::Error::Conflict(document) => TaskError::Conflict(document),
            wit::Error::Contended(m) => TaskError::Contended(m),
            wit::Error::Other(m) => TaskError::Other(m),
        }
    }

    /// Replaces each of `secrets` in the message by `***`.
    ///
    /// The component promises secret-free messages; this is the host's second line of
    /// defence, and the first for text it passes on from the component's stderr.
    pub(crate) fn redact(self, secrets: &[String]) -> TaskError {
        if secrets.is_empty() {
            return self;
        }
        let clean = |m: String| redact_text(m, secrets);
        match self {
            TaskError::Connection(m) => TaskError::Connection(clean(m)),
            TaskError::Timeout(m) => TaskError::Timeout(clean(m)),
            TaskError::Authentication(m) => TaskError::Authentication(clean(m)),
            TaskError::Protocol(m) => TaskError::Protocol(clean(m)),
            TaskError::Server(m) => TaskError::Server(clean(m)),
            TaskError::InvalidInput(m) => TaskError::InvalidInput(clean(m)),
            TaskError::CorruptData(m) => TaskError::CorruptData(clean(m)),
            // A document is the caller's data, not a message of ours: returned untouched.
            TaskError::Conflict(document) => TaskError::Conflict(document),
            TaskError::Contended(m) => TaskError::Contended(clean(m)),
            TaskError::Other(m) => TaskError::Other(clean(m)),
            TaskError::Host(m) => TaskError::Host(clean(m)),
        }
    }
}

fn redact_text(mut text: String, secrets: &[String]) -> String {
    for secret in secrets {
        // Replacing a one- or two-character password would garble every message while
        // hiding nothing worth hiding.
        if secret.chars().count() >= 3 && text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.kind())?;
        // One line whatever the message holds: callers log these, and a CLI prints them
        // as `taskstore: <error>`.
        for c in self.message().chars() {
            if c.is_control() {
                f.write_str(" ")?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_kind_then_message() {
        let e = TaskError::Connection("cannot connect to 127.0.0.1:1: connection refused".into());
        assert_eq!(
            e.to_string(),
            "connection failed: cannot connect to 127.0.0.1:1: connection refused"
        );
        assert_eq!(TaskError::Host("x".into()).to_string(), "host error: x");
    }

    #[test]
    fn display_is_one_line() {
        let e = TaskError::Other("first\nsecond\r\tthird".into());
        assert_eq!(e.to_string(), "error: first second  third");
    }

    #[test]
    fn every_guest_case_maps_to_its_own_case() {
        let cases = [
            (
                wit::Error::Connection("m".into()),
                TaskError::Connection("m".into()),
            ),
            (
                wit::Error::Timeout("m".into()),
                TaskError::Timeout("m".into()),
            ),
            (
                wit::Error::Authentication("m".into()),
                TaskError::Authentication("m".into()),
            ),
            (
                wit::Error::Protocol("m".into()),
                TaskError::Protocol("m".into()),
            ),
            (
                wit::Error::Server("m".into()),
                TaskError::Server("m".into()),
            ),
            (
                wit::Error::InvalidInput("m".into()),
                TaskError::InvalidInput("m".into()),
            ),
            (
                wit::Error::CorruptData("m".into()),
                TaskError::CorruptData("m".into()),
            ),
            (wit::Error::Other("m".into()), TaskError::Other("m".into())),
        ];
        for (guest, host) in cases {
            assert_eq!(TaskError::from_guest(guest), host);
        }
    }

    #[test]
    fn redact_removes_the_password_from_messages() {
        let secrets = vec!["hunter2".to_owned()];
        let e = TaskError::Authentication("AUTH hunter2 failed; hunter2".into()).redact(&secrets);
        assert_eq!(e.to_string(), "authentication failed: AUTH *** failed; ***");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn redact_leaves_very_short_passwords_alone() {
        let e = TaskError::Other("a b".into()).redact(&["a".to_owned()]);
        assert_eq!(e.message(), "a b");
    }
}
