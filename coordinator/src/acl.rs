//! Access control: ACL checks, the `auth` pseudo-scheme, digest identities.
//!
//! An identity is an `Id { scheme, id }`. Every connection starts with
//! `ip:<client address>`; `addauth digest user:pass` adds
//! `digest:user:<base64(sha1("user:pass"))>`, and also `super:` when it
//! matches the configured super digest. An ACL entry grants its permission
//! bits to one identity pattern (`world:anyone`, a digest, an IP or CIDR).

use std::net::IpAddr;

use zk_wire::consts::perms;
use zk_wire::records::{Acl, Id};
use zk_wire::ErrorCode;

/// `world:anyone` with every permission: what `ZooDefs.Ids.OPEN_ACL_UNSAFE` is.
pub fn open_acl_unsafe() -> Vec<Acl> {
    vec![Acl { perms: perms::ALL, id: anyone() }]
}

/// `world:anyone` with read only (`READ_ACL_UNSAFE`), as on `/zookeeper/config`.
pub fn read_acl_unsafe() -> Vec<Acl> {
    vec![Acl { perms: perms::READ, id: anyone() }]
}

fn anyone() -> Id {
    Id { scheme: "world".into(), id: "anyone".into() }
}

/// `user:base64(sha1("user:password"))`, the stored form of a digest
/// identity, from an `addauth` payload as it came (see
/// [`zk_wire::auth::generate_digest`], the one computation clients share).
pub fn digest(user_password: &str) -> String {
    zk_wire::auth::generate_digest(user_password)
}

/// Is the connection holding `auth` allowed `perm` on a node with `acl`?
pub fn check(acl: &[Acl], perm: i32, auth: &[Id]) -> Result<(), ErrorCode> {
    if acl.is_empty() || auth.iter().any(|id| id.scheme == "super") {
        return Ok(());
    }
    for entry in acl.iter().filter(|a| a.perms & perm != 0) {
        if entry.id.scheme == "world" && entry.id.id == "anyone" {
            return Ok(());
        }
        if auth.iter().any(|who| who.scheme == entry.id.scheme && matches(&entry.id.scheme, &who.id, &entry.id.id)) {
            return Ok(());
        }
    }
    Err(ErrorCode::NoAuth)
}

fn matches(scheme: &str, who: &str, pattern: &str) -> bool {
    match scheme {
        "digest" => who == pattern,
        "ip" => ip_matches(who, pattern),
        _ => false,
    }
}

/// `pattern` is an address or `address/bits`; a client matches when its
/// address has the same leading `bits`.
fn ip_matches(who: &str, pattern: &str) -> bool {
    let (net, bits) = match pattern.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (pattern, None),
    };
    let (Ok(who), Ok(net)) = (who.parse::<IpAddr>(), net.parse::<IpAddr>()) else {
        return false;
    };
    match (who, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), bits.unwrap_or(128)),
        _ => false,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let bits = bits.min(8 * a.len() as u32) as usize;
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

fn valid_id(scheme: &str, id: &str) -> bool {
    match scheme {
        "digest" => id.split(':').count() == 2,
        "ip" => {
            let (net, bits) = match id.split_once('/') {
                Some((n, b)) => (n, Some(b)),
                None => (id, None),
            };
            net.parse::<IpAddr>().is_ok() && bits.is_none_or(|b| b.parse::<u32>().is_ok())
        }
        _ => false,
    }
}

/// Orders a connection's identities as ZooKeeper lists them. ZooKeeper keeps
/// them in a set backed by a `ConcurrentHashMap`, and whoAmI and the
/// expansion of an `auth` ACL entry list them in that map's iteration order:
/// by bucket (`spread(Id.hashCode()) & (table size - 1)`), and in insertion
/// order within a bucket. A stable sort by bucket reproduces it exactly while
/// the table has not grown (up to 12 ids in its 16 slots: every real
/// connection), and closely after.
pub fn order_like_zookeeper(ids: &mut [Id]) {
    let mut slots = 16usize;
    while ids.len() > slots - slots / 4 {
        slots *= 2;
    }
    ids.sort_by_key(|id| java_spread(java_id_hash(id)) as usize & (slots - 1));
}

/// `String.hashCode()`: over UTF-16 code units, wrapping.
fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The jute-generated `Id.hashCode()`.
fn java_id_hash(id: &Id) -> i32 {
    let h = 17i32.wrapping_mul(37).wrapping_add(java_string_hash(&id.scheme));
    h.wrapping_mul(37).wrapping_add(java_string_hash(&id.id))
}

/// `ConcurrentHashMap.spread`.
fn java_spread(h: i32) -> u32 {
    let h = h as u32;
    (h ^ (h >> 16)) & 0x7fff_ffff
}

/// Checks an ACL a client asks for and expands the `auth` pseudo-scheme into
/// the connection's authenticated identities (`PrepRequestProcessor.fixupACL`).
/// Duplicates are dropped; an empty list, an unknown scheme or an `auth`
/// entry on a connection with no authenticated identity is `InvalidAcl`.
pub fn fixup(acl: &[Acl], auth: &[Id]) -> Result<Vec<Acl>, ErrorCode> {
    let mut unique: Vec<&Acl> = Vec::with_capacity(acl.len());
    for a in acl {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    if unique.is_empty() {
        return Err(ErrorCode::InvalidAcl);
    }
    let mut out = Vec::with_capacity(unique.len());
    for a in unique {
        if a.id.scheme == "world" && a.id.id == "anyone" {
            out.push(a.clone());
        } else if a.id.scheme == "auth" {
            // Only identities an authentication provider vouches for count:
            // a digest does; the connection's `ip` identity (not
            // "authenticated" in ZooKeeper's terms) and `super` do not.
            let mut any = false;
            for who in auth.iter().filter(|w| w.scheme == "digest") {
                any = true;
                out.push(Acl { perms: a.perms, id: who.clone() });
            }
            if !any {
                return Err(ErrorCode::InvalidAcl);
            }
        } else if valid_id(&a.id.scheme, &a.id.id) {
            out.push(a.clone());
        } else {
            return Err(ErrorCode::InvalidAcl);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str, i: &str) -> Id {
        Id { scheme: s.into(), id: i.into() }
    }

    #[test]
    fn digest_matches_zookeeper_format() {
        // The digest ZooKeeper's DigestAuthenticationProvider computes for
        // "super:test" (documented in its admin guide).
        assert_eq!(digest("super:test"), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn checks() {
        let acl = vec![Acl { perms: perms::READ, id: id("digest", "u:x") }];
        assert_eq!(check(&acl, perms::READ, &[id("digest", "u:x")]), Ok(()));
        assert_eq!(check(&acl, perms::WRITE, &[id("digest", "u:x")]), Err(ErrorCode::NoAuth));
        assert_eq!(check(&acl, perms::READ, &[id("super", "")]), Ok(()));
        let ip = vec![Acl { perms: perms::ALL, id: id("ip", "10.1.0.0/16") }];
        assert_eq!(check(&ip, perms::READ, &[id("ip", "10.1.200.3")]), Ok(()));
        assert_eq!(check(&ip, perms::READ, &[id("ip", "10.2.0.1")]), Err(ErrorCode::NoAuth));
    }

    #[test]
    fn java_hashes() {
        // Values any JVM gives for "hello".hashCode() and "".hashCode().
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash(""), 0);
        // Insertion order is kept within a bucket, so one id stays put.
        let mut one = [id("ip", "127.0.0.1")];
        order_like_zookeeper(&mut one);
        assert_eq!(one[0], id("ip", "127.0.0.1"));
    }

    #[test]
    fn fixup_expands_auth() {
        let auth = [id("ip", "127.0.0.1"), id("digest", "u:x")];
        let acl = vec![Acl { perms: 31, id: id("auth", "") }];
        let out = fixup(&acl, &auth).unwrap();
        assert_eq!(out, vec![Acl { perms: 31, id: id("digest", "u:x") }]);
        assert_eq!(fixup(&acl, &auth[..1]), Err(ErrorCode::InvalidAcl));
        assert_eq!(fixup(&[], &auth), Err(ErrorCode::InvalidAcl));
        let bad = vec![Acl { perms: 31, id: id("nope", "x") }];
        assert_eq!(fixup(&bad, &auth), Err(ErrorCode::InvalidAcl));
    }
}
