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
