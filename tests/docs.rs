//! `ARCHITECTURE.md` names only paths that exist: every backquoted name
//! with a `/` or a file extension is a path from the repository root.

use std::path::Path;

#[test]
fn every_path_architecture_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut checked = 0;
    let mut missing = Vec::new();
    for (i, quoted) in text.split('`').enumerate() {
        let is_path = i % 2 == 1
            && !quoted.contains(' ')
            && (quoted.contains('/') || [".rs", ".md", ".h", ".toml", ".sh"].iter().any(|e| quoted.ends_with(e)));
        if is_path {
            checked += 1;
            if !root.join(quoted).exists() {
                missing.push(quoted.to_string());
            }
        }
    }
    assert!(checked >= 40, "only {checked} paths found: is the quoting still `path`?");
    assert!(missing.is_empty(), "ARCHITECTURE.md names paths that do not exist: {missing:?}");
}

/// No source file of the library crates is over 700 lines before its
/// `#[cfg(test)]` module: a file that grows past that is doing more than
/// one thing (ARCHITECTURE.md says where things go).
#[test]
fn no_source_file_is_over_700_lines_before_its_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    let mut seen = 0;
    let mut walk = vec![];
    for dir in
        ["format/src", "kernels/src", "kernels/avx2", "kernels/neon", "runtime/src", "converter/src", "cuda/src", "src"]
    {
        walk.push(root.join(dir));
    }
    while let Some(dir) = walk.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                let lines = text
                    .lines()
                    .take_while(|l| !l.starts_with("#[cfg(test)]") && !l.starts_with("#[cfg(all(test"))
                    .count();
                seen += 1;
                if lines > 700 {
                    long.push(format!("{} ({lines} lines)", path.strip_prefix(root).unwrap_or(&path).display()));
                }
            }
        }
    }
    assert!(seen > 50, "only {seen} files found");
    assert!(long.is_empty(), "over 700 lines before the tests: {long:?}");
}
