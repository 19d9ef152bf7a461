//! The admin API's bearer token: a setting, read with the others, that the
//! admin listener checks.

use sha1::{Digest, Sha1};

/// The admin bearer token. Its `Debug` never shows it: the server's
/// settings are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token must be long enough that guessing it over the network is
    /// hopeless; `openssl rand -hex 32` gives 64 characters.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: &str) -> Result<Token, String> {
        let token = token.trim();
        if token.len() < Self::MIN_LEN {
            return Err(format!("the admin token must be at least {} characters", Self::MIN_LEN));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the admin token must be printable ASCII without spaces".into());
        }
        Ok(Token(token.to_string()))
    }

    /// Whether `given` is the token, in time that does not depend on where
    /// they differ: both are hashed to 20 bytes and every byte compared,
    /// so neither the length nor a common prefix shows in the timing.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (Sha1::digest(self.0.as_bytes()), Sha1::digest(given.as_bytes()));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compares_whole() {
        let t = Token::new("0123456789abcdef-secret").expect("token");
        assert!(t.matches("0123456789abcdef-secret"));
        assert!(!t.matches("0123456789abcdef-secreT"));
        assert!(!t.matches("0123456789abcdef-secret0"));
        assert!(!t.matches(""));
        assert!(!format!("{t:?}").contains("secret"));
        assert!(Token::new("short").is_err());
    }
}
