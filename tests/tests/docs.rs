//! The scenario pages (docs/scenarios/) are a reader's map from each step
//! to the code that does it. A map that points at a function renamed or
//! moved is worse than none, so every link is checked here:
//!
//! - a link names an existing file;
//! - a link named like a path of code (`crate::module::Type::function`)
//!   points at a file that declares its last segment (a `fn`, `struct`,
//!   `enum`, `trait`, `const`, `static`, `type` or `mod` of that name);
//! - a drill named in a page is one `scripts/drill.sh` runs.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Every ``[`name`](target)`` link of a page: (name, target).
fn links(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("`](") else { break };
        let name = rest[..end].to_string();
        let after = &rest[end + 3..];
        let Some(close) = after.find(')') else { break };
        out.push((name, after[..close].to_string()));
        rest = &after[close..];
    }
    out
}

/// Whether `source` declares `item`.
fn declares(source: &str, item: &str) -> bool {
    ["fn", "struct", "enum", "trait", "const", "static", "type", "mod"].iter().any(|kw| {
        source.match_indices(&format!("{kw} {item}")).any(|(i, m)| {
            let next = source[i + m.len()..].chars().next();
            // `fn read` must not match `fn read_pending`.
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn every_link_of_the_scenario_pages_points_at_what_it_names() {
    let dir = repo().join("docs/scenarios");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    assert!(pages.len() >= 5, "an index and a page per scenario: {pages:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read the page");
        for (name, target) in links(&text) {
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = dir.join(target.split('#').next().unwrap_or_default());
            let Ok(source) = std::fs::read_to_string(&file) else {
                if !file.is_dir() {
                    broken.push(format!("{}: [{name}] -> {target}: no such file", page.display()));
                }
                continue;
            };
            checked += 1;
            if name.contains("::") {
                let item = name.rsplit("::").next().unwrap_or_default();
                if !declares(&source, item) {
                    broken.push(format!("{}: [{name}] -> {target}: the file declares no `{item}`", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "the scenario pages point at code that is not there:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} links checked: the link syntax changed?");
}

#[test]
fn every_drill_a_page_names_exists() {
    let listed = std::process::Command::new(repo().join("scripts/drill.sh"))
        .arg("--list")
        .output()
        .expect("scripts/drill.sh --list");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let drills: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(drills.len(), 8, "{listed}");
    for page in ["coordination.md", "lock.md", "config.md", "ha.md"] {
        let text = std::fs::read_to_string(repo().join("docs/scenarios").join(page)).expect("read the page");
        for named in text.split("drill.sh ").skip(1) {
            let name = named
                .split(|c: char| !(c.is_alphanumeric() || c == '-'))
                .find(|w| !w.is_empty() && !w.starts_with("--"));
            let Some(name) = name else { continue };
            if name == "NAME" {
                continue;
            }
            assert!(drills.contains(&name), "{page} names a drill `{name}` that scripts/drill.sh does not run");
        }
    }
}

#[test]
fn the_checker_catches_a_renamed_function() {
    // Proven on purpose: a declaration that is not there is caught, and a
    // longer name does not pass for a shorter one.
    let source = "impl Store {\n    pub fn read_pending(&self) {}\n    fn fence() {}\n}\n";
    assert!(declares(source, "fence"));
    assert!(!declares(source, "read"));
    assert!(!declares(source, "apply"));
    assert_eq!(
        links("see [`a::b`](x.rs) and [`c`](y.rs#L3)"),
        vec![("a::b".to_string(), "x.rs".to_string()), ("c".to_string(), "y.rs#L3".to_string())]
    );
}
