//! Picking the manifest for a platform out of an image index or Docker manifest list,
//! with containerd's normalisation (`platforms.Only`, restricted to the same architecture).

use crate::oci::Platform;
use serde::Deserialize;

/// The parts of an index we need. Parsed leniently on purpose: oci-spec's typed `Arch`/`Os`
/// would fold unknown values, and the raw bytes stay the source of truth anyway.
#[derive(Debug, Deserialize)]
pub(crate) struct IndexDoc {
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<PlatformDoc>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformDoc {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl IndexEntry {
    pub fn is_index(&self) -> bool {
        self.media_type.as_deref().is_some_and(super::is_index_type)
    }

    /// The entry's platform, normalised like `Platform::parse`; `None` if absent or malformed.
    fn platform(&self) -> Option<Platform> {
        let p = self.platform.as_ref()?;
        let text = match p.variant.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        };
        Platform::parse(&text).ok()
    }

    fn platform_label(&self) -> Option<String> {
        if let Some(p) = self.platform() {
            return Some(p.to_string());
        }
        let p = self.platform.as_ref()?;
        Some(format!("{}/{}", p.os, p.architecture))
    }
}

/// What to follow next.
#[derive(Debug)]
pub(crate) enum Choice<'a> {
    Manifest(&'a IndexEntry),
    /// A nested index: matching platform, or none stated.
    Index(&'a IndexEntry),
}

/// The best manifest for `want`: lowest rank (exact variant first), then index order. When no
/// manifest matches, a nested index that may hold one. `Err` lists the platforms on offer.
pub(crate) fn select<'a>(entries: &'a [IndexEntry], want: &Platform) -> Result<Choice<'a>, String> {
    let best = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.is_index())
        .filter_map(|(i, e)| e.platform().and_then(|p| rank(want, &p)).map(|r| (r, i, e)))
        .min_by_key(|(r, i, _)| (*r, *i));
    if let Some((_, _, e)) = best {
        return Ok(Choice::Manifest(e));
    }
    if let Some(e) = entries.iter().find(|e| {
        e.is_index()
            && (e.platform.is_none() || e.platform().and_then(|p| rank(want, &p)).is_some())
    }) {
        return Ok(Choice::Index(e));
    }
    let mut labels: Vec<String> = Vec::new();
    for e in entries {
        let label = match (e.platform_label(), e.is_index()) {
            (Some(l), false) => l,
            (Some(l), true) => format!("{l} (index)"),
            (None, false) => "unspecified".to_string(),
            (None, true) => "unspecified (index)".to_string(),
        };
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    Err(if labels.is_empty() {
        "none (the index is empty)".to_string()
    } else {
        labels.join(", ")
    })
}

/// How well `have` serves `want` (0 = exact); `None` when it cannot run there. Both are
/// normalised (`amd64/v1` and `arm64/v8` have no variant, `arm` defaults to `v7`).
pub(crate) fn rank(want: &Platform, have: &Platform) -> Option<usize> {
    if want.os != have.os || want.architecture != have.architecture {
        return None;
    }
    if want.variant == have.variant {
        return Some(0);
    }
    // Older variants of the same architecture still run: amd64 v3 runs v2 and v1, arm v7
    // runs v6 and v5. Newer ones never do.
    let level = |v: Option<&str>| -> Option<u32> {
        match v {
            None => Some(1),
            Some(v) => v.strip_prefix('v')?.parse().ok(),
        }
    };
    let floor = match want.architecture.as_str() {
        "amd64" => 1,
        "arm" => 5,
        _ => return None,
    };
    let w = level(want.variant.as_deref())?;
    let h = level(have.variant.as_deref())?;
    if h >= floor && h < w {
        Some((w - h) as usize)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn entry(digest: &str, platform: Option<(&str, &str, Option<&str>)>) -> IndexEntry {
        IndexEntry {
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            digest: digest.into(),
            size: 1,
            platform: platform.map(|(os, arch, variant)| PlatformDoc {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(String::from),
            }),
        }
    }

    fn pick(entries: &[IndexEntry], want: &str) -> Result<String, String> {
        match select(entries, &p(want))? {
            Choice::Manifest(e) => Ok(e.digest.clone()),
            Choice::Index(e) => Ok(format!("index:{}", e.digest)),
        }
    }

    #[test]
    fn normalised_matching() {
        let entries = [
            entry("amd64", Some(("linux", "amd64", None))),
            entry("arm64v8", Some(("linux", "arm64", Some("v8")))),
            entry("armv6", Some(("linux", "arm", Some("v6")))),
            entry("armv7", Some(("linux", "arm", Some("v7")))),
            entry("win", Some(("windows", "amd64", None))),
        ];
        assert_eq!(pick(&entries, "linux/amd64").unwrap(), "amd64");
        assert_eq!(pick(&entries, "linux/x86_64").unwrap(), "amd64");
        assert_eq!(pick(&entries, "linux/amd64/v1").unwrap(), "amd64");
        // amd64/v3 hosts run v1 images.
        assert_eq!(pick(&entries, "linux/amd64/v3").unwrap(), "amd64");
        // arm64 with no variant matches v8, and arm64/v8 matches an entry without variant.
        assert_eq!(pick(&entries, "linux/arm64").unwrap(), "arm64v8");
        assert_eq!(pick(&entries, "linux/aarch64").unwrap(), "arm64v8");
        // Exact variant preferred over an older compatible one; arm defaults to v7.
        assert_eq!(pick(&entries, "linux/arm/v7").unwrap(), "armv7");
        assert_eq!(pick(&entries, "linux/arm").unwrap(), "armv7");
        assert_eq!(pick(&entries, "linux/arm/v6").unwrap(), "armv6");
        assert_eq!(pick(&entries, "windows/amd64").unwrap(), "win");
        let err = pick(&entries, "linux/s390x").unwrap_err();
        assert_eq!(
            err,
            "linux/amd64, linux/arm64, linux/arm/v6, linux/arm/v7, windows/amd64"
        );
    }

    #[test]
    fn exact_variant_beats_older_and_newer_never_matches() {
        let entries = [
            entry("v1", Some(("linux", "amd64", None))),
            entry("v2", Some(("linux", "amd64", Some("v2")))),
            entry("v3", Some(("linux", "amd64", Some("v3")))),
        ];
        assert_eq!(pick(&entries, "linux/amd64/v3").unwrap(), "v3");
        assert_eq!(pick(&entries, "linux/amd64/v2").unwrap(), "v2");
        assert_eq!(pick(&entries, "linux/amd64").unwrap(), "v1");
        let only_new = [entry("v3", Some(("linux", "amd64", Some("v3"))))];
        assert!(pick(&only_new, "linux/amd64").is_err());
        // arm64 without variant does not run v9-only images.
        let v9 = [entry("v9", Some(("linux", "arm64", Some("v9"))))];
        assert!(pick(&v9, "linux/arm64").is_err());
        // Among equals, index order decides.
        let dup = [
            entry("first", Some(("linux", "amd64", None))),
            entry("second", Some(("linux", "amd64", None))),
        ];
        assert_eq!(pick(&dup, "linux/amd64").unwrap(), "first");
        // x86_64 written in the index is normalised too.
        let alias = [entry("x", Some(("Linux", "x86_64", None)))];
        assert_eq!(pick(&alias, "linux/amd64").unwrap(), "x");
    }

    #[test]
    fn nested_indexes_and_platformless_entries() {
        let mut nested = entry("inner", None);
        nested.media_type = Some("application/vnd.oci.image.index.v1+json".into());
        let entries = [
            entry("attestation", Some(("unknown", "unknown", None))),
            entry("noplatform", None),
            nested,
        ];
        assert_eq!(pick(&entries, "linux/amd64").unwrap(), "index:inner");
        let mut nested_arm = entry("inner-arm", Some(("linux", "arm64", None)));
        nested_arm.media_type =
            Some("application/vnd.docker.distribution.manifest.list.v2+json".into());
        let entries = [entry("amd", Some(("linux", "amd64", None))), nested_arm];
        assert_eq!(pick(&entries, "linux/arm64").unwrap(), "index:inner-arm");
        assert_eq!(pick(&entries, "linux/amd64").unwrap(), "amd");
        assert_eq!(
            pick(&entries, "linux/ppc64le").unwrap_err(),
            "linux/amd64, linux/arm64 (index)"
        );
        assert_eq!(
            pick(&[], "linux/amd64").unwrap_err(),
            "none (the index is empty)"
        );
        assert_eq!(
            pick(&[entry("x", None)], "linux/amd64").unwrap_err(),
            "unspecified"
        );
    }
}
