//! Znode paths as strings, the way every side of the protocol builds them.
//!
//! One `join` for the server, the recipes, the CLI and the dashboard: each
//! had its own copy, and a copy that forgets the root's special case makes
//! `//child`, which a server refuses as an invalid path.

/// The path of child `name` under `parent`. The root is `/` (or the empty
/// string, which is how a top-level node's parent reads once its last
/// component is cut off), and its children are `/name`, not `//name`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" || parent.is_empty() {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn the_root_has_no_double_slash() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(join("/a/b", "c-0000000001"), "/a/b/c-0000000001");
    }
}
