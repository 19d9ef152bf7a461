//! The `digest` auth scheme's one computation, shared by the server (which
//! derives an identity from an `addauth`) and by clients (which name that
//! identity in the ACLs they write): if the two were computed apart, a
//! difference between them would show only as a NoAuth on a node nobody
//! can read any more.

use base64::Engine;
use sha1::{Digest, Sha1};

/// `user:base64(sha1("user:password"))`: the id ZooKeeper's
/// `DigestAuthenticationProvider` derives from `addauth digest
/// user:password`, and what an ACL entry (and the server's `superDigest`)
/// names.
pub fn digest_id(user: &str, password: &str) -> String {
    generate_digest(&format!("{user}:{password}"))
}

/// ZooKeeper's `DigestAuthenticationProvider.generateDigest`, on the
/// `addauth` payload as it came: the user is what precedes the first `:`
/// (all of it if there is none), and the hash is of the whole payload. A
/// server, which gets the payload whole, uses this; a client that holds a
/// user and a password uses [`digest_id`], which is this on `user:password`.
pub fn generate_digest(id_password: &str) -> String {
    let user = id_password.split(':').next().unwrap_or_default();
    let hash = Sha1::digest(id_password.as_bytes());
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_zookeeper() {
        // The digest ZooKeeper's admin guide gives for super:test.
        assert_eq!(digest_id("super", "test"), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
        assert_eq!(generate_digest("super:test"), digest_id("super", "test"));
        // A password may hold ':'; only the first one ends the user.
        assert_eq!(generate_digest("u:p:q"), digest_id("u", "p:q"));
        // No ':' at all: ZooKeeper takes the whole payload as the user.
        assert!(generate_digest("lonely").starts_with("lonely:"));
    }
}
