//! URL parsing never panics, and no part of a password ever shows in its errors, the parsed
//! URL's `Debug` or `redact_url` (the oracle is `taskstore::config::text_showing_password`,
//! which a property test in `src/config.rs` also runs in CI).
//!
//! Input: password bytes, a 0xFF byte, then the rest of the URL (anything). Each password
//! byte picks one character from an alphabet no message template holds, so any three of
//! them in a message can only have come from the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskstore::config::{text_showing_password, RedisUrl};

const PASSWORD_CHARS: &[char] = &['Ж', 'ß', 'λ', 'Я', '€', '/', '@', ':', '#', '?', '%', 'é'];

fuzz_target!(|data: &[u8]| {
    let (password_bytes, rest) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    // Arbitrary text alone must never panic the parser.
    let _ = RedisUrl::parse(rest);
    if password_bytes.is_empty() {
        return;
    }
    let password: String = password_bytes
        .iter()
        .map(|&b| PASSWORD_CHARS[usize::from(b) % PASSWORD_CHARS.len()])
        .collect();
    // `rest` chooses scheme, user, hosts and tail: everything before its first '@' is the
    // scheme and user (`redis://user`), the remainder follows the password's '@'.
    let (front, back) = rest.split_once('@').unwrap_or(("redis://", rest));
    let url = format!("{front}:{password}@{back}");
    if let Some(text) = text_showing_password(&url, &password) {
        panic!("{url} shows its password in: {text}");
    }
});
