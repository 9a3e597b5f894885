//! The parts of an OCI/Docker image config a container uses. Parsed leniently (Docker and OCI
//! configs differ in small ways, and null is common where a list is expected).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    /// `"80/tcp"`, `"53/udp"`, as in the config.
    pub exposed_ports: Vec<String>,
    /// Descriptions given with `withExposedPort`, by `"80/tcp"`; not part of the image format.
    #[serde(default)]
    pub port_descriptions: std::collections::BTreeMap<String, String>,
    /// `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: Option<RawContainerConfig>,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable image config: {e}"))?;
        let rootfs = raw
            .rootfs
            .ok_or_else(|| "the image config has no rootfs".to_string())?;
        if let Some(kind) = &rootfs.kind {
            if kind != "layers" {
                return Err(format!(
                    "unsupported rootfs type {kind:?} in the image config"
                ));
            }
        }
        let c = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            os: raw.os.unwrap_or_else(|| "linux".into()),
            architecture: raw.architecture.unwrap_or_default(),
            variant: raw.variant.filter(|v| !v.is_empty()),
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            workdir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            port_descriptions: BTreeMap::new(),
            diff_ids: rootfs.diff_ids.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_config() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin","A=b=c"],"Entrypoint":null,"Cmd":["/bin/sh"],"WorkingDir":"/srv","User":"1000:1000","Labels":{"k":"v"},"ExposedPorts":{"80/tcp":{},"53/udp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let c = ImageConfig::parse(raw).unwrap();
        assert_eq!(c.env, vec!["PATH=/usr/bin", "A=b=c"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, vec!["/bin/sh"]);
        assert_eq!(c.workdir, "/srv");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.labels["k"], "v");
        assert_eq!(c.exposed_ports, vec!["53/udp", "80/tcp"]);
        assert_eq!(c.diff_ids, vec!["sha256:aa"]);
    }

    #[test]
    fn minimal_and_broken_configs() {
        let c = ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert_eq!(c.os, "linux");
        assert!(ImageConfig::parse(b"{").is_err());
        assert!(ImageConfig::parse(br#"{"os":"linux"}"#).is_err());
    }
}
