//! Test images, built offline by `tests/scripts/build-images.sh` (busybox-static + umoci) into
//! an OCI layout, and pushed to a [`TestRegistry`] with skopeo.
//!
//! The layout is built once per script version: it is cached under
//! `target/<profile>/test-images/<hash of the script>/`, so later test runs (and other test
//! processes) reuse it.

use crate::registry::{require_binary, run, TestRegistry};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Tags in the layout (see the script's header).
pub const BUSYBOX: &str = "busybox";
pub const MULTILAYER: &str = "multilayer";
pub const AMD64: &str = "amd64";
pub const ARM64: &str = "arm64";
pub const MULTIARCH: &str = "multiarch";

/// Manifest format on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As built: OCI manifests (and an OCI index for `multiarch`).
    Oci,
    /// Converted by skopeo to Docker schema 2.
    DockerV2S2,
}

/// The OCI layout directory holding every tag, built on first use.
pub fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(build)
}

fn build() -> PathBuf {
    let script = crate::workspace().join("tests/scripts/build-images.sh");
    let text =
        std::fs::read(&script).unwrap_or_else(|e| panic!("cannot read {}: {e}", script.display()));
    let digest = dagger_engine::oci::Digest::of(&text);
    let key = &digest.hex()[..16];
    let exe = std::env::current_exe().expect("test executable path");
    let cache = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("test-images");
    let dir = cache.join(key);
    let done = dir.join(".complete");
    if done.is_file() {
        return dir.join("oci");
    }
    require_binary("umoci", "umoci");
    require_binary("busybox", "busybox-static");
    require_binary("python3", "python3");
    require_binary("tar", "tar");
    std::fs::create_dir_all(&cache).unwrap();
    // Build beside the final place, then rename: concurrent test processes never see half a
    // layout, and the loser of a race just drops its copy.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{key}.tmp-"))
        .tempdir_in(&cache)
        .unwrap();
    run(Command::new("bash").arg(&script).arg(tmp.path()));
    std::fs::write(tmp.path().join(".complete"), b"").unwrap();
    let tmp_path = tmp.keep();
    if std::fs::rename(&tmp_path, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp_path);
        assert!(
            done.is_file(),
            "cannot move the built images to {}",
            dir.display()
        );
    }
    dir.join("oci")
}

/// Pushes the busybox image, as OCI, to `registry` as `dest` (`repo:tag`) with the registry's
/// own credentials. Returns the pushed manifest's digest.
pub fn push_busybox(registry: &TestRegistry, dest: &str) -> String {
    push(BUSYBOX, registry, dest, Format::Oci, registry.creds())
}

/// Pushes layout tag `tag` to `registry` as `dest` (`repo:tag`) with skopeo, with the
/// registry's CA and, when given, `creds`. Returns the pushed manifest's digest.
pub fn push(
    tag: &str,
    registry: &TestRegistry,
    dest: &str,
    format: Format,
    creds: Option<(&str, &str)>,
) -> String {
    let skopeo = require_binary("skopeo", "skopeo");
    let layout = layout();
    let work = tempfile::tempdir().unwrap();
    let digest_file = work.path().join("digest");
    let mut cmd = Command::new(skopeo);
    // No policy.json, auth.json or registries.conf of the machine's may change the push.
    cmd.env("REGISTRY_AUTH_FILE", work.path().join("auth.json"))
        .env(
            "CONTAINERS_REGISTRIES_CONF",
            work.path().join("registries.conf"),
        )
        .args(["copy", "--insecure-policy", "--all", "--quiet"])
        .arg("--digestfile")
        .arg(&digest_file);
    match &registry.cert_dir {
        Some(dir) => {
            cmd.arg("--dest-tls-verify=true")
                .arg("--dest-cert-dir")
                .arg(dir);
        }
        None => {
            cmd.arg("--dest-tls-verify=false");
        }
    }
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    } else {
        cmd.arg("--dest-no-creds");
    }
    cmd.args(match format {
        Format::Oci => ["--format", "oci"],
        Format::DockerV2S2 => ["--format", "v2s2"],
    });
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{dest}", registry.addr));
    run(&mut cmd);
    std::fs::read_to_string(&digest_file)
        .expect("skopeo wrote no digest")
        .trim()
        .to_string()
}
