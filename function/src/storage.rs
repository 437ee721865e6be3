//! The seam between the HTTP logic and the task store: plain Rust types mirroring the part of
//! `taskstore:storage/task-storage` this function uses, so the logic runs natively over a fake.
//! A storage call fails with the shared model's [`TaskError`] (the WIT `error`, kind and
//! message; each message is the store's, which by contract never contains a password).

use taskstore_model::TaskError;

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
    fn get(&mut self, id: &str) -> Result<Option<String>, TaskError>;
    /// Create-if-absent. `Ok(false)`: a task with this id exists and nothing was written.
    fn create(&mut self, id: &str, document: &str) -> Result<bool, TaskError>;
    /// Atomic JSON merge patch; `Ok(None)`: no such task; a conflict carrying the current
    /// document ([`TaskError::current_document`]) when `expect_status` does not match.
    fn update(
        &mut self,
        id: &str,
        patch: &str,
        expect_status: Option<&str>,
    ) -> Result<Option<String>, TaskError>;
    /// `Ok(false)`: there was no such task.
    fn delete(&mut self, id: &str) -> Result<bool, TaskError>;
    fn list(&mut self, query: &ListQuery) -> Result<Page, TaskError>;
    /// One round trip to Redis: `Ok` when it answered in time.
    fn ping(&mut self) -> Result<(), TaskError>;
}
