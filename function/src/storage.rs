//! The seam between the HTTP logic and the task store: plain Rust types mirroring the part of
//! `taskstore:storage/task-storage` this function uses, so the logic runs natively over a fake.

use std::fmt;

/// Why a storage call failed: the WIT `error` variant, case for case. Each message is the
/// store's, which by contract never contains a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    Connection(String),
    Timeout(String),
    Authentication(String),
    Protocol(String),
    Server(String),
    InvalidInput(String),
    CorruptData(String),
    /// Carries the task's current document.
    Conflict(String),
    Contended(String),
    Other(String),
}

impl StorageError {
    /// The WIT case name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::Connection(_) => "connection",
            StorageError::Timeout(_) => "timeout",
            StorageError::Authentication(_) => "authentication",
            StorageError::Protocol(_) => "protocol",
            StorageError::Server(_) => "server",
            StorageError::InvalidInput(_) => "invalid-input",
            StorageError::CorruptData(_) => "corrupt-data",
            StorageError::Conflict(_) => "conflict",
            StorageError::Contended(_) => "contended",
            StorageError::Other(_) => "other",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StorageError::Connection(message)
            | StorageError::Timeout(message)
            | StorageError::Authentication(message)
            | StorageError::Protocol(message)
            | StorageError::Server(message)
            | StorageError::InvalidInput(message)
            | StorageError::CorruptData(message)
            | StorageError::Conflict(message)
            | StorageError::Contended(message)
            | StorageError::Other(message) => message,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A conflict's payload is a whole document, not a message.
            StorageError::Conflict(_) => f.write_str("conflict: the task's status did not match"),
            other => write!(f, "{}: {}", other.kind(), other.message()),
        }
    }
}

/// One stored task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTask {
    pub id: String,
    pub document: String,
}

/// One page of a listing; `cursor` is `None` once the listing is over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub tasks: Vec<StoredTask>,
    pub cursor: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<String>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// The task store, as the HTTP logic needs it. Semantics are those of the WIT functions of
/// the same names; TTLs are always the store's defaults (creation) or kept (updates).
pub trait TaskStorage {
    /// `Ok(None)`: no such task.
    fn get(&mut self, id: &str) -> Result<Option<String>, StorageError>;
    /// Create-if-absent. `Ok(false)`: a task with this id exists and nothing was written.
    fn create(&mut self, id: &str, document: &str) -> Result<bool, StorageError>;
    /// Atomic JSON merge patch; `Ok(None)`: no such task; `Err(Conflict(current))` when
    /// `expect_status` does not match.
    fn update(
        &mut self,
        id: &str,
        patch: &str,
        expect_status: Option<&str>,
    ) -> Result<Option<String>, StorageError>;
    /// `Ok(false)`: there was no such task.
    fn delete(&mut self, id: &str) -> Result<bool, StorageError>;
    fn list(&mut self, query: &ListQuery) -> Result<Page, StorageError>;
}
