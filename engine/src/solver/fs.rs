//! Reading trees of snapshots for the Directory and File types: lexical path handling and
//! blocking reads inside a mounted, read-only view.

use crate::error::{Classify, ErrorKind};
use crate::snapshot::{SnapshotError, SnapshotId, Snapshotter};
use crate::sys::inroot::{EntryKind, Root};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FsError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("invalid glob pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for FsError {
    fn kind(&self) -> ErrorKind {
        match self {
            FsError::NotFound { .. } => ErrorKind::NotFound,
            FsError::NotADirectory { .. }
            | FsError::NotAFile { .. }
            | FsError::BadPattern { .. } => ErrorKind::InvalidArgument,
            FsError::Io { .. } | FsError::Internal(_) => ErrorKind::Internal,
            FsError::Snapshot(e) => e.kind(),
        }
    }
}

pub(crate) fn io_error(path: &str, e: std::io::Error) -> FsError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FsError::NotFound { path: path.into() },
        _ if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            FsError::NotADirectory { path: path.into() }
        }
        _ => FsError::Io {
            path: path.into(),
            source: e,
        },
    }
}

/// Joins `path` onto `base` and cleans it lexically; the result is absolute and never climbs
/// above `/`. Symlinks are resolved later, inside the root.
pub fn join(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { "" } else { base };
    for seg in start.split('/').chain(path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Runs `f` on a read-only view of `snapshot`, on a blocking thread.
pub async fn with_root<T, F>(
    snapshots: &Snapshotter,
    snapshot: Option<SnapshotId>,
    f: F,
) -> Result<T, FsError>
where
    T: Send + 'static,
    F: FnOnce(&Root) -> Result<T, FsError> + Send + 'static,
{
    let snapshots = snapshots.clone();
    tokio::task::spawn_blocking(move || {
        let view = snapshots.view(snapshot.as_ref())?;
        let root = Root::open(view.root()).map_err(|e| io_error("/", e))?;
        f(&root)
    })
    .await
    .map_err(|e| FsError::Internal(e.to_string()))?
}

/// Entry names of a directory, sorted, directories with a trailing `/` (as Dagger's SDKs of
/// this generation expect).
pub fn entries(root: &Root, path: &str) -> Result<Vec<String>, FsError> {
    let list = root.read_dir(path).map_err(|e| io_error(path, e))?;
    Ok(list
        .into_iter()
        .map(|(name, kind)| {
            if kind == EntryKind::Dir {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect())
}

pub fn require_dir(root: &Root, path: &str) -> Result<(), FsError> {
    match root.stat(path, true) {
        Ok(st) if st.kind == EntryKind::Dir => Ok(()),
        Ok(_) => Err(FsError::NotADirectory { path: path.into() }),
        Err(e) => Err(io_error(path, e)),
    }
}

pub fn require_file(root: &Root, path: &str) -> Result<u64, FsError> {
    match root.stat(path, true) {
        Ok(st) if st.kind == EntryKind::File => Ok(st.size),
        Ok(_) => Err(FsError::NotAFile { path: path.into() }),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Paths below `dir` (relative to it) that match a glob pattern with `*`, `?`, `[...]` and
/// `**` (any number of path segments).
pub fn glob(root: &Root, dir: &str, pattern: &str) -> Result<Vec<String>, FsError> {
    let pat: Vec<&str> = pattern
        .trim_start_matches("./")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if pat.is_empty() {
        return Err(FsError::BadPattern {
            pattern: pattern.into(),
            reason: "empty pattern".into(),
        });
    }
    let mut out = Vec::new();
    let mut bad = None;
    root.walk(dir, &mut |path, _kind| {
        let segs: Vec<&str> = path.split('/').collect();
        match match_segments(&pat, &segs) {
            Ok(true) => out.push(path.to_string()),
            Ok(false) => {}
            Err(e) => bad = Some(e),
        }
    })
    .map_err(|e| io_error(dir, e))?;
    if let Some(reason) = bad {
        return Err(FsError::BadPattern {
            pattern: pattern.into(),
            reason,
        });
    }
    Ok(out)
}

pub(crate) fn match_segments(pat: &[&str], path: &[&str]) -> Result<bool, String> {
    match (pat.first(), path.first()) {
        (None, None) => Ok(true),
        (None, Some(_)) => Ok(false),
        (Some(&"**"), _) => {
            if match_segments(&pat[1..], path)? {
                return Ok(true);
            }
            match path.first() {
                Some(_) => match_segments(pat, &path[1..]),
                None => Ok(false),
            }
        }
        (Some(_), None) => Ok(false),
        (Some(p), Some(s)) => {
            if match_one(p.as_bytes(), s.as_bytes())? {
                match_segments(&pat[1..], &path[1..])
            } else {
                Ok(false)
            }
        }
    }
}

/// One path segment against `*`, `?` and `[...]` (with `!`/`^` negation and ranges).
pub(crate) fn match_one(p: &[u8], s: &[u8]) -> Result<bool, String> {
    if p.is_empty() {
        return Ok(s.is_empty());
    }
    match p[0] {
        b'*' => {
            for i in 0..=s.len() {
                if match_one(&p[1..], &s[i..])? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        b'?' => Ok(!s.is_empty() && match_one(&p[1..], &s[1..])?),
        b'[' => {
            let end = p[1..]
                .iter()
                .position(|&c| c == b']')
                .map(|i| i + 1)
                .ok_or("unterminated [")?;
            let Some(&c) = s.first() else {
                return Ok(false);
            };
            let mut class = &p[1..end];
            let negate = matches!(class.first(), Some(b'!') | Some(b'^'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            Ok(hit != negate && match_one(&p[end + 1..], &s[1..])?)
        }
        b'\\' if p.len() > 1 => Ok(!s.is_empty() && s[0] == p[1] && match_one(&p[2..], &s[1..])?),
        c => Ok(!s.is_empty() && s[0] == c && match_one(&p[1..], &s[1..])?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_join() {
        assert_eq!(join("/", "etc/passwd"), "/etc/passwd");
        assert_eq!(join("/srv", "a/../b"), "/srv/b");
        assert_eq!(join("/srv", "/etc"), "/etc");
        assert_eq!(join("/", "../../x"), "/x");
        assert_eq!(join("/a", "."), "/a");
        assert_eq!(join("/", ""), "/");
    }

    #[test]
    fn glob_matching() {
        let m = |p: &str, s: &str| {
            let pat: Vec<&str> = p.split('/').collect();
            let segs: Vec<&str> = s.split('/').collect();
            match_segments(&pat, &segs).unwrap()
        };
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "d/a.txt"));
        assert!(m("**/*.txt", "d/e/a.txt"));
        assert!(m("**/*.txt", "a.txt"));
        assert!(m("d/**", "d/e/f"));
        assert!(m("?.rs", "a.rs"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(!m("*.txt", "a.txtx"));
    }
}
