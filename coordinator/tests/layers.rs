//! The server's modules form layers: each uses only modules below it, so
//! a reader can learn them bottom up and a change below cannot be broken
//! by one above. This test reads the sources and fails on any cycle among
//! the top-level modules, naming it. (Tests and comments do not count: a
//! doc link upwards is fine, a `use` is not.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `crate::<module>` that `src` names outside comments and tests.
fn uses(src: &str) -> BTreeSet<String> {
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in code.lines().map(|l| l.split("//").next().unwrap_or_default()) {
        for (i, _) in line.match_indices("crate::") {
            let name: String = line[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
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

#[test]
fn the_modules_form_layers_with_no_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "the source tree was not found: {graph:?}");
    let mut cycles = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if let Some(back) = path_back(&graph, module, dep) {
                cycles.push(format!("{module} -> {}", back.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
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
}
