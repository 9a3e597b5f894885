//! `include`/`exclude` for copies (`withDirectory`), with the glob syntax of `Directory.glob`
//! ([`super::fs::match_segments`]: `*`, `?`, `[...]`, `**`) and dockerignore's rules:
//!
//! * a pattern that matches a directory covers everything below it;
//! * with includes, only paths matched by one of them (or below a matched directory) are
//!   copied, plus the directories that lead to them;
//! * excludes apply in order, and `!pattern` re-includes what an earlier one excluded.

use super::fs::{match_one, match_segments, FsError};

/// What a copy does with one source entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Copy it (a directory is created, and its children are decided one by one).
    Copy,
    /// A directory that is not copied itself, but may contain copied paths: created only if one
    /// of them is.
    Descend,
    /// Neither it nor anything below it.
    Skip,
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    negated: bool,
}

impl Pattern {
    fn parse(raw: &str, allow_negation: bool) -> Result<Option<Pattern>, FsError> {
        let (negated, body) = match raw.strip_prefix('!') {
            Some(rest) if allow_negation => (true, rest),
            _ => (false, raw),
        };
        let segments: Vec<String> = body
            .trim_start_matches("./")
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .map(str::to_string)
            .collect();
        if segments.is_empty() {
            return Ok(None);
        }
        let p = Pattern { segments, negated };
        // Reject a malformed pattern now, not at the first path that reaches the bad part.
        for s in &p.segments {
            if s != "**" {
                match_one(s.as_bytes(), b"").map_err(|reason| FsError::BadPattern {
                    pattern: raw.into(),
                    reason,
                })?;
                if s.contains('[') && !s.contains(']') {
                    return Err(FsError::BadPattern {
                        pattern: raw.into(),
                        reason: "unterminated [".into(),
                    });
                }
            }
        }
        Ok(Some(p))
    }

    fn segs(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// Matches `path` or one of its ancestors (a matched directory covers its subtree).
    fn covers(&self, path: &[&str]) -> bool {
        let pat = self.segs();
        (1..=path.len()).any(|k| match_segments(&pat, &path[..k]).unwrap_or(false))
    }

    /// Whether something strictly below `path` could match.
    fn may_match_below(&self, path: &[&str]) -> bool {
        prefix_of_match(&self.segs(), path)
    }
}

/// Whether `path` extended by at least one segment could match `pat`.
fn prefix_of_match(pat: &[&str], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, _) => false,
        (Some(&"**"), _) => true,
        (Some(_), None) => true,
        (Some(p), Some(s)) => {
            match_one(p.as_bytes(), s.as_bytes()).unwrap_or(false)
                && prefix_of_match(&pat[1..], &path[1..])
        }
    }
}

/// Compiled include and exclude lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, FsError> {
        let mut f = Filter::default();
        for raw in include {
            f.include.extend(Pattern::parse(raw, false)?);
        }
        for raw in exclude {
            f.exclude.extend(Pattern::parse(raw, true)?);
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The decision for the entry at `path` (relative to the copied directory, `/`-separated).
    pub fn decide(&self, path: &str, is_dir: bool) -> Decision {
        if self.is_empty() {
            return Decision::Copy;
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for p in &self.exclude {
            if p.covers(&segs) {
                excluded = !p.negated;
            }
        }
        let included = self.include.is_empty() || self.include.iter().any(|p| p.covers(&segs));
        if !excluded && included {
            return Decision::Copy;
        }
        let reachable = !excluded
            || self
                .exclude
                .iter()
                .any(|p| p.negated && p.may_match_below(&segs));
        let wanted = included || self.include.iter().any(|p| p.may_match_below(&segs));
        if is_dir && reachable && wanted {
            Decision::Descend
        } else {
            Decision::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> Filter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn empty_filter_copies_everything() {
        assert_eq!(f(&[], &[]).decide("a/b", false), Decision::Copy);
    }

    #[test]
    fn excludes_cover_subtrees_and_negation_reincludes() {
        let x = f(&[], &["node_modules/", "*.log", "build", "!build/keep"]);
        assert_eq!(x.decide("node_modules", true), Decision::Skip);
        assert_eq!(x.decide("node_modules/a/b.js", false), Decision::Skip);
        assert_eq!(x.decide("app.log", false), Decision::Skip);
        assert_eq!(
            x.decide("d/app.log", false),
            Decision::Copy,
            "* stays in one segment"
        );
        assert_eq!(x.decide("src/main.rs", false), Decision::Copy);
        assert_eq!(x.decide("build", true), Decision::Descend);
        assert_eq!(x.decide("build/keep", false), Decision::Copy);
        assert_eq!(x.decide("build/other", false), Decision::Skip);
        let deep = f(&[], &["**/*.tmp"]);
        assert_eq!(deep.decide("a/b/c.tmp", false), Decision::Skip);
        assert_eq!(deep.decide("c.tmp", false), Decision::Skip);
        assert_eq!(deep.decide("a/b/c.txt", false), Decision::Copy);
    }

    #[test]
    fn includes_select_paths_and_the_directories_leading_to_them() {
        let x = f(&["src/**/*.rs", "README.md", "docs"], &["docs/private"]);
        assert_eq!(x.decide("README.md", false), Decision::Copy);
        assert_eq!(x.decide("LICENSE", false), Decision::Skip);
        assert_eq!(x.decide("src", true), Decision::Descend);
        assert_eq!(x.decide("src/a/lib.rs", false), Decision::Copy);
        assert_eq!(x.decide("src/lib.rs", false), Decision::Copy);
        assert_eq!(x.decide("src/a/lib.c", false), Decision::Skip);
        assert_eq!(x.decide("target", true), Decision::Skip);
        assert_eq!(x.decide("docs", true), Decision::Copy);
        assert_eq!(x.decide("docs/guide/x.md", false), Decision::Copy);
        assert_eq!(x.decide("docs/private", true), Decision::Skip);
        assert_eq!(x.decide("docs/private/k", false), Decision::Skip);
        let top = f(&["*.txt"], &[]);
        assert_eq!(top.decide("a.txt", false), Decision::Copy);
        assert_eq!(top.decide("d", true), Decision::Skip);
        assert_eq!(top.decide("d/a.txt", false), Decision::Skip);
    }

    #[test]
    fn patterns_are_normalised_and_validated() {
        let x = f(&["./a/", "/b"], &[""]);
        assert_eq!(x.decide("a/x", false), Decision::Copy);
        assert_eq!(x.decide("b", false), Decision::Copy);
        assert_eq!(x.decide("c", false), Decision::Skip);
        assert!(Filter::new(&["[a".into()], &[]).is_err());
        assert!(Filter::new(&[], &["x/[".into()]).is_err());
    }
}
