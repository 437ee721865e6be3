//! The error type of the host API: the shared model's [`TaskError`], re-exported, and the
//! one mapping from the component's WIT `error` to it.
//!
//! The first ten kinds are the component's own (the WIT `error` variant, see
//! `wit/task-storage.wit` for what each means); [`ErrorKind::Host`] is the host's: the
//! component could not be instantiated, trapped, ran past its deadline, or the host could not
//! set it up. After a trap the instance is discarded and the next call starts a fresh one.
//!
//! `Display` is one line (`<kind>: <message>`), and no message contains the password from
//! the URL: the component promises secret-free messages, and the host scrubs every message
//! it returns with [`TaskError::redact`] as a second line of defence.

pub use taskstore::{ErrorKind, RedisErrorCode, TaskError};

use crate::bindings::exports::taskstore::storage::task_storage as wit;

/// The component's error, mapped case for case.
pub(crate) fn from_guest(error: wit::Error) -> TaskError {
    let (kind, message) = match error {
        wit::Error::Connection(m) => (ErrorKind::Connection, m),
        wit::Error::Timeout(m) => (ErrorKind::Timeout, m),
        wit::Error::Authentication(m) => (ErrorKind::Authentication, m),
        wit::Error::Protocol(m) => (ErrorKind::Protocol, m),
        wit::Error::Server(m) => (ErrorKind::Server, m),
        wit::Error::InvalidInput(m) => (ErrorKind::InvalidInput, m),
        wit::Error::CorruptData(m) => (ErrorKind::CorruptData, m),
        wit::Error::Conflict(document) => (ErrorKind::Conflict, document),
        wit::Error::Contended(m) => (ErrorKind::Contended, m),
        wit::Error::Other(m) => (ErrorKind::Other, m),
    };
    TaskError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_kind_then_message() {
        let e = TaskError::connection("cannot connect to 127.0.0.1:1: connection refused");
        assert_eq!(
            e.to_string(),
            "connection failed: cannot connect to 127.0.0.1:1: connection refused"
        );
        assert_eq!(TaskError::host("x").to_string(), "host error: x");
    }

    #[test]
    fn display_is_one_line() {
        let e = TaskError::new(ErrorKind::Other, "first\nsecond\r\tthird");
        assert_eq!(e.to_string(), "error: first second  third");
    }

    #[test]
    fn every_guest_case_maps_to_its_own_case() {
        let cases = [
            (wit::Error::Connection("m".into()), ErrorKind::Connection),
            (wit::Error::Timeout("m".into()), ErrorKind::Timeout),
            (
                wit::Error::Authentication("m".into()),
                ErrorKind::Authentication,
            ),
            (wit::Error::Protocol("m".into()), ErrorKind::Protocol),
            (wit::Error::Server("m".into()), ErrorKind::Server),
            (
                wit::Error::InvalidInput("m".into()),
                ErrorKind::InvalidInput,
            ),
            (wit::Error::CorruptData("m".into()), ErrorKind::CorruptData),
            (wit::Error::Conflict("m".into()), ErrorKind::Conflict),
            (wit::Error::Contended("m".into()), ErrorKind::Contended),
            (wit::Error::Other("m".into()), ErrorKind::Other),
        ];
        for (guest, kind) in cases {
            assert_eq!(from_guest(guest), TaskError::new(kind, "m"));
        }
    }

    #[test]
    fn a_guest_conflict_carries_the_current_document() {
        let document = r#"{"status":"done"}"#;
        let error = from_guest(wit::Error::Conflict(document.into()));
        assert_eq!(error.current_document(), Some(document));
    }

    #[test]
    fn redact_removes_the_password_from_messages() {
        let secrets = vec!["hunter2".to_owned()];
        let e = TaskError::authentication("AUTH hunter2 failed; hunter2").redact(&secrets);
        assert_eq!(e.to_string(), "authentication failed: AUTH *** failed; ***");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn redact_removes_even_one_and_two_character_passwords() {
        // A garbled message is better than one that shows the password.
        let e = TaskError::new(ErrorKind::Other, "a b").redact(&["a".to_owned()]);
        assert_eq!(e.message(), "*** b");
        let e = TaskError::authentication("AUTH pw failed").redact(&["pw".to_owned()]);
        assert_eq!(e.message(), "AUTH *** failed");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
