//! The store's option defaults and bounds, as the WIT `options` record documents them: one
//! definition for the component, which enforces them, and for every configuration surface in
//! front of it (the HTTP function's config keys, the CLI), which checks them early.

/// Keys are `<prefix><id>`; the original service's prefix.
pub const DEFAULT_KEY_PREFIX: &str = "research_task:";
/// 7 days, as the original service's `SETEX` used.
pub const DEFAULT_TTL_SECONDS: u64 = 604_800;
/// 100 years: anything longer is a mistake, not a TTL.
pub const MAX_TTL_SECONDS: u64 = 3_153_600_000;
pub const DEFAULT_TIMEOUT_MS: u32 = 5_000;
/// One hour.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// The store's `max-document-bytes` when the options leave it unset (16 MiB).
pub const DEFAULT_MAX_DOCUMENT_BYTES: u32 = 16 * 1024 * 1024;
/// The smallest `max-document-bytes`: `{}` is two bytes.
pub const MIN_DOCUMENT_BYTES_LIMIT: u32 = 2;
/// The largest `max-document-bytes` any caller may choose: Redis's own `proto-max-bulk-len`
/// default, beyond which Redis would refuse the value anyway.
pub const MAX_DOCUMENT_BYTES_LIMIT: u32 = 512 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_are_the_documented_ones() {
        // As the WIT's `options` record and the README state them.
        assert_eq!(DEFAULT_KEY_PREFIX, "research_task:");
        assert_eq!(DEFAULT_TTL_SECONDS, 7 * 24 * 3600);
        assert_eq!(MAX_TTL_SECONDS, 3_153_600_000);
        assert_eq!(DEFAULT_TIMEOUT_MS, 5000);
        assert_eq!(MAX_TIMEOUT_MS, 3_600_000);
        assert_eq!(DEFAULT_MAX_DOCUMENT_BYTES, 16_777_216);
        assert_eq!(MIN_DOCUMENT_BYTES_LIMIT, 2);
        assert_eq!(MAX_DOCUMENT_BYTES_LIMIT, 536_870_912);
    }
}
