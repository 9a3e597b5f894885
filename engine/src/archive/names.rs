//! Entry names: lexical cleaning and whiteout markers.

use super::ArchiveError;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The prefix of a whiteout (`.wh.NAME` deletes NAME from the layers below).
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker: the directory hides everything the layers below put in it.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The components an archive path names under the root, cleaned lexically as containerd does
/// (Go's `filepath.Clean`) before anything touches the filesystem: empty and `.` components
/// go, `..` drops the previous component and never climbs above the root, a leading `/` is
/// the root. `.`, `./`, `/` and `` are the root itself (an empty list); `../../x` is `x`.
pub fn clean(raw: &[u8]) -> Result<Vec<OsString>, ArchiveError> {
    if raw.contains(&0) {
        return Err(ArchiveError::Invalid(format!(
            "entry name {:?} contains a NUL byte",
            String::from_utf8_lossy(raw)
        )));
    }
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            name => out.push(OsStr::from_bytes(name).to_os_string()),
        }
    }
    Ok(out)
}

/// Joins cleaned components into a relative path.
pub fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// A human form of an entry name for messages and logs.
pub fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// What a final path component means for whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary name.
    No,
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Remove(&'a OsStr),
}

/// Classifies the last component of a cleaned name. `.wh.`, `.wh..` and `.wh...` would
/// delete the directory itself or its parent, so they are refused (T6), like containerd's
/// `validateWhiteout`.
pub fn whiteout(base: &OsStr) -> Result<Whiteout<'_>, ArchiveError> {
    let bytes = base.as_bytes();
    if bytes == OPAQUE_MARKER {
        return Ok(Whiteout::Opaque);
    }
    let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Whiteout::No);
    };
    if matches!(target, b"" | b"." | b"..") {
        return Err(ArchiveError::Invalid(format!(
            "invalid whiteout name {:?}",
            display(bytes)
        )));
    }
    Ok(Whiteout::Remove(OsStr::from_bytes(target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(raw: &str) -> Vec<String> {
        clean(raw.as_bytes())
            .unwrap()
            .into_iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cleaning_never_climbs_above_the_root() {
        for root in [".", "./", "/", "", "//", "..", "../..", "a/.."] {
            assert!(names(root).is_empty(), "{root:?}");
        }
        assert_eq!(names("../../x"), ["x"]);
        assert_eq!(names("/etc//passwd"), ["etc", "passwd"]);
        assert_eq!(names("a/b/../../../c/./d/"), ["c", "d"]);
        assert_eq!(names("localetc/sub/.."), ["localetc"]);
        assert!(clean(b"a\0b").is_err());
    }

    #[test]
    fn whiteouts_are_classified_and_bad_ones_refused() {
        fn w(s: &str) -> Result<Whiteout<'_>, ArchiveError> {
            whiteout(OsStr::new(s))
        }
        assert_eq!(w("file").unwrap(), Whiteout::No);
        assert_eq!(w(".wh..wh..opq").unwrap(), Whiteout::Opaque);
        assert_eq!(w(".wh.x").unwrap(), Whiteout::Remove(OsStr::new("x")));
        assert_eq!(
            w(".wh..wh.other").unwrap(),
            Whiteout::Remove(OsStr::new(".wh.other"))
        );
        for bad in [".wh.", ".wh..", ".wh..."] {
            let err = w(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid archive"), "{bad}: {err}");
        }
    }
}
