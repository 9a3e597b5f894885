//! Finding CA certificate files in a directory tree (the engine's extra CAs, and a registry's
//! `certs.d` directory).

use std::path::{Path, PathBuf};

/// How deep below the given directory certificate files are looked for.
const MAX_DEPTH: usize = 4;

/// The `*.crt` and `*.pem` files under `dir`, recursively (at most four levels down), sorted
/// by path. A directory that cannot be read contributes nothing.
pub fn ca_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect(dir, 0, &mut files);
    files.sort();
    files
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, depth + 1, out);
        } else if path.extension().is_some_and(|e| e == "crt" || e == "pem") {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_crt_and_pem_files_sorted_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/c")).unwrap();
        for f in ["z.crt", "a.pem", "b/c/x.crt", "notes.txt", "key.key"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let deep = d.join("1/2/3/4/5");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(d.join("1/2/3/4/ok.crt"), "x").unwrap();
        std::fs::write(deep.join("too-deep.crt"), "x").unwrap();
        let got: Vec<String> = ca_files(d)
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        assert_eq!(got, ["1/2/3/4/ok.crt", "a.pem", "b/c/x.crt", "z.crt"]);
        assert!(ca_files(&d.join("missing")).is_empty());
    }
}
