//! Test doubles: an in-memory task store with the WIT semantics this crate relies on, and an
//! environment with a scripted config, clock, RNG and body.

use std::collections::BTreeMap;

use serde_json::Value;
use taskstore_model::document::{merge_patch, top_level_status};
use taskstore_model::TaskError;

use crate::request::{read_capped, BodyError};
use crate::service::Environment;
use crate::settings::Settings;
use crate::storage::{ListQuery, Page, StoredTask, TaskStorage};

#[derive(Debug, Default)]
pub struct FakeStorage {
    pub tasks: BTreeMap<String, String>,
    /// Returned by the next call instead of doing anything.
    pub fail_next: Option<TaskError>,
    /// The operations called, in order (`"create <id>"`, ...).
    pub calls: Vec<String>,
}

impl FakeStorage {
    fn begin(&mut self, call: String) -> Result<(), TaskError> {
        self.calls.push(call);
        match self.fail_next.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl TaskStorage for FakeStorage {
    fn get(&mut self, id: &str) -> Result<Option<String>, TaskError> {
        self.begin(format!("get {id}"))?;
        Ok(self.tasks.get(id).cloned())
    }

    fn create(&mut self, id: &str, document: &str) -> Result<bool, TaskError> {
        self.begin(format!("create {id}"))?;
        if self.tasks.contains_key(id) {
            return Ok(false);
        }
        self.tasks.insert(id.to_string(), document.to_string());
        Ok(true)
    }

    fn update(
        &mut self,
        id: &str,
        patch: &str,
        expect_status: Option<&str>,
    ) -> Result<Option<String>, TaskError> {
        self.begin(format!("update {id}"))?;
        let Some(current) = self.tasks.get(id) else {
            return Ok(None);
        };
        // As the store: a stored value that is not a JSON object cannot be patched.
        if !matches!(serde_json::from_str(current), Ok(Value::Object(_))) {
            return Err(TaskError::corrupt_data("not a JSON object"));
        }
        if let Some(expected) = expect_status {
            if top_level_status(current).as_deref() != Some(expected) {
                return Err(TaskError::conflict(current.clone()));
            }
        }
        // The store's own merge (RFC 7386, key order and untouched members kept).
        let text = merge_patch(current, patch).map_err(|err| TaskError::invalid_input(err.0))?;
        self.tasks.insert(id.to_string(), text.clone());
        Ok(Some(text))
    }

    fn delete(&mut self, id: &str) -> Result<bool, TaskError> {
        self.begin(format!("delete {id}"))?;
        Ok(self.tasks.remove(id).is_some())
    }

    fn ping(&mut self) -> Result<(), TaskError> {
        self.begin("ping".to_string())
    }

    /// Pages in id order; the cursor is the next id to visit.
    fn list(&mut self, query: &ListQuery) -> Result<Page, TaskError> {
        self.begin(format!(
            "list {:?} {} {:?}",
            query.status, query.limit, query.cursor
        ))?;
        let start = query.cursor.clone().unwrap_or_default();
        let mut page = Page::default();
        for (id, document) in self.tasks.range(start..) {
            if page.tasks.len() == query.limit as usize {
                page.cursor = Some(id.clone());
                break;
            }
            let status = serde_json::from_str::<Value>(document)
                .ok()
                .and_then(|value| {
                    value
                        .get("status")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            if query.status.is_none() || status == query.status {
                page.tasks.push(StoredTask {
                    id: id.clone(),
                    document: document.clone(),
                });
            }
        }
        Ok(page)
    }
}

pub struct FakeEnvironment {
    pub config: BTreeMap<String, String>,
    /// Makes every config lookup fail with this message.
    pub config_error: Option<String>,
    /// Makes the next `open` fail.
    pub open_error: Option<TaskError>,
    /// The store the next successful `open` returns.
    pub next_storage: Option<FakeStorage>,
    pub opened: Vec<Settings>,
    pub body: Vec<u8>,
    pub body_reads: usize,
    pub body_error: Option<BodyError>,
    pub now: (u64, u32),
    /// Byte `n` of the `k`-th random draw is `random_seed + k`.
    pub random_seed: u8,
    pub random_draws: u8,
    pub logs: Vec<String>,
}

impl FakeEnvironment {
    pub fn new() -> FakeEnvironment {
        FakeEnvironment {
            config: BTreeMap::from([(
                "redis-url".to_string(),
                "redis://:s3cret@10.1.2.3:6379".to_string(),
            )]),
            config_error: None,
            open_error: None,
            next_storage: None,
            opened: Vec::new(),
            body: Vec::new(),
            body_reads: 0,
            body_error: None,
            now: (1_709_210_096, 123_456_789),
            random_seed: 0x11,
            random_draws: 0,
            logs: Vec::new(),
        }
    }
}

impl Environment for FakeEnvironment {
    type Storage = FakeStorage;

    fn config(&mut self, key: &str) -> Result<Option<String>, String> {
        match &self.config_error {
            Some(message) => Err(message.clone()),
            None => Ok(self.config.get(key).cloned()),
        }
    }

    fn open(&mut self, settings: &Settings) -> Result<FakeStorage, TaskError> {
        if let Some(err) = self.open_error.take() {
            return Err(err);
        }
        self.opened.push(settings.clone());
        Ok(self.next_storage.take().unwrap_or_default())
    }

    fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        self.body_reads += 1;
        if let Some(err) = self.body_error.take() {
            return Err(err);
        }
        read_capped(&self.body[..], limit)
    }

    fn now(&mut self) -> (u64, u32) {
        self.now
    }

    fn random_bytes(&mut self) -> [u8; 16] {
        let byte = self.random_seed.wrapping_add(self.random_draws);
        self.random_draws = self.random_draws.wrapping_add(1);
        [byte; 16]
    }

    fn log(&mut self, line: &str) {
        self.logs.push(line.to_string());
    }
}
