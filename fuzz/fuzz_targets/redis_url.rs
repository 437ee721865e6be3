//! URL parsing never panics, and neither its errors, the parsed URL's `Debug` nor
//! `redact_url` show the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskstore::config::{redact_url, RedisUrl};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = RedisUrl::parse(text);
    // The raw password as written: after the scheme, up to the authority's last '@',
    // after the first ':'.
    let Some((_, rest)) = text.split_once("://") else {
        return;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return;
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return;
    };
    // A password that also occurs elsewhere in the URL (say "127" with host 127.0.0.1)
    // may legitimately show up through that other part, and one with a '*' may be spelled
    // by the `***` mask next to such a part.
    let elsewhere = text.replacen(password, "", 1);
    if password.chars().count() < 4 || elsewhere.contains(password) || password.contains('*') {
        return;
    }
    let mut shown = vec![redact_url(text)];
    match &parsed {
        Ok(url) => {
            shown.push(format!("{url:?}"));
            if let Some(credentials) = &url.credentials {
                let decoded = credentials.password.expose();
                if decoded.chars().count() >= 4 && !elsewhere.contains(decoded) {
                    for text in &shown {
                        assert!(!text.contains(decoded), "{text}");
                    }
                }
            }
        }
        Err(error) => shown.push(error.to_string()),
    }
    for text in &shown {
        assert!(!text.contains(password), "{text}");
    }
});
