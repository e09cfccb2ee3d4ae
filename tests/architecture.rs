//! The import directions of docs/ARCHITECTURE.md, checked on the source: a lower layer never imports a
//! higher one, the stages import each other only along a click's journey, and no two files import each
//! other in a circle. Plain text reading of `src/` (no compiler plugin): `crate::…`, `super::…` and
//! `self::…` paths outside comments and `#[cfg(test)]` modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module, lowest first. A module may import its own layer's modules only
/// where `SAME_LAYER` allows it, and any lower layer.
const LAYERS: &[(&str, u8)] = &[
    // Records and pure policy, importing nothing of the crate but each other as listed below.
    ("model", 0),
    ("config", 0),
    ("code", 0),
    ("click_id", 0),
    ("limit", 0),
    ("validate", 0),
    ("text", 0),
    ("auth", 0),
    ("backoff", 0),
    ("telemetry", 0),
    ("redis_conn", 0),
    // Rules about records.
    ("counting", 1),
    // Storage.
    ("store", 2),
    // The stages of a click's journey.
    ("redirect", 3),
    ("click", 3),
    ("webhook", 3),
    // The assembled application.
    ("app", 4),
    // The edges: HTTP routing, the API and its errors, ops endpoints, the console.
    ("server", 5),
    ("api", 5),
    ("error", 5),
    ("ops", 5),
    ("ui", 5),
];

/// Allowed imports inside a layer: a later stage may use an earlier stage's hand-off type
/// (`click` takes `redirect::capture::Hit`, `webhook` takes `click::emit::Event`), never the reverse.
const SAME_LAYER: &[(&str, &str)] = &[
    ("click", "redirect"),
    ("webhook", "click"),
    ("webhook", "redirect"),
    ("server", "api"),
    ("server", "ops"),
    ("server", "ui"),
    ("api", "error"),
    ("ops", "error"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `["a", "b"]`; `src/lib.rs` → `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every path this code names through `crate::`, `super::` or `self::`, resolved against `module`
/// (the module of the file), as written: `crate::{a, b::c}` gives `a` and `b::c`.
fn referenced_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (anchor, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // In `a/b.rs` (module a::b) `super` is `a`; in `a/b/mod.rs` (module a::b) too.
            let mut m = module.to_vec();
            m.pop();
            m
        }),
        ("self::", module.to_vec()),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(anchor) {
            let before = rest[..i].chars().last();
            rest = &rest[i + anchor.len()..];
            if before.is_some_and(|c| ident(c) || c == ':') {
                continue; // `foo::super::` or a longer name ending in the anchor
            }
            let mut paths = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                // Split the group at its top-level commas; of each item keep the path before any
                // nested group (`b::{C, D}` → `b`).
                let (mut depth, mut item) = (0usize, String::new());
                for c in group.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            continue;
                        }
                        '}' if depth == 0 => break,
                        '}' => {
                            depth -= 1;
                            continue;
                        }
                        ',' if depth == 0 => {
                            paths.push(std::mem::take(&mut item));
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                paths.push(item);
                for p in &mut paths {
                    *p = p.trim().split(' ').next().unwrap_or("").trim_end_matches("::").to_owned();
                }
            } else {
                let end = rest.find(|c: char| !(ident(c) || c == ':')).unwrap_or(rest.len());
                paths.push(rest[..end].trim_end_matches("::").to_owned());
            }
            for p in paths.into_iter().filter(|p| !p.is_empty()) {
                let mut full = base.clone();
                full.extend(p.split("::").filter(|s| !s.is_empty()).map(str::to_owned));
                found.push(full);
            }
        }
    }
    found
}

struct Crate {
    /// module path → its code
    files: BTreeMap<Vec<String>, String>,
}

impl Crate {
    fn read() -> Self {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        rust_files(&src, &mut paths);
        let files = paths
            .iter()
            .filter(|p| !p.ends_with("main.rs"))
            .map(|p| (module_of(&src, p), code_of(&std::fs::read_to_string(p).unwrap())))
            .collect();
        Self { files }
    }

    /// The longest known module that `path` starts with.
    fn resolve(&self, path: &[String]) -> Vec<String> {
        (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|m| self.files.contains_key(m)).unwrap_or_default()
    }

    /// module → modules it imports (resolved, itself excluded).
    fn edges(&self) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
        self.files
            .iter()
            .map(|(module, code)| {
                let targets = referenced_paths(code, module)
                    .iter()
                    .map(|p| self.resolve(p))
                    .filter(|t| t != module && !t.is_empty())
                    .collect();
                (module.clone(), targets)
            })
            .collect()
    }
}

fn layer(top: &str) -> u8 {
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, l)| *l).unwrap_or_else(|| {
        panic!("top-level module `{top}` has no layer: add it to LAYERS here and to docs/ARCHITECTURE.md")
    })
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let krate = Crate::read();
    let mut violations = Vec::new();
    for (from, targets) in krate.edges() {
        let Some(from_top) = from.first() else { continue };
        for to in targets {
            let to_top = &to[0];
            if to_top == from_top {
                continue;
            }
            let (lf, lt) = (layer(from_top), layer(to_top));
            let allowed = lt < lf || SAME_LAYER.contains(&(from_top.as_str(), to_top.as_str()));
            if !allowed {
                violations.push(format!("{} (layer {lf}) imports {} (layer {lt})", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(violations.is_empty(), "import directions broken:\n{}", violations.join("\n"));
}

#[test]
fn no_module_or_file_imports_in_a_circle() {
    let krate = Crate::read();
    let edges = krate.edges();
    // Top-level modules form a DAG.
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in &edges {
        let Some(f) = from.first() else { continue };
        for t in targets {
            if &t[0] != f {
                top.entry(f.clone()).or_default().insert(t[0].clone());
            }
        }
    }
    assert_eq!(find_cycle(&top), None, "top-level modules import each other in a circle");
    // Files: a module using its own descendants is structure, not a circle; everything else counts.
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in &edges {
        for t in targets.iter().filter(|t| !t.starts_with(from)) {
            files.entry(from.join("::")).or_default().insert(t.join("::"));
        }
    }
    assert_eq!(find_cycle(&files), None, "files import each other in a circle");
}

#[test]
fn no_source_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let long: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn the_checker_sees_what_it_should() {
    // A self-test of the reader, so that a silently empty graph cannot pass the checks above.
    let krate = Crate::read();
    let edges = krate.edges();
    let of = |m: &str| edges.get(&m.split("::").map(str::to_owned).collect::<Vec<_>>()).cloned().unwrap_or_default();
    let names = |set: BTreeSet<Vec<String>>| set.into_iter().map(|m| m.join("::")).collect::<BTreeSet<_>>();
    assert!(names(of("store::memory")).contains("counting"), "{:?}", names(of("store::memory")));
    assert!(names(of("server")).contains("api"), "`use crate::{{api, ops}}` groups are read");
    assert!(names(of("click::pipeline")).contains("redirect::capture"));
    let code = "use super::{a, b::{C, D}};\nlet x = crate::model::Link; // crate::api is a comment";
    let paths = referenced_paths(&code_of(code), &["m".to_owned(), "n".to_owned()]);
    assert_eq!(
        paths,
        vec![
            vec!["model".to_owned(), "Link".to_owned()],
            vec!["m".to_owned(), "a".to_owned()],
            vec!["m".to_owned(), "b".to_owned()]
        ]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(f, t)| (f.to_string(), BTreeSet::from([t.to_string()])))
        .collect();
    assert!(find_cycle(&graph).is_some());
    assert_eq!(layer("store"), 2);
}

/// A cycle in a directed graph, as the list of its nodes, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}
