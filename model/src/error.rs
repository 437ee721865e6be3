//! The one error model: what kind of failure, and a message.
//!
//! [`ErrorKind`] is the WIT `error` variant of `taskstore:storage/task-storage`, case for case
//! (see `wit/task-storage.wit` for what each case means), plus [`ErrorKind::Host`] for an
//! embedding that could not run the component. The component maps a [`TaskError`] to the
//! WIT once (`src/component.rs`), and every host or guest that reads the WIT maps it back
//! once; nothing else re-states the cases.
//!
//! Redis's own error replies are classified once, too: [`RedisErrorCode::of`] reads the
//! first word of the reply, and every question about one (is it a redirect, does it mean the
//! password is wrong, will it pass) is answered from the code.

use std::fmt;

/// Why an operation failed, by what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Redis could not be reached, or the connection broke (TLS handshakes included).
    Connection,
    /// No connection, write or reply within the timeout.
    Timeout,
    /// Credentials missing or refused.
    Authentication,
    /// The reply was malformed, of an unexpected type, or too large.
    Protocol,
    /// Redis answered with an error reply; the message is Redis's text.
    Server,
    /// The caller's input was rejected before anything was sent.
    InvalidInput,
    /// The stored value cannot be returned as a document, or cannot be patched.
    CorruptData,
    /// `update`'s status precondition failed; the "message" is the current document.
    Conflict,
    /// `update` gave up after the task kept changing underneath it.
    Contended,
    /// The WIT's open case, kept so that a later version can report a new kind of failure
    /// without breaking callers; this version of the component never produces it.
    Other,
    /// The embedding failed, not the store: the component could not be compiled or
    /// instantiated, ran past its deadline or memory, or trapped. Never crosses the WIT.
    Host,
}

impl ErrorKind {
    /// Every kind, in WIT order with [`ErrorKind::Host`] last.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Authentication,
        ErrorKind::Protocol,
        ErrorKind::Server,
        ErrorKind::InvalidInput,
        ErrorKind::CorruptData,
        ErrorKind::Conflict,
        ErrorKind::Contended,
        ErrorKind::Other,
        ErrorKind::Host,
    ];

    /// The WIT case name (`invalid-input`); `host` for [`ErrorKind::Host`].
    pub fn wit_name(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Server => "server",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::CorruptData => "corrupt-data",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Contended => "contended",
            ErrorKind::Other => "other",
            ErrorKind::Host => "host",
        }
    }

    /// The words `Display` puts before the message (`connection failed: ...`).
    pub fn description(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection failed",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Authentication => "authentication failed",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Server => "Redis error",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::CorruptData => "corrupt data",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Contended => "contended",
            ErrorKind::Other => "error",
            ErrorKind::Host => "host error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// A failed operation: its [`ErrorKind`] and a one-line message that never holds a secret.
///
/// For [`ErrorKind::Conflict`] the message is the task's current document instead, exactly
/// as stored ([`TaskError::current_document`]); `Display` then does not print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> TaskError {
        TaskError {
            kind,
            message: message.into(),
        }
    }

    pub fn connection(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Connection, message)
    }

    pub fn timeout(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Timeout, message)
    }

    pub fn authentication(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Authentication, message)
    }

    pub fn protocol(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Protocol, message)
    }

    /// Redis's error reply, its text unchanged (`WRONGTYPE Operation against a key ...`).
    pub fn server(reply_text: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Server, reply_text)
    }

    pub fn invalid_input(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::InvalidInput, message)
    }

    pub fn corrupt_data(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::CorruptData, message)
    }

    /// `update`'s precondition failed; carries the task's current document.
    pub fn conflict(current_document: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Conflict, current_document)
    }

    pub fn contended(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Contended, message)
    }

    pub fn host(message: impl Into<String>) -> TaskError {
        TaskError::new(ErrorKind::Host, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind (for a conflict: the current document).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn into_message(self) -> String {
        self.message
    }

    /// The task's current document, when this is a conflict.
    pub fn current_document(&self) -> Option<&str> {
        (self.kind == ErrorKind::Conflict).then_some(self.message.as_str())
    }

    /// The classified Redis error code, when this is a Redis error reply.
    pub fn redis_code(&self) -> Option<RedisErrorCode> {
        (self.kind == ErrorKind::Server).then(|| RedisErrorCode::of(&self.message))
    }

    /// Whether the same call, unchanged, may succeed later: the failure was the network's,
    /// the clock's, another writer's, or a passing state of the server (see
    /// [`RedisErrorCode::is_transient`]). Not after bad input, bad data, refused
    /// credentials, a failed precondition, a protocol violation or a host failure.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Contended => true,
            ErrorKind::Server => RedisErrorCode::of(&self.message).is_transient(),
            ErrorKind::Authentication
            | ErrorKind::Protocol
            | ErrorKind::InvalidInput
            | ErrorKind::CorruptData
            | ErrorKind::Conflict
            | ErrorKind::Other
            | ErrorKind::Host => false,
        }
    }

    /// Whether a write that failed this way may nonetheless have been applied: its reply was
    /// lost (connection, timeout, an unreadable reply) or the host stopped the component
    /// mid-call. Every other kind is reported before the write is sent or by Redis refusing
    /// it, so nothing changed. [`ErrorKind::Other`] is counted as "may have" to be safe.
    pub fn may_have_applied(&self) -> bool {
        match self.kind {
            ErrorKind::Connection
            | ErrorKind::Timeout
            | ErrorKind::Protocol
            | ErrorKind::Other
            | ErrorKind::Host => true,
            ErrorKind::Authentication
            | ErrorKind::Server
            | ErrorKind::InvalidInput
            | ErrorKind::CorruptData
            | ErrorKind::Conflict
            | ErrorKind::Contended => false,
        }
    }

    /// The same error with each of `secrets` in its message replaced by `***`
    /// ([`crate::redact::redact_secrets`]); a conflict's document is the caller's data and is
    /// returned untouched.
    pub fn redact(self, secrets: &[String]) -> TaskError {
        if self.kind == ErrorKind::Conflict {
            return self;
        }
        TaskError {
            kind: self.kind,
            message: crate::redact::redact_secrets(self.message, secrets),
        }
    }

    /// The same error with its message prefixed by what was being done (`setting task t1: `).
    pub fn context(self, what: &str) -> TaskError {
        if self.kind == ErrorKind::Conflict {
            return self;
        }
        TaskError {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for TaskError {
    /// One line: `<description>: <message>`, whatever the message holds (callers log these,
    /// and a CLI prints them as `taskstore: <error>`): each control character is shown as a
    /// space. A conflict does not print its document.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == ErrorKind::Conflict {
            return f.write_str("conflict: the task's status does not match the expected one");
        }
        write!(f, "{}: ", self.kind.description())?;
        for c in self.message.chars() {
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

/// What a Redis error reply says, by its first word: the codes this project acts on, each
/// named once. Codes it does not act on are [`RedisErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedisErrorCode {
    /// `MOVED <slot> <host>:<port>`: the slot lives on another cluster node.
    Moved,
    /// `ASK <slot> <host>:<port>`: the slot is migrating; ask the target once.
    Ask,
    /// `TRYAGAIN`: a multi-key command hit a slot in the middle of a migration.
    TryAgain,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot right now.
    ClusterDown,
    /// `LOADING`: the server is loading its dataset into memory.
    Loading,
    /// `BUSY`: a script is running.
    Busy,
    /// `MASTERDOWN`: a replica lost its master and refuses stale reads.
    MasterDown,
    /// `READONLY`: a write reached a replica (typically mid-failover).
    ReadOnly,
    /// `OOM`: the server is at `maxmemory` and refuses writes.
    OutOfMemory,
    /// `NOAUTH`: the server requires a password that was not given.
    NoAuth,
    /// `WRONGPASS`: the user name or password is wrong.
    WrongPass,
    /// `NOPERM`: the ACL user may not run this command or touch this key.
    NoPerm,
    /// `WRONGTYPE`: the key holds another type than a string.
    WrongType,
    /// `EXECABORT`: a transaction was discarded because a queued command was rejected.
    ExecAbort,
    /// Any other code (`ERR ...` included).
    Other,
}

impl RedisErrorCode {
    /// Classifies an error reply's text (without the leading `-`).
    pub fn of(reply_text: &str) -> RedisErrorCode {
        let code = reply_text.split(' ').next().unwrap_or("");
        match code {
            "MOVED" => RedisErrorCode::Moved,
            "ASK" => RedisErrorCode::Ask,
            "TRYAGAIN" => RedisErrorCode::TryAgain,
            "CLUSTERDOWN" => RedisErrorCode::ClusterDown,
            "LOADING" => RedisErrorCode::Loading,
            "BUSY" => RedisErrorCode::Busy,
            "MASTERDOWN" => RedisErrorCode::MasterDown,
            "READONLY" => RedisErrorCode::ReadOnly,
            "OOM" => RedisErrorCode::OutOfMemory,
            "NOAUTH" => RedisErrorCode::NoAuth,
            "WRONGPASS" => RedisErrorCode::WrongPass,
            "NOPERM" => RedisErrorCode::NoPerm,
            "WRONGTYPE" => RedisErrorCode::WrongType,
            "EXECABORT" => RedisErrorCode::ExecAbort,
            _ => RedisErrorCode::Other,
        }
    }

    /// A cluster redirect (`MOVED` or `ASK`), followed by the cluster client itself.
    pub fn is_redirect(self) -> bool {
        matches!(self, RedisErrorCode::Moved | RedisErrorCode::Ask)
    }

    /// Refused credentials or permissions: reported as [`ErrorKind::Authentication`].
    pub fn is_authentication(self) -> bool {
        matches!(
            self,
            RedisErrorCode::NoAuth | RedisErrorCode::WrongPass | RedisErrorCode::NoPerm
        )
    }

    /// A passing state of the server rather than of the request: the same command may
    /// succeed once it passes (HTTP `503` with `Retry-After` in the research API).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            RedisErrorCode::TryAgain
                | RedisErrorCode::ClusterDown
                | RedisErrorCode::Loading
                | RedisErrorCode::Busy
                | RedisErrorCode::MasterDown
                | RedisErrorCode::ReadOnly
                | RedisErrorCode::OutOfMemory
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_names_are_distinct_and_in_kebab_case() {
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|kind| kind.wit_name()).collect();
        assert!(names
            .iter()
            .all(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '-')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn display_is_one_line_with_the_kind_first() {
        let error = TaskError::connection("cannot connect to 127.0.0.1:1: refused");
        assert_eq!(
            error.to_string(),
            "connection failed: cannot connect to 127.0.0.1:1: refused"
        );
        assert_eq!(error.kind(), ErrorKind::Connection);
        assert_eq!(error.message(), "cannot connect to 127.0.0.1:1: refused");
    }

    #[test]
    fn a_conflict_carries_the_document_and_does_not_print_it() {
        let document = r#"{"status":"done","secret-ish":"data"}"#;
        let error = TaskError::conflict(document);
        assert_eq!(error.current_document(), Some(document));
        assert!(!error.to_string().contains("secret-ish"), "{error}");
        // Neither redaction nor context touches the caller's data.
        let redacted = error.clone().redact(&["data".into()]);
        assert_eq!(redacted.current_document(), Some(document));
        assert_eq!(error.clone().context("updating").message(), document);
        assert_eq!(TaskError::timeout("t").current_document(), None);
    }

    #[test]
    fn redis_error_codes_are_read_from_the_first_word_only() {
        assert_eq!(
            RedisErrorCode::of("MOVED 3999 127.0.0.1:6381"),
            RedisErrorCode::Moved
        );
        assert_eq!(RedisErrorCode::of("ASK 1 h:1"), RedisErrorCode::Ask);
        assert_eq!(RedisErrorCode::of("ASKING"), RedisErrorCode::Other);
        assert_eq!(RedisErrorCode::of("ERR LOADING"), RedisErrorCode::Other);
        assert_eq!(
            RedisErrorCode::of("LOADING Redis is loading"),
            RedisErrorCode::Loading
        );
        assert_eq!(RedisErrorCode::of(""), RedisErrorCode::Other);
        assert!(RedisErrorCode::of("READONLY You can't write").is_transient());
        assert!(RedisErrorCode::of("WRONGPASS invalid").is_authentication());
        assert!(!RedisErrorCode::of("WRONGTYPE Operation").is_transient());
    }

    #[test]
    fn every_code_is_read_and_each_question_names_exactly_its_codes() {
        use RedisErrorCode::*;
        let table = [
            ("MOVED 1 h:1", Moved),
            ("ASK 1 h:1", Ask),
            (
                "TRYAGAIN Multiple keys request during rehashing of slot",
                TryAgain,
            ),
            ("CLUSTERDOWN The cluster is down", ClusterDown),
            ("LOADING Redis is loading the dataset in memory", Loading),
            ("BUSY Redis is busy running a script", Busy),
            ("MASTERDOWN Link with MASTER is down", MasterDown),
            (
                "READONLY You can't write against a read only replica.",
                ReadOnly,
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                OutOfMemory,
            ),
            ("NOAUTH Authentication required.", NoAuth),
            ("WRONGPASS invalid username-password pair", WrongPass),
            ("NOPERM this user has no permissions", NoPerm),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                WrongType,
            ),
            (
                "EXECABORT Transaction discarded because of previous errors.",
                ExecAbort,
            ),
            ("ERR unknown command", Other),
        ];
        for (text, code) in table {
            assert_eq!(RedisErrorCode::of(text), code, "{text}");
            assert_eq!(code.is_redirect(), matches!(code, Moved | Ask), "{code:?}");
            assert_eq!(
                code.is_authentication(),
                matches!(code, NoAuth | WrongPass | NoPerm),
                "{code:?}"
            );
            assert_eq!(
                code.is_transient(),
                matches!(
                    code,
                    TryAgain | ClusterDown | Loading | Busy | MasterDown | ReadOnly | OutOfMemory
                ),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_kind_displays_as_its_wit_name_and_the_message_can_be_taken() {
        assert_eq!(ErrorKind::InvalidInput.to_string(), "invalid-input");
        assert_eq!(TaskError::protocol("bad reply").into_message(), "bad reply");
    }

    #[test]
    fn retry_and_applied_questions_follow_the_kind() {
        assert!(TaskError::timeout("t").is_retryable());
        assert!(TaskError::timeout("t").may_have_applied());
        assert!(TaskError::server("LOADING Redis is loading").is_retryable());
        assert!(!TaskError::server("WRONGTYPE Operation").is_retryable());
        assert!(!TaskError::server("LOADING Redis is loading").may_have_applied());
        assert!(!TaskError::invalid_input("bad id").is_retryable());
        assert!(!TaskError::invalid_input("bad id").may_have_applied());
        assert!(!TaskError::conflict("{}").is_retryable());
        assert!(TaskError::contended("100 attempts").is_retryable());
        assert!(!TaskError::contended("100 attempts").may_have_applied());
        assert!(TaskError::host("trapped").may_have_applied());
        assert_eq!(
            TaskError::server("MOVED 1 h:1").redis_code(),
            Some(RedisErrorCode::Moved)
        );
        assert_eq!(TaskError::connection("MOVED 1 h:1").redis_code(), None);
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_kind() {
        let error = TaskError::timeout("no reply within 5000 ms").context("reading task t1");
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert_eq!(error.message(), "reading task t1: no reply within 5000 ms");
    }
}
