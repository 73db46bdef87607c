//! The layer rule of `kms-server` (ARCHITECTURE.md), checked on the source: no import cycles
//! between its top-level modules, tonic only in the gRPC layer, and protobuf types only in the
//! gRPC and wire layers (and `lib.rs`, which wires the services).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that may use tonic: the gRPC layer, the server's wiring, the error → status mapping and
/// the caller identity read from the TLS connection.
const TONIC_ALLOWED: &[&str] = &["lib.rs", "error.rs", "identity.rs"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a source file belongs to (`lib` for lib.rs).
fn unit(rel: &str) -> String {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first).to_owned()
}

/// The top-level modules a file's code names through `crate::`.
fn references(code: &str, units: &BTreeSet<String>) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(str::trim).collect()
        } else {
            vec![rest]
        };
        for n in names {
            let ident: String = n
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if units.contains(&ident) {
                refs.insert(ident);
            }
        }
    }
    refs
}

fn read_all() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read source");
            (rel, text)
        })
        .collect()
}

#[test]
fn no_import_cycles_between_modules() {
    let files = read_all();
    let units: BTreeSet<String> = files.keys().map(|f| unit(f)).filter(|u| u != "lib").collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in &files {
        let from = unit(rel);
        if from == "lib" {
            continue;
        }
        for to in references(&code(text), &units) {
            if to != from {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // A path from a module back to itself is a cycle.
    for start in graph.keys() {
        let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().expect("non-empty");
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    panic!("import cycle: {} -> {start}", path.join(" -> "));
                }
                if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push(p);
                }
            }
        }
    }
    // The layers that must stay at the bottom name nothing above them.
    for (low, above) in [
        ("storage", &["grpc", "wire", "ops", "workers", "seal", "attest"][..]),
        ("ops", &["grpc"][..]),
        ("wire", &["grpc", "ops"][..]),
        ("request", &["grpc", "wire", "ops", "workers"][..]),
        (
            "config",
            &["grpc", "wire", "ops", "workers", "seal", "attest", "storage"][..],
        ),
    ] {
        for a in above {
            assert!(
                !graph.get(low).is_some_and(|g| g.contains(*a)),
                "{low} must not depend on {a}"
            );
        }
    }
    // Metrics are recorded from every layer, so `telemetry` names none of them.
    if let Some(g) = graph.get("telemetry") {
        assert!(g.is_empty(), "telemetry must not depend on {g:?}");
    }
}

#[test]
fn tonic_only_in_the_grpc_layer() {
    for (rel, text) in read_all() {
        if rel.starts_with("grpc/") || TONIC_ALLOWED.contains(&rel.as_str()) {
            continue;
        }
        assert!(
            !code(&text).contains("tonic::"),
            "{rel} uses tonic: only grpc/ talks gRPC"
        );
    }
}

#[test]
fn protobuf_only_in_the_grpc_and_wire_layers() {
    for (rel, text) in read_all() {
        if rel.starts_with("grpc/") || rel.starts_with("wire/") || rel == "lib.rs" {
            continue;
        }
        let c = code(&text);
        assert!(
            !(c.contains("pb::") || c.contains("kms_proto::v1") || c.contains("prost::")),
            "{rel} uses protobuf types: decode in wire/ and pass domain types"
        );
    }
}
