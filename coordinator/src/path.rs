//! Znode path rules.
//!
//! ZooKeeper validates paths on writes only; reads of an invalid path simply
//! find no node. [`validate`] reproduces ZooKeeper's rules, including its
//! view of strings as UTF-16: a character outside the Basic Multilingual
//! Plane is a surrogate pair in Java and therefore invalid in a path.

/// Why a path is invalid (the message a log line carries; clients only see
/// `BadArguments`).
pub fn validate(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("path length must be > 0");
    }
    if !path.starts_with('/') {
        return Err("path must start with / character");
    }
    if path.len() == 1 {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err("path must not end with / character");
    }
    // Each component between slashes: not empty, not "." or "..", no
    // forbidden characters.
    for component in path[1..].split('/') {
        if component.is_empty() {
            return Err("empty node name specified");
        }
        if component == "." || component == ".." {
            return Err("relative paths not allowed");
        }
        if component.chars().any(invalid_char) {
            return Err("invalid character");
        }
    }
    Ok(())
}

fn invalid_char(c: char) -> bool {
    let c = c as u32;
    c == 0
        || (0x01..=0x1f).contains(&c)
        || (0x7f..=0x9f).contains(&c)
        || (0xd800..=0xf8ff).contains(&c)
        || (0xfff0..=0xffff).contains(&c)
        // Outside the BMP: a surrogate pair in Java's UTF-16.
        || c > 0xffff
}

/// The parent of `path` as ZooKeeper computes it: everything before the last
/// slash (so the parent of `/a` is the empty string, the root's alias).
/// `None` when there is no slash at all.
pub fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// The last component of `path`.
pub fn name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The path of child `name` under `parent` (which may be the root, "/" or "").
pub use zk_wire::path::join;

/// Paths the server owns: they cannot be deleted.
pub fn is_special(path: &str) -> bool {
    matches!(path, "/" | "/zookeeper" | "/zookeeper/quota" | "/zookeeper/config")
}

/// Normalises the root's alias: ZooKeeper stores the root under both "" and
/// "/", and every path computed as a parent of a top-level node is "".
pub fn canonical(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_zookeeper() {
        for ok in ["/", "/a", "/a/b", "/a.b", "/..a", "/a..", "/.a/b.", "/ü", "/a b"] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a",
            "/a/",
            "//a",
            "/a//b",
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/a\0b",
            "/\u{1}",
            "/\u{7f}",
            "/\u{fff0}",
            "/😀",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent("/a"), Some(""));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("a"), None);
        assert_eq!(join("", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }
}
