//! The repository documents itself: docs/scenario-format.md agrees with the scenario parser,
//! the shipped `examples/policies/k3s-multi-tenant.yaml` is the K3s example's step, and every file the
//! READMEs and docs mention is in the repository (none points outside it).
//! No root needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use enforcer_lab::scenario;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The fenced blocks of a Markdown text: (info string, first line number, body).
fn fenced_blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((info.trim().to_string(), i + 1, String::new()));
                }
            }
            Some((_, _, body)) => {
                if trimmed.starts_with("```") {
                    out.push(open.take().unwrap());
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a fenced block is not closed");
    out
}

const FORMAT_DOC: &str = "docs/scenario-format.md";

#[test]
fn every_yaml_example_of_the_scenario_format_doc_parses_and_every_rejected_one_is_refused() {
    let doc = read(FORMAT_DOC);
    let blocks = fenced_blocks(&doc);
    let (mut ok, mut rejected) = (0, 0);
    for (info, line, body) in &blocks {
        let source = format!("{FORMAT_DOC}:{line}");
        match info.as_str() {
            "yaml" => {
                if let Err(e) = enforcer_lab::load(body, &source, "enf-doc000-") {
                    panic!("{e:#}\n{body}");
                }
                ok += 1;
            }
            "yaml rejected" => {
                let e = enforcer_lab::load(body, &source, "enf-doc000-")
                    .err()
                    .unwrap_or_else(|| {
                        panic!("{source}: marked rejected, but the lab accepts it now: move it to the supported parts of the doc\n{body}")
                    });
                let msg = format!("{e:#}");
                assert!(
                    [
                        "not supported yet",
                        "unknown key",
                        "unknown kind",
                        "not a valid name"
                    ]
                    .iter()
                    .any(|w| msg.contains(w)),
                    "{source}: refused for another reason than an unsupported part: {msg}"
                );
                rejected += 1;
            }
            "json" | "text" | "sh" => {}
            other => panic!("{source}: a fenced block of unknown type {other:?}"),
        }
    }
    assert!(
        ok >= 5 && rejected >= 5,
        "{ok} examples, {rejected} rejected ones"
    );
}

#[test]
fn every_key_the_scenario_parser_accepts_is_in_the_doc() {
    let doc = read(FORMAT_DOC);
    let mut missing = Vec::new();
    for (place, keys) in scenario::KEYS {
        for key in *keys {
            // Named as code, in a table row or in prose; or as a key of a YAML example.
            if !doc.contains(&format!("`{key}`")) && !doc.contains(&format!("{key}:")) {
                missing.push(format!("{place}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in {FORMAT_DOC}: {missing:?}");
}

/// The YAML mapping keys of a text's `yaml` blocks (a rough scan: `key:` at the start of a line
/// or after `- `, `{` or `, `).
fn yaml_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (info, _, body) in fenced_blocks(text) {
        if !info.starts_with("yaml") {
            continue;
        }
        for line in body.lines() {
            let line = line.split(" #").next().unwrap();
            let mut rest = line;
            while let Some(colon) = rest.find(':') {
                let before = &rest[..colon];
                let start = before.rfind(['{', ',', '-', ' ', '[']).map_or(0, |i| i + 1);
                let key = &before[start..];
                let next = rest[colon + 1..].chars().next();
                if !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric())
                    && key.chars().next().unwrap().is_ascii_lowercase()
                    && matches!(next, None | Some(' '))
                {
                    keys.insert(key.to_string());
                }
                rest = &rest[colon + 1..];
            }
        }
    }
    keys
}

/// The shared contract (`../shared/scenario-format.md`, next to the repository where the
/// project keeps it; absent from a plain clone): every key its examples use is in our doc.
#[test]
fn every_key_of_the_shared_contract_is_in_the_doc() {
    let contract = root().join("../shared/scenario-format.md");
    let Ok(text) = std::fs::read_to_string(&contract) else {
        eprintln!("skipped: no {} here", contract.display());
        return;
    };
    let doc = read(FORMAT_DOC);
    let keys = yaml_keys(&text);
    assert!(
        keys.contains("podCIDR") && keys.contains("expect"),
        "{keys:?}"
    );
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")) && !doc.contains(&format!("{k}:")))
        .collect();
    assert!(
        missing.is_empty(),
        "in the contract, not in {FORMAT_DOC}: {missing:?}"
    );
}

#[test]
fn seed_policies_are_the_k3s_examples_step() {
    let scenario = scenario::parse(&read("examples/k3s-multi-tenant.yaml")).unwrap();
    let step: Vec<_> = scenario.steps[0].apply.iter().map(|o| &o.value).collect();
    let list = scenario::parse_objects(&read("examples/policies/k3s-multi-tenant.yaml")).unwrap();
    let shipped: Vec<_> = list.iter().map(|o| &o.value).collect();
    assert_eq!(step.len(), 8);
    assert_eq!(
        shipped, step,
        "examples/policies/k3s-multi-tenant.yaml differs from the step of examples/k3s-multi-tenant.yaml"
    );
}

/// Every Markdown file of the repository (outside `target/` and hidden folders).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if name.ends_with(".md") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

/// Every file and folder of the repository, by its path from the root (for names a README
/// gives relative to a folder it names nearby: `bpf/ct.rs` in `enforcer/src/`).
fn all_paths() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            out.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root(), &mut out);
    out
}

const FILE_ENDINGS: &[&str] = &[".yaml", ".yml", ".md", ".rs", ".toml", ".sh"];

/// The paths a Markdown text mentions: Markdown link targets that are not URLs or anchors, and
/// words that end like a file of the repository (`tests/scenarios/no-policy.yaml`).
fn mentioned_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = tail[..end].split('#').next().unwrap();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.insert(target.to_string());
        }
        rest = &tail[end..];
    }
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
    for word in text.split(|c: char| !is_path_char(c)) {
        let word = word.trim_end_matches('.');
        if FILE_ENDINGS
            .iter()
            .any(|e| word.ends_with(e) && word.len() > e.len())
        {
            out.insert(word.to_string());
        }
    }
    out
}

#[test]
fn every_file_the_readmes_and_docs_mention_is_in_the_repository() {
    let root = root();
    let paths = all_paths();
    let mut missing = Vec::new();
    let mut checked = 0;
    for md in markdown_files() {
        let rel = md.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&md).unwrap();
        let dir = md.parent().unwrap();
        for path in mentioned_paths(&text) {
            checked += 1;
            if path.starts_with('/') {
                missing.push(format!("{rel}: {path} (an absolute path)"));
                continue;
            }
            let candidates = [dir.join(&path), root.join(&path)];
            let inside = candidates.iter().find(|c| c.exists()).map(|c| {
                c.canonicalize()
                    .unwrap()
                    .starts_with(root.canonicalize().unwrap())
            });
            match inside {
                Some(true) => {}
                Some(false) => missing.push(format!("{rel}: {path} (outside the repository)")),
                None if paths.iter().any(|p| p.ends_with(&format!("/{path}"))) => {}
                None => missing.push(format!("{rel}: {path}")),
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "mentioned but not in the repository:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn no_readme_or_doc_points_outside_the_repository() {
    let root = root();
    let mut found = Vec::new();
    for md in markdown_files() {
        let rel = md.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&md).unwrap();
        for (n, line) in text.lines().enumerate() {
            for bad in [
                "shared/scenario-format",
                "shared/seeds",
                "../shared",
                "/work/",
            ] {
                if line.contains(bad) {
                    found.push(format!("{rel}:{}: {bad}", n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
