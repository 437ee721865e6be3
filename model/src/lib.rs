//! The task model every taskstore crate shares — the component (`taskstore`), its host
//! (`taskstore-host`) and the HTTP function (`research-api`) — so that none re-states it.
//! Pure: no I/O, no WebAssembly bindings; everything here builds and is tested natively.
//!
//! # Layout
//! - [`error`]: [`TaskError`] = [`ErrorKind`] (the WIT `error` cases) + message, with
//!   `is_retryable()` / `may_have_applied()`; [`RedisErrorCode`], Redis's error replies
//!   classified once.
//! - [`id`]: the task id rule.
//! - [`limits`]: the store options' defaults and bounds.
//! - [`document`]: JSON document validation, top-level status, order-preserving merge patch.
//! - [`redact`]: the one redactor of secrets in messages and logs.

pub mod document;
pub mod error;
pub mod id;
pub mod limits;
pub mod redact;

pub use error::{ErrorKind, RedisErrorCode, TaskError};
pub use id::{validate_id, MAX_ID_BYTES};
