//! Documentation that must stay true: every metric the code emits is described in docs/OPERATIONS.md.

use std::path::Path;

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_metric_is_documented() {
    let mut code = String::new();
    sources(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut code);
    let ops = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md")).unwrap();
    let mut names: Vec<&str> = code
        .match_indices("\"linkhit_")
        .map(|(i, _)| {
            let rest = &code[i + 1..];
            &rest[..rest.find('"').unwrap()]
        })
        .filter(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 20, "found only {names:?}");
    let missing: Vec<&&str> = names.iter().filter(|n| !ops.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "metrics missing from docs/OPERATIONS.md: {missing:?}");
    // Each has its HELP text (what `promtool check metrics` asks for).
    let described: Vec<&str> = linkhit::telemetry::METRICS.iter().map(|(n, _, _)| *n).collect();
    let undescribed: Vec<&&str> = names.iter().filter(|n| !described.contains(n)).collect();
    assert!(undescribed.is_empty(), "metrics without HELP text in telemetry::METRICS: {undescribed:?}");
}
