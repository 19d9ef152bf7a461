//! The server's modules form layers: each uses only modules below it, so
//! a reader can learn them bottom up and a change below cannot be broken
//! by one above. This test reads the sources and fails on any cycle among
//! the top-level modules, and on any cycle among the files of a module
//! that is a directory (`tree/`, `ops/`), naming it. (Tests and comments
//! do not count: a doc link upwards is fine, a `use` is not.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The lines of `src` that are code: comments stripped, and nothing from
/// the first test module on (`#[cfg(test)]` on a `mod`, public or not; a test-only
/// function in the middle of a file does not end its code).
fn code_lines(src: &str) -> impl Iterator<Item = &str> {
    let mut lines = src.lines().peekable();
    std::iter::from_fn(move || {
        let line = lines.next()?;
        let next = lines.peek().map(|l| l.trim_start()).unwrap_or_default();
        let is_mod = next.starts_with("mod ") || (next.starts_with("pub") && next.contains(" mod "));
        if line.trim() == "#[cfg(test)]" && is_mod {
            return None;
        }
        Some(line.split("//").next().unwrap_or_default())
    })
}

/// The module names that follow `prefix` in `line` (`crate::` gives the
/// top-level modules it names).
fn names_after<'l>(line: &'l str, prefix: &'l str) -> impl Iterator<Item = String> + 'l {
    line.match_indices(prefix)
        .filter(move |(i, _)| {
            // `prefix` must start a path, not end a longer name.
            !line[..*i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
        .map(move |(i, _)| {
            line[i + prefix.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()
        })
        .filter(|name| !name.is_empty())
}

/// Every `crate::<module>` that `src` names outside comments and tests.
fn uses(src: &str) -> BTreeSet<String> {
    code_lines(src).flat_map(|line| names_after(line, "crate::").collect::<Vec<_>>()).collect()
}

/// The files of the directory module `dir` (`src/tree`), each with the
/// files of the same directory it uses; `mod.rs` is "mod".
///
/// A file names a sibling as `super::sibling::…` (or
/// `crate::<dir>::sibling::…`); any other `super::Item` is an item of
/// `mod.rs` (for `tree/`, `DataTree` that `apply` and `snapshot` add
/// methods to), so it uses "mod". `mod.rs` names its files bare
/// (`arena::Arena`); its `mod` and `pub use` lines do not count, since
/// they only declare the files and hand their types on to the rest of the
/// server.
fn dir_graph(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let crate_path = format!("crate::{}::", dir.file_name().and_then(|n| n.to_str()).expect("a name"));
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read a module directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().and_then(|s| s.to_str()).expect("a name").to_string();
            files.insert(stem, std::fs::read_to_string(&path).expect("read a source file"));
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &files {
        let deps = graph.entry(file.clone()).or_default();
        for line in code_lines(text) {
            if file == "mod" {
                let t = line.trim_start();
                if t.starts_with("mod ") || t.starts_with("pub mod ") || t.starts_with("pub use ") {
                    continue;
                }
                for name in files.keys().filter(|f| *f != "mod") {
                    if names_after(line, &format!("{name}::")).next().is_some()
                        || line.trim_start().starts_with(&format!("use {name}::"))
                    {
                        deps.insert(name.clone());
                    }
                }
                continue;
            }
            for name in names_after(line, "super::").chain(names_after(line, &crate_path)) {
                if name == "super" {
                    continue; // outside the directory: the top-level check's business
                }
                deps.insert(if files.contains_key(&name) { name } else { "mod".to_string() });
            }
        }
        deps.remove(file);
    }
    graph
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let top = rel.iter().next().and_then(|c| c.to_str()).expect("a name").trim_end_matches(".rs").to_string();
            if top == "lib" || top == "bin" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let deps = graph.entry(top.clone()).or_default();
            deps.extend(uses(&text).into_iter().filter(|d| *d != top));
        }
    }
    graph
}

/// A path from `to` back to `from`, if there is one.
fn path_back(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![to.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().cloned().unwrap_or_default();
        if last == from {
            return Some(path);
        }
        for next in graph.get(&last).into_iter().flatten() {
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push(p);
            }
        }
    }
    None
}

/// Every cycle in `graph`, each as the path that closes it.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut cycles = Vec::new();
    for (module, deps) in graph {
        for dep in deps {
            if let Some(back) = path_back(graph, module, dep) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    cycles
}

#[test]
fn the_modules_form_layers_with_no_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "the source tree was not found: {graph:?}");
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_files_of_each_directory_module_form_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&src).expect("read src") {
        let dir = entry.expect("entry").path();
        if !dir.join("mod.rs").exists() {
            continue;
        }
        let graph = dir_graph(&dir);
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let cycles = cycles(&graph);
        assert!(cycles.is_empty(), "cycles among the files of {name}/:\n{}", cycles.join("\n"));
        checked.push((name, graph));
    }
    let tree = checked.iter().find(|(name, _)| name == "tree").map(|(_, g)| g);
    let tree = tree.expect("tree/ was checked");
    // Not vacuous: the edges the layering rests on are seen.
    for (file, dep) in [("arena", "node"), ("snapshot", "arena"), ("snapshot", "mod"), ("mod", "arena")] {
        assert!(tree[file].contains(dep), "tree/{file} should be seen using {dep}: {tree:?}");
    }
}

#[test]
fn the_checker_sees_a_cycle() {
    // The checker itself, on a graph with one: it must not pass vacuously.
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(path_back(&graph, "a", "b").is_some());
    assert_eq!(
        uses("use crate::core::Core; // crate::ops\n/// [`crate::conn`]\n"),
        BTreeSet::from(["core".to_string()])
    );
    // A test-only function does not end a file's code; a test module does.
    let src = "#[cfg(test)]\nfn probe() {}\nuse crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n}\n";
    assert_eq!(uses(src), BTreeSet::from(["a".to_string()]));
}
