//! Platforms as Dagger writes them: `os/arch[/variant]`, e.g. `linux/amd64`, `linux/arm/v7`.

use std::fmt;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid platform {input:?}: {reason}")]
pub struct PlatformError {
    pub input: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses and normalises like containerd's `platforms.Parse`: architecture aliases are
    /// folded (`x86_64` → `amd64`, `aarch64` → `arm64`) and `arm64/v8` loses its default variant.
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        let err = |reason| PlatformError {
            input: input.to_string(),
            reason,
        };
        let lower = input.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(err("expected os/arch[/variant]"));
        }
        let valid = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !parts.iter().all(|p| valid(p)) {
            return Err(err("only letters, digits, '_' and '-' are allowed"));
        }
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            [_] => return Err(err("expected os/arch[/variant], e.g. linux/amd64")),
            _ => return Err(err("too many components")),
        };
        let (arch, variant) = normalize_arch(arch, variant);
        Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// The platform this engine runs containers for natively.
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(String::from),
        }
    }
}

fn normalize_arch<'a>(arch: &'a str, variant: Option<&'a str>) -> (&'a str, Option<&'a str>) {
    match (arch, variant) {
        ("i386", _) => ("386", None),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.filter(|v| *v != "v1")),
        ("aarch64" | "arm64", v) => ("arm64", v.filter(|v| *v != "v8")),
        ("armhf", _) => ("arm", Some("v7")),
        ("armel", _) => ("arm", Some("v6")),
        ("arm", None) => ("arm", Some("v7")),
        (a, v) => (a, v),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        let p = |s| Platform::parse(s).map(|p| p.to_string());
        assert_eq!(p("linux/amd64"), Ok("linux/amd64".into()));
        assert_eq!(p("linux/x86_64"), Ok("linux/amd64".into()));
        assert_eq!(p("Linux/AArch64"), Ok("linux/arm64".into()));
        assert_eq!(p("linux/arm64/v8"), Ok("linux/arm64".into()));
        assert_eq!(p("linux/arm"), Ok("linux/arm/v7".into()));
        assert_eq!(p("linux/arm/v6"), Ok("linux/arm/v6".into()));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//amd64").is_err());
        assert!(Platform::parse("linux/amd64/v2/x").is_err());
        assert!(Platform::parse("linux/am d64").is_err());
    }

    #[test]
    fn host_platform_is_linux() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert_eq!(Platform::parse(&h.to_string()), Ok(h));
    }
}
