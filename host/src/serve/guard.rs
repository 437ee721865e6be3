//! Who may send requests: the API key (bearer token) and the `Host` allow-list, both checked
//! on the host before a request reads its body or takes an instance slot.

use std::net::SocketAddr;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Environment variable `taskstore serve` reads the API key from when no `--api-key-file` is
/// given. (Never a command-line value: `ps` shows those to every user of the machine.)
pub const API_KEY_ENV: &str = "TASKSTORE_API_KEY";

/// The bearer token clients must present. Only its SHA-256 digest is kept: comparing digests
/// takes the same time whatever the presented token's length or content.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// A key from its text; one trailing line break (as an editor or `echo` leaves) is dropped.
    ///
    /// # Errors
    /// The key is empty, or holds characters a `Bearer` token cannot carry (RFC 6750's
    /// `b64token`: letters, digits, `-._~+/`, trailing `=`). The message never quotes the key.
    pub fn new(text: &str) -> anyhow::Result<ApiKey> {
        let key = text
            .strip_suffix('\n')
            .map(|key| key.strip_suffix('\r').unwrap_or(key))
            .unwrap_or(text);
        anyhow::ensure!(!key.is_empty(), "the API key is empty");
        let body = key.trim_end_matches('=');
        anyhow::ensure!(
            !body.is_empty()
                && body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
            "the API key may hold only letters, digits and -._~+/ (then = padding)"
        );
        Ok(ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// The key stored in the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or as [`ApiKey::new`].
    pub fn from_file(path: &Path) -> anyhow::Result<ApiKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the API key file {}: {e}", path.display()))?;
        ApiKey::new(&text).map_err(|e| anyhow::anyhow!("the API key file {}: {e}", path.display()))
    }

    /// Whether `authorization` (the header's value) is `Bearer <this key>`.
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> Authorization {
        let Some(value) = authorization else {
            return Authorization::Missing;
        };
        let token = match value.split_first_chunk::<7>() {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => return Authorization::Invalid,
        };
        let presented: [u8; 32] = Sha256::digest(token).into();
        match bool::from(presented.ct_eq(&self.digest)) {
            true => Authorization::Admitted,
            false => Authorization::Invalid,
        }
    }
}

/// The outcome of checking a request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authorization {
    Admitted,
    /// No `Authorization` header.
    Missing,
    /// Not a bearer token, or not the key.
    Invalid,
}

/// Host names (no port) requests may address. A browser on the user's machine sends the name
/// it resolved in `Host`: a page whose own name is rebound to 127.0.0.1 (DNS rebinding)
/// reaches the server with its name there, and is refused.
#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// `localhost`, the listen address (unless it is the unspecified address, which no client
    /// names) and `extra`.
    pub(crate) fn new(listen: SocketAddr, extra: &[String]) -> AllowedHosts {
        let mut names = vec!["localhost".to_owned()];
        if !listen.ip().is_unspecified() {
            // `SocketAddr` prints an IPv6 address in brackets, as `Host` carries it.
            let address = listen.to_string();
            if let Some(host) = strip_port(&address) {
                names.push(host.to_ascii_lowercase());
            }
        }
        names.extend(extra.iter().map(|name| name.to_ascii_lowercase()));
        AllowedHosts { names }
    }

    /// Whether `authority` (`host[:port]`, from `Host` or an absolute request URI) names an
    /// allowed host. The port is not compared: a rebinding page names its own host.
    pub(crate) fn admits(&self, authority: &str) -> bool {
        strip_port(authority).is_some_and(|host| {
            self.names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(host))
        })
    }
}

/// The host part of `host[:port]` or `[v6][:port]`; `None` when malformed.
fn strip_port(authority: &str) -> Option<&str> {
    let authority = authority.trim();
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let rest = &authority[end + 1..];
        let well_formed = rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port);
        return well_formed.then(|| &authority[..=end]);
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if is_port(port) && !host.contains(':') => host,
        Some(_) => return None,
        None => authority,
    };
    (!host.is_empty()).then_some(host)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let key = ApiKey::new("s3cr3t-Token_1\n").unwrap();
        assert_eq!(
            key.admits(Some(b"Bearer s3cr3t-Token_1")),
            Authorization::Admitted
        );
        assert_eq!(
            key.admits(Some(b"bearer  s3cr3t-Token_1 ")),
            Authorization::Admitted
        );
        for wrong in [
            &b"Bearer s3cr3t-Token_"[..],
            b"Bearer s3cr3t-Token_1x",
            b"Basic s3cr3t-Token_1",
            b"s3cr3t-Token_1",
            b"Bearer",
            b"",
        ] {
            assert_eq!(key.admits(Some(wrong)), Authorization::Invalid, "{wrong:?}");
        }
        assert_eq!(key.admits(None), Authorization::Missing);
    }

    #[test]
    fn unusable_keys_are_refused_without_being_quoted() {
        for bad in ["", "\n", "two words", "tab\there", "==", "é"] {
            let err = ApiKey::new(bad).unwrap_err().to_string();
            assert!(bad.trim().is_empty() || !err.contains(bad), "{err}");
        }
        assert!(!format!("{:?}", ApiKey::new("hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn hosts_are_matched_by_name_whatever_the_port() {
        let hosts = AllowedHosts::new("127.0.0.1:8080".parse().unwrap(), &["API.example".into()]);
        for allowed in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "api.example:443",
        ] {
            assert!(hosts.admits(allowed), "{allowed}");
        }
        for refused in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.:8080",
            "",
            ":8080",
            "127.0.0.1:80:80",
            "[::1]:8080",
        ] {
            assert!(!hosts.admits(refused), "{refused}");
        }
        let v6 = AllowedHosts::new("[::1]:0".parse().unwrap(), &[]);
        assert!(v6.admits("[::1]:9000") && v6.admits("[::1]"));
        let any = AllowedHosts::new("0.0.0.0:80".parse().unwrap(), &[]);
        assert!(!any.admits("0.0.0.0:80") && any.admits("localhost"));
    }
}
