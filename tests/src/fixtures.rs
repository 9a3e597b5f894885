//! Fixtures several integration test files share: engine configuration that trusts a test
//! registry, registry credentials in a `DOCKER_CONFIG`, an engine with busybox in a registry,
//! and a private podman store.

use crate::images::{self, Format};
use crate::registry::{Mode, TestRegistry};
use crate::{Engine, EngineOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// engine.toml lines that make the engine trust `reg` (its CA, over HTTPS); empty for a
/// plain-HTTP registry.
pub fn registry_toml(reg: &TestRegistry) -> String {
    match &reg.ca {
        Some(ca) => format!(
            "[registry.\"{}\"]\nhttp = false\nca = [\"{}\"]\n",
            reg.addr,
            ca.display()
        ),
        None => String::new(),
    }
}

/// Standard base64 (padded), so the tests need no extra crate.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes a docker `config.json` into `dir` (created) holding `user`:`pass` for `host`;
/// returns `dir` as a string, for `DOCKER_CONFIG`.
pub fn docker_config(dir: &Path, host: &str, user: &str, pass: &str) -> String {
    let cfg = serde_json::json!({ "auths": { host: { "auth": base64(format!("{user}:{pass}").as_bytes()) } } });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir.display().to_string()
}

/// A plain-HTTP registry holding the offline busybox image as `busybox:1`, and an engine
/// started with `config` (engine.toml); returns both and the image's reference.
pub fn busybox_engine(config: &str) -> (TestRegistry, Engine, String) {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "busybox:1", Format::Oci, None);
    let engine = Engine::start(EngineOptions {
        config: Some(config.to_string()),
        ..Default::default()
    });
    let image = format!("{}/busybox:1", reg.addr);
    (reg, engine, image)
}

/// `os/architecture` of every manifest an image index lists, in its order.
pub fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect()
}

/// A podman store and configuration of its own under a short temporary directory (podman
/// refuses long run roots), with the ulimits this machine needs
/// (shared/reference/test-environment.md §4), no registries.conf mirrors, no credentials, and
/// events logged to a file.
pub struct PodmanStore {
    podman: PathBuf,
    pub dir: tempfile::TempDir,
}

impl PodmanStore {
    pub fn new(podman: &Path) -> PodmanStore {
        let dir = tempfile::Builder::new().prefix("pm-").tempdir().unwrap();
        let d = dir.path();
        for sub in ["root", "run", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 [engine]\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n",
                d.join("events.log").display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("registries.conf"), "").unwrap();
        std::fs::write(d.join("auth.json"), "{}").unwrap();
        PodmanStore {
            podman: podman.to_path_buf(),
            dir,
        }
    }

    /// `podman ARGS` on this store (overlay storage, cgroupfs, runc).
    pub fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.podman);
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("TMPDIR", d.join("tmp"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(["--runtime", "runc"])
            .args(args);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:p@ss"), "dXNlcjpwQHNz");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
