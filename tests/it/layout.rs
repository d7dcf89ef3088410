//! The source layout keeps its shape: layers import only downwards, files and functions stay
//! small enough to read. These read `src/` as text, so they need no services.

use std::fs;
use std::path::{Path, PathBuf};

/// Longest file, counting the code before its unit tests.
const MAX_FILE_LINES: usize = 400;
/// Longest function.
const MAX_FN_LINES: usize = 50;

/// What each top-level module may import from the crate (besides itself). The leaves
/// (`backoff`, `metrics`, `telemetry`) may be used by anyone and use no one.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("crd", &[]),
    ("backoff", &[]),
    ("metrics", &[]),
    ("telemetry", &[]),
    ("store", &["domain", "backoff"]),
    ("stripe", &["domain", "backoff", "metrics", "telemetry"]),
    ("config", &["domain", "telemetry"]),
    (
        "policy",
        &[
            "domain",
            "crd",
            "store",
            "stripe",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "sync",
        &[
            "domain",
            "crd",
            "policy",
            "store",
            "stripe",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "reconcile",
        &[
            "domain",
            "crd",
            "policy",
            "store",
            "stripe",
            "sync",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "controller",
        &[
            "domain",
            "crd",
            "policy",
            "store",
            "reconcile",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "transport",
        &[
            "domain",
            "store",
            "stripe",
            "sync",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "http",
        &[
            "domain",
            "crd",
            "policy",
            "store",
            "stripe",
            "sync",
            "reconcile",
            "transport",
            "backoff",
            "metrics",
            "telemetry",
        ],
    ),
];

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

fn src() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&root).unwrap().display().to_string();
            (relative, fs::read_to_string(&path).unwrap())
        })
        .collect()
}

/// The code of a file before its unit tests.
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .collect()
}

/// The top-level modules a file refers to as `crate::<module>`.
fn crate_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code(text) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let module: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !module.is_empty() && !line.trim_start().starts_with("//") {
                found.push(module);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn layers_import_only_downwards() {
    let mut violations = Vec::new();
    for (path, text) in src() {
        let top = path.split(['/', '.']).next().unwrap_or_default();
        let Some((_, allowed)) = LAYERS.iter().find(|(layer, _)| *layer == top) else {
            continue;
        };
        for module in crate_references(&text) {
            if module != top && !allowed.contains(&module.as_str()) {
                violations.push(format!("{path} imports crate::{module}"));
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn files_stay_under_the_size_limit() {
    let long: Vec<String> = src()
        .into_iter()
        .filter(|(_, text)| code(text).len() > MAX_FILE_LINES)
        .map(|(path, text)| format!("{path}: {} lines", code(&text).len()))
        .collect();
    assert!(long.is_empty(), "{long:#?}");
}

/// `(name, lines)` of every function in the code of a file.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines = code(text);
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_fn = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
        ]
        .iter()
        .any(|prefix| trimmed.starts_with(prefix));
        if !is_fn || line.ends_with(';') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let closing = " ".repeat(indent) + "}";
        if let Some(length) = lines[start..].iter().position(|l| *l == closing) {
            let signature = trimmed.split_once("fn ").map_or(trimmed, |(_, rest)| rest);
            let name = signature
                .split(['(', '<'])
                .next()
                .unwrap_or(signature)
                .to_owned();
            found.push((name, length + 1));
        }
    }
    found
}

#[test]
fn functions_stay_short() {
    let mut long = Vec::new();
    for (path, text) in src() {
        for (name, lines) in functions(&text) {
            if lines > MAX_FN_LINES {
                long.push(format!("{path}: {name}: {lines} lines"));
            }
        }
    }
    assert!(long.is_empty(), "{long:#?}");
}
