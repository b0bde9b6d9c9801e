//! Source rules the compiler cannot check: svcplane's API server answers server-side apply with
//! 415, so no project code may send it (kube-rs `Patch::Apply`, or the apply content type).

use std::path::{Path, PathBuf};

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

#[test]
fn no_product_code_uses_server_side_apply() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "apiserver/src", "cache/src", "dns/src", "ipam/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "the walk found the sources ({} files)",
        files.len()
    );
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            // The server's own refusal names the content type; nothing else may.
            text.contains("Patch::Apply")
                || (text.contains("apply-patch+yaml") && !path.ends_with("apiserver/src/http.rs"))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "server-side apply is refused by svcplane's API server; use merge or JSON patches: {offenders:?}"
    );
}
