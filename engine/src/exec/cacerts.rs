//! Extra CA certificates (the engine's `/usr/local/share/ca-certificates`) in exec containers.
//!
//! Dagger installs the engine's custom CAs into each exec's trust store and removes them
//! afterwards, so they never reach a snapshot or a published image. Here the same effect
//! comes from a bind mount: when the rootfs has a CA bundle at one of the usual places, a
//! per-exec copy of it with the extra certificates appended is mounted over it for the
//! exec's lifetime. The rootfs itself is never written. Best effort: a rootfs without a
//! bundle, or one that cannot be read, runs unchanged.
//!
//! The mount is writable (appending to the bundle works, and is thrown away), but the file
//! cannot be replaced by a rename (`EBUSY`) while it is mounted.

use super::bind_mount;
use oci_spec::runtime::Mount;
use std::io::Read;
use std::path::Path;

/// Where distributions keep the bundle that TLS clients read: Debian, Ubuntu and Alpine;
/// RHEL, Fedora and CentOS; and the OpenSSL default some images use.
pub const BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Bundles larger than this are left alone.
const MAX_BUNDLE_BYTES: u64 = 32 << 20;

/// Every PEM certificate in the `*.crt` and `*.pem` files under `dir` (recursively, sorted by
/// path), concatenated; empty when there are none.
pub fn load_dir(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for path in crate::util::ca_files(dir) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for block in pem_blocks(&text) {
            out.extend_from_slice(block.as_bytes());
            out.push(b'\n');
        }
    }
    out
}

/// The `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` blocks of `text`.
pub fn pem_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

/// The base64 body of a PEM block without whitespace, to compare certificates however they
/// were wrapped.
fn body(block: &str) -> String {
    block
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// Whether every certificate of `extra` is already in `bundle`.
pub fn contains_all(bundle: &str, extra: &str) -> bool {
    let have: std::collections::HashSet<String> =
        pem_blocks(bundle).into_iter().map(body).collect();
    pem_blocks(extra)
        .into_iter()
        .all(|b| have.contains(&body(b)))
}

/// The mounts that put `extra` into the CA bundles of `rootfs`; the merged copies are written
/// to `work_dir` (the exec's bundle directory, removed after the exec).
pub(crate) fn bundle_mounts(rootfs: &Path, extra: &[u8], work_dir: &Path) -> Vec<Mount> {
    let Ok(extra) = std::str::from_utf8(extra) else {
        return Vec::new();
    };
    let root = match crate::sys::inroot::Root::open(rootfs) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("CA injection: cannot open rootfs {}: {e}", rootfs.display());
            return Vec::new();
        }
    };
    let mut mounts = Vec::new();
    let mut seen = Vec::new();
    for (i, path) in BUNDLE_PATHS.iter().enumerate() {
        // Symlinks resolve inside the rootfs; a missing bundle or a non-file is skipped.
        let Ok(file) = root.open_file(path) else {
            continue;
        };
        let Ok(real) = root.real_path(path) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let mut text = String::new();
        if file
            .take(MAX_BUNDLE_BYTES)
            .read_to_string(&mut text)
            .is_err()
        {
            continue;
        }
        if contains_all(&text, extra) {
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(extra);
        let merged = work_dir.join(format!("ca-bundle-{i}.crt"));
        if let Err(e) = std::fs::write(&merged, text) {
            tracing::warn!("CA injection: cannot write {}: {e}", merged.display());
            continue;
        }
        mounts.push(bind_mount(&merged, path, false));
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "-----BEGIN CERTIFICATE-----\nQUFB\nQUFB\n-----END CERTIFICATE-----";
    const B: &str = "-----BEGIN CERTIFICATE-----\nQkJC\n-----END CERTIFICATE-----";

    #[test]
    fn blocks_and_containment() {
        let text = format!("junk\n{A}\nmore\n{B}\n-----BEGIN CERTIFICATE-----\nunterminated");
        assert_eq!(pem_blocks(&text), vec![A, B]);
        // Wrapped differently, same certificate.
        let rewrapped = "-----BEGIN CERTIFICATE-----\nQUFBQUFB\n-----END CERTIFICATE-----\n";
        assert!(contains_all(rewrapped, A));
        assert!(!contains_all(rewrapped, &format!("{A}\n{B}")));
        assert!(contains_all(A, ""));
    }

    #[test]
    fn loads_crt_and_pem_files_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.crt"), A).unwrap();
        std::fs::write(dir.path().join("sub/b.pem"), format!("comment\n{B}\n")).unwrap();
        std::fs::write(dir.path().join("ignored.txt"), A).unwrap();
        let loaded = String::from_utf8(load_dir(dir.path())).unwrap();
        assert_eq!(loaded, format!("{A}\n{B}\n"));
        assert!(load_dir(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn merges_into_existing_bundles_only() {
        let rootfs = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let certs = rootfs.path().join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca-certificates.crt"), A).unwrap();
        // Alpine-style symlink to the same bundle: mounted once.
        std::os::unix::fs::symlink(
            "certs/ca-certificates.crt",
            rootfs.path().join("etc/ssl/cert.pem"),
        )
        .unwrap();
        let extra = format!("{B}\n");
        let mounts = bundle_mounts(rootfs.path(), extra.as_bytes(), work.path());
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            mounts[0].destination(),
            Path::new("/etc/ssl/certs/ca-certificates.crt")
        );
        let merged = std::fs::read_to_string(mounts[0].source().as_ref().unwrap()).unwrap();
        assert_eq!(merged, format!("{A}\n{B}\n"));
        // The rootfs is untouched.
        assert_eq!(
            std::fs::read_to_string(certs.join("ca-certificates.crt")).unwrap(),
            A
        );
        // Already there: nothing to do.
        assert!(bundle_mounts(rootfs.path(), A.as_bytes(), work.path()).is_empty());
        // No bundle at all: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        assert!(bundle_mounts(empty.path(), extra.as_bytes(), work.path()).is_empty());
    }
}
