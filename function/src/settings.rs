//! The function's settings, read from `wasi:config/store` and parsed strictly: a malformed
//! value is an error naming the key, never a silent default. No message quotes a value, so the
//! Redis URL (and the password in it) never reaches a response or a log.

use std::fmt;

use taskstore_model::limits;

/// `max-document-bytes` when the key is unset: the largest request body read and the largest
/// document created (1 MiB). Lower than the store's own default
/// ([`limits::DEFAULT_MAX_DOCUMENT_BYTES`], 16 MiB) because this function
/// runs in a small instance (64 MiB under `taskstore serve`) that holds several copies of a
/// document while serving it; see [`Settings::min_memory_bytes`].
pub const DEFAULT_MAX_DOCUMENT_BYTES: u32 = 1024 * 1024;

/// Copies of a largest document the function and the store may hold at once in one linear
/// memory (the body, its growth while being read, the parsed members, the new document, a
/// merge's input and output, the reply), and the memory the code needs besides (data,
/// stack, allocator slack). Measured: a 1 MiB document of 60,000 members needs 10 MiB to be
/// created, read, patched and listed (8 MiB fails in the patch); 8 copies + 4 MiB = 12 MiB
/// leaves a fifth to spare. Checked by `serve::a_document_of_the_largest_size_fits_the_
/// smallest_allowed_memory` (the CLI tests, `cli/tests/cli/serve.rs`).
const DOCUMENT_COPIES_IN_MEMORY: usize = 8;
const BASE_MEMORY_BYTES: usize = 4 * 1024 * 1024;

/// Config keys, as the host's `wasi:config/store` names them.
pub const REDIS_URL: &str = "redis-url";
pub const KEY_PREFIX: &str = "key-prefix";
pub const TIMEOUT_MS: &str = "timeout-ms";
pub const DEFAULT_TTL_SECONDS: &str = "default-ttl-seconds";
pub const MAX_DOCUMENT_BYTES: &str = "max-document-bytes";
pub const TLS_CA_CERTIFICATES: &str = "tls-ca-certificates";
pub const DANGER_ACCEPT_INVALID_CERTIFICATES: &str = "danger-accept-invalid-certificates";
/// `scan` (the default) or `index`: how listing by status finds tasks (the WIT
/// `listing-mode`).
pub const LISTING: &str = "listing";

/// Everything the function reads from its configuration. Unset optional keys are `None`,
/// meaning the store's documented default.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub redis_url: String,
    pub key_prefix: Option<String>,
    pub timeout_ms: Option<u32>,
    pub default_ttl_seconds: Option<u64>,
    pub max_document_bytes: Option<u32>,
    /// PEM text of the CA certificates trusted for `rediss://` (instead of the web roots).
    pub tls_ca_certificates: Option<String>,
    /// Development only: accept any server certificate over `rediss://`.
    pub danger_accept_invalid_certificates: Option<bool>,
    /// `Some(true)`: list by status through the status index (`listing = index`).
    pub listing_by_index: Option<bool>,
}

// Hand-written so that no `{:?}` can ever print the URL.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("redis_url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("default_ttl_seconds", &self.default_ttl_seconds)
            .field("max_document_bytes", &self.max_document_bytes)
            .field(
                "tls_ca_certificates",
                &self.tls_ca_certificates.as_ref().map(String::len),
            )
            .field(
                "danger_accept_invalid_certificates",
                &self.danger_accept_invalid_certificates,
            )
            .field("listing_by_index", &self.listing_by_index)
            .finish()
    }
}

/// Why the settings could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// A required key is not set (or is empty).
    Missing(&'static str),
    /// A key is set to a value this function does not accept.
    Invalid {
        key: &'static str,
        expected: &'static str,
    },
    /// A numeric key is not plain decimal digits, or is outside the store's documented range.
    OutOfRange {
        key: &'static str,
        min: u64,
        max: u64,
    },
    /// The config source itself failed; `message` is the host's and is for logs only.
    Unavailable { key: &'static str, message: String },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Missing(key) => write!(f, "config key `{key}` is not set"),
            SettingsError::Invalid { key, expected } => {
                write!(f, "config key `{key}` must be {expected}")
            }
            SettingsError::OutOfRange { key, min, max } => {
                write!(
                    f,
                    "config key `{key}` must be an integer from {min} to {max}"
                )
            }
            SettingsError::Unavailable { key, .. } => {
                write!(f, "the config source failed to read `{key}`")
            }
        }
    }
}

impl Settings {
    /// Reads every key through `lookup` (one `wasi:config/store.get` each).
    ///
    /// Errors: `Missing` when `redis-url` is unset or empty; `Invalid` for a number that is
    /// not plain decimal digits or is outside the store's documented range; `Unavailable` when
    /// `lookup` fails.
    pub fn load(
        mut lookup: impl FnMut(&str) -> Result<Option<String>, String>,
    ) -> Result<Settings, SettingsError> {
        let mut get = |key: &'static str| {
            lookup(key).map_err(|message| SettingsError::Unavailable { key, message })
        };
        let redis_url = match get(REDIS_URL)? {
            Some(url) if !url.is_empty() => url,
            _ => return Err(SettingsError::Missing(REDIS_URL)),
        };
        let key_prefix = get(KEY_PREFIX)?;
        let timeout_ms = parse_in_range(
            TIMEOUT_MS,
            get(TIMEOUT_MS)?,
            1,
            u64::from(limits::MAX_TIMEOUT_MS),
        )?;
        let default_ttl_seconds = parse_in_range(
            DEFAULT_TTL_SECONDS,
            get(DEFAULT_TTL_SECONDS)?,
            1,
            limits::MAX_TTL_SECONDS,
        )?;
        let max_document_bytes = parse_in_range(
            MAX_DOCUMENT_BYTES,
            get(MAX_DOCUMENT_BYTES)?,
            u64::from(limits::MIN_DOCUMENT_BYTES_LIMIT),
            u64::from(limits::MAX_DOCUMENT_BYTES_LIMIT),
        )?;
        let tls_ca_certificates = get(TLS_CA_CERTIFICATES)?;
        let danger_accept_invalid_certificates =
            match get(DANGER_ACCEPT_INVALID_CERTIFICATES)?.as_deref() {
                None => None,
                Some("true") => Some(true),
                Some("false") => Some(false),
                Some(_) => {
                    return Err(SettingsError::Invalid {
                        key: DANGER_ACCEPT_INVALID_CERTIFICATES,
                        expected: "true or false",
                    })
                }
            };
        let listing_by_index = match get(LISTING)?.as_deref() {
            None => None,
            Some("scan") => Some(false),
            Some("index") => Some(true),
            Some(_) => {
                return Err(SettingsError::Invalid {
                    key: LISTING,
                    expected: "scan or index",
                })
            }
        };
        Ok(Settings {
            redis_url,
            key_prefix,
            timeout_ms: timeout_ms.map(narrow_u32),
            default_ttl_seconds,
            max_document_bytes: max_document_bytes.map(narrow_u32),
            tls_ca_certificates,
            danger_accept_invalid_certificates,
            listing_by_index,
        })
    }

    /// The largest request body read, and the largest document created: the store's
    /// `max-document-bytes`.
    pub fn max_document_bytes(&self) -> usize {
        usize::try_from(
            self.max_document_bytes
                .unwrap_or(DEFAULT_MAX_DOCUMENT_BYTES),
        )
        .unwrap_or(usize::MAX)
    }

    /// The smallest linear-memory limit an instance needs to serve documents of
    /// [`Settings::max_document_bytes`]: a host checks it at startup, because an instance that
    /// runs out of memory mid-request traps and the client sees a `500` (possibly after the
    /// task was written).
    pub fn min_memory_bytes(&self) -> usize {
        self.max_document_bytes()
            .saturating_mul(DOCUMENT_COPIES_IN_MEMORY)
            .saturating_add(BASE_MEMORY_BYTES)
    }
}

/// Plain ASCII decimal digits only: `+5`, ` 5`, `5.0` and `0x5` are all rejected.
fn parse_in_range(
    key: &'static str,
    value: Option<String>,
    min: u64,
    max: u64,
) -> Result<Option<u64>, SettingsError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let invalid = SettingsError::OutOfRange { key, min, max };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid);
    }
    match value.parse::<u64>() {
        Ok(number) if (min..=max).contains(&number) => Ok(Some(number)),
        _ => Err(invalid),
    }
}

/// Only called on values already checked against a `u32` range.
fn narrow_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(|key| Ok(map.get(key).cloned()))
    }

    #[test]
    fn only_the_url_is_required() {
        let settings = load(&[(REDIS_URL, "redis://127.0.0.1:6379")]).unwrap();
        assert_eq!(settings.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(settings.key_prefix, None);
        assert_eq!(settings.timeout_ms, None);
        assert_eq!(settings.default_ttl_seconds, None);
        assert_eq!(settings.max_document_bytes, None);
        assert_eq!(settings.max_document_bytes(), 1024 * 1024);
    }

    #[test]
    fn the_default_document_limit_fits_the_default_serve_memory_with_room_to_spare() {
        let settings = load(&[(REDIS_URL, "redis://h")]).unwrap();
        assert!(settings.min_memory_bytes() <= (64 << 20) / 4);
        let large = load(&[(REDIS_URL, "redis://h"), (MAX_DOCUMENT_BYTES, "16777216")]).unwrap();
        assert!(large.min_memory_bytes() > (64 << 20));
    }

    #[test]
    fn every_key_is_read() {
        let settings = load(&[
            (REDIS_URL, "redis://:pw@127.0.0.1:6379/2"),
            (KEY_PREFIX, ""),
            (TIMEOUT_MS, "250"),
            (DEFAULT_TTL_SECONDS, "3153600000"),
            (MAX_DOCUMENT_BYTES, "4096"),
        ])
        .unwrap();
        assert_eq!(settings.key_prefix.as_deref(), Some(""));
        assert_eq!(settings.timeout_ms, Some(250));
        assert_eq!(settings.default_ttl_seconds, Some(3_153_600_000));
        assert_eq!(settings.max_document_bytes, Some(4096));
        assert_eq!(settings.max_document_bytes(), 4096);
    }

    #[test]
    fn listing_is_scan_or_index_and_nothing_else() {
        let url = (REDIS_URL, "redis://h");
        assert_eq!(load(&[url]).unwrap().listing_by_index, None);
        assert_eq!(
            load(&[url, (LISTING, "scan")]).unwrap().listing_by_index,
            Some(false)
        );
        assert_eq!(
            load(&[url, (LISTING, "index")]).unwrap().listing_by_index,
            Some(true)
        );
        for bad in ["", "Index", "indexed"] {
            assert_eq!(
                load(&[url, (LISTING, bad)]),
                Err(SettingsError::Invalid {
                    key: LISTING,
                    expected: "scan or index"
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_or_empty_url_is_an_error() {
        assert_eq!(load(&[]), Err(SettingsError::Missing(REDIS_URL)));
        assert_eq!(
            load(&[(REDIS_URL, "")]),
            Err(SettingsError::Missing(REDIS_URL))
        );
    }

    #[test]
    fn numbers_must_be_plain_decimal_within_range() {
        for (key, bad) in [
            (TIMEOUT_MS, "0"),
            (TIMEOUT_MS, "3600001"),
            (TIMEOUT_MS, "+5"),
            (TIMEOUT_MS, " 5"),
            (TIMEOUT_MS, ""),
            (DEFAULT_TTL_SECONDS, "3153600001"),
            (DEFAULT_TTL_SECONDS, "1e3"),
            (DEFAULT_TTL_SECONDS, "99999999999999999999999"),
            (MAX_DOCUMENT_BYTES, "1"),
            (MAX_DOCUMENT_BYTES, "536870913"),
            (MAX_DOCUMENT_BYTES, "-1"),
        ] {
            let err = load(&[(REDIS_URL, "redis://h"), (key, bad)]).unwrap_err();
            assert!(
                matches!(err, SettingsError::OutOfRange { key: k, .. } if k == key),
                "{key}={bad:?} gave {err:?}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = load(&[(REDIS_URL, "redis://h"), (MAX_DOCUMENT_BYTES, "1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `max-document-bytes` must be an integer from 2 to 536870912"
        );
    }

    #[test]
    fn config_source_failure_names_the_key_but_not_the_host_message() {
        let err = Settings::load(|key| {
            if key == TIMEOUT_MS {
                Err("vault sealed".to_string())
            } else {
                Ok(Some("redis://h".to_string()))
            }
        })
        .unwrap_err();
        assert_eq!(
            err,
            SettingsError::Unavailable {
                key: TIMEOUT_MS,
                message: "vault sealed".to_string()
            }
        );
        assert_eq!(
            err.to_string(),
            "the config source failed to read `timeout-ms`"
        );
    }

    #[test]
    fn debug_output_redacts_the_url() {
        let settings = load(&[(REDIS_URL, "redis://:hunter2@10.0.0.1")]).unwrap();
        let printed = format!("{settings:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("10.0.0.1"),
            "{printed}"
        );
    }
}
