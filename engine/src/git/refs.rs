//! Refs as a remote advertises them (`git ls-remote --symref`), looked up with Dagger's
//! git-checkout-like rules, and the name checks that keep refs from becoming git options (G3).

use std::collections::HashMap;

/// A resolved ref: a commit, and the full ref name it was reached through (none for a bare
/// commit id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ref {
    pub name: Option<String>,
    pub sha: String,
}

/// Why a lookup failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupError {
    NotFound,
    /// The remote advertised something that must not reach git's command line.
    Unsafe(String),
}

/// Everything `ls-remote --symref` listed.
#[derive(Debug, Default, Clone)]
pub struct RemoteRefs {
    /// `(name, sha)` in the order the remote listed them (sorted by name).
    refs: Vec<(String, String)>,
    /// `HEAD` → `refs/heads/main`.
    symrefs: HashMap<String, String>,
}

/// A full commit id (SHA-1 or SHA-256), lower-case hex.
pub fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a ref name a client sent. Names are only compared with what the remote advertised,
/// but one starting with `-` is refused outright (G3).
pub fn check_user_ref(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty ref name".into());
    }
    if name.starts_with('-') {
        return Err("a ref name must not start with '-'".into());
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("control characters in ref name".into());
    }
    Ok(())
}

/// Checks a full ref name the remote advertised before it is used in a command line: the
/// rules of `git check-ref-format`, plus no component (so no short branch name) starting
/// with `-` (G3: a default branch named `--upload-pack=…` must not become an option).
pub fn check_remote_ref(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("unsafe ref name {name:?}: {why}"));
    if name == "HEAD" {
        return Ok(());
    }
    if !name.starts_with("refs/") {
        return bad("not under refs/");
    }
    if name.ends_with('/') || name.ends_with('.') || name.ends_with(".lock") {
        return bad("bad ending");
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return bad("forbidden sequence");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
    {
        return bad("forbidden character");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c.starts_with('.') || c.starts_with('-'))
    {
        return bad("a component starts with '.' or '-'");
    }
    Ok(())
}

impl RemoteRefs {
    /// Parses `git ls-remote --symref` output. Lines with a malformed object id are an error:
    /// a remote that sends them is not one to fetch from.
    pub fn parse(out: &str) -> Result<RemoteRefs, String> {
        let mut refs = Vec::new();
        let mut symrefs = HashMap::new();
        for line in out.lines() {
            let Some((left, name)) = line.split_once('\t') else {
                continue;
            };
            if let Some(target) = left.strip_prefix("ref: ") {
                symrefs.insert(name.to_string(), target.to_string());
            } else if is_commit_sha(left) {
                refs.push((name.to_string(), left.to_string()));
            } else {
                return Err(format!("malformed ls-remote line {line:?}"));
            }
        }
        Ok(RemoteRefs { refs, symrefs })
    }

    /// Resolves `target` like Dagger (`util/gitutil.Remote.Lookup`), i.e. like git checkout:
    /// a full commit id as is; `HEAD` through its symref; else an exact or `refs/`-relative
    /// name, then a branch, then a tag (peeled to its commit).
    pub fn lookup(&self, target: &str) -> Result<Ref, LookupError> {
        if is_commit_sha(target) {
            return Ok(Ref {
                name: None,
                sha: target.to_string(),
            });
        }
        let strip = |p: &str| target.strip_prefix(p).unwrap_or(target).to_string();
        let partial = format!("refs/{}", strip("refs/"));
        let head = format!("refs/heads/{}", strip("refs/heads/"));
        let tag = format!("refs/tags/{}", strip("refs/tags/"));
        let peeled = format!("{tag}^{{}}");
        let (mut exact, mut head_match, mut tag_match, mut peeled_match) = (None, None, None, None);
        for (name, sha) in &self.refs {
            if *name == head {
                head_match = Some(sha);
            } else if *name == peeled {
                peeled_match = Some(sha);
            } else if *name == tag {
                tag_match = Some(sha);
            } else if *name == partial || name == target {
                exact = Some((name, sha));
            }
        }
        let (name, sha) = if let Some((name, sha)) = exact {
            (name.clone(), sha)
        } else if let Some(sha) = head_match {
            (head, sha)
        } else if let Some(sha) = peeled_match.or(tag_match) {
            (tag, sha)
        } else {
            return Err(LookupError::NotFound);
        };
        // HEAD (or another symref) resolves to the branch it points at.
        let name = self.symrefs.get(&name).cloned().unwrap_or(name);
        check_remote_ref(&name).map_err(LookupError::Unsafe)?;
        Ok(Ref {
            name: Some(name),
            sha: sha.clone(),
        })
    }

    /// Tag names (without `refs/tags/`) matching any of `patterns` (all when empty).
    pub fn tags(&self, patterns: &[String]) -> Vec<String> {
        self.short_names("refs/tags/", patterns)
    }

    /// Branch names (without `refs/heads/`) matching any of `patterns` (all when empty).
    pub fn branches(&self, patterns: &[String]) -> Vec<String> {
        self.short_names("refs/heads/", patterns)
    }

    fn short_names(&self, prefix: &str, patterns: &[String]) -> Vec<String> {
        self.refs
            .iter()
            .map(|(name, _)| name)
            .filter(|n| !n.ends_with("^{}"))
            .filter(|n| patterns.is_empty() || patterns.iter().any(|p| tail_match(p, n)))
            .filter_map(|n| n.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// `git ls-remote` pattern semantics: the pattern matches the whole name or a tail of it that
/// starts after a `/` (so `main` matches `refs/heads/main` but not `refs/heads/xmain`).
pub fn tail_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if wildmatch(&p, &n) {
        return true;
    }
    n.iter()
        .enumerate()
        .filter(|(_, c)| **c == '/')
        .any(|(i, _)| wildmatch(&p, &n[i + 1..]))
}

/// git's wildmatch without `WM_PATHNAME`: `*` and `?` match `/` too; `[...]` classes with
/// ranges, `!`/`^` negation and `[:alpha:]`-style names; `\` escapes.
fn wildmatch(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => {
            let rest = {
                let mut i = 0;
                while p.get(i) == Some(&'*') {
                    i += 1;
                }
                &p[i..]
            };
            (0..=s.len()).any(|k| wildmatch(rest, &s[k..]))
        }
        Some('?') => !s.is_empty() && wildmatch(&p[1..], &s[1..]),
        Some('[') => match (s.first(), class(&p[1..])) {
            (Some(c), Some((matches, used))) => matches(*c) && wildmatch(&p[1 + used..], &s[1..]),
            // An unterminated class matches a literal '['.
            (Some('['), None) => wildmatch(&p[1..], &s[1..]),
            _ => false,
        },
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && wildmatch(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && wildmatch(&p[1..], &s[1..]),
    }
}

type ClassFn = Box<dyn Fn(char) -> bool>;

/// Parses a class body after `[`: the matcher and how many pattern chars it used (with `]`).
fn class(p: &[char]) -> Option<(ClassFn, usize)> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut named: Vec<String> = Vec::new();
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        if c == '[' && p.get(i + 1) == Some(&':') {
            let end =
                (i + 2..p.len().saturating_sub(1)).find(|&j| p[j] == ':' && p[j + 1] == ']')?;
            named.push(p[i + 2..end].iter().collect());
            i = end + 2;
            continue;
        }
        let lo = if c == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            c
        };
        i += 1;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
            let hi = *p.get(i + 1)?;
            ranges.push((lo, hi));
            i += 2;
        } else {
            ranges.push((lo, lo));
        }
    }
    let f = move |c: char| {
        let hit = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi)
            || named.iter().any(|n| named_class(n, c));
        hit != negated
    };
    Some((Box::new(f), i))
}

fn named_class(name: &str, c: char) -> bool {
    match name {
        "alnum" => c.is_alphanumeric(),
        "alpha" => c.is_alphabetic(),
        "blank" => c == ' ' || c == '\t',
        "cntrl" => c.is_control(),
        "digit" => c.is_ascii_digit(),
        "graph" => !c.is_whitespace() && !c.is_control(),
        "lower" => c.is_lowercase(),
        "print" => !c.is_control(),
        "punct" => c.is_ascii_punctuation(),
        "space" => c.is_whitespace(),
        "upper" => c.is_uppercase(),
        "xdigit" => c.is_ascii_hexdigit(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const T: &str = "3333333333333333333333333333333333333333";

    fn remote() -> RemoteRefs {
        RemoteRefs::parse(&format!(
            "ref: refs/heads/main\tHEAD\n{A}\tHEAD\n{B}\trefs/heads/dev\n{A}\trefs/heads/main\n\
             {A}\trefs/heads/v1\n{B}\trefs/pull/1/head\n{A}\trefs/tags/light\n\
             {T}\trefs/tags/v1\n{B}\trefs/tags/v1^{{}}\n{A}\trefs/tags/v2.0\n"
        ))
        .unwrap()
    }

    fn named(name: &str, sha: &str) -> Ref {
        Ref {
            name: Some(name.into()),
            sha: sha.into(),
        }
    }

    #[test]
    fn lookup_follows_checkout_rules() {
        let r = remote();
        assert_eq!(r.lookup("HEAD").unwrap(), named("refs/heads/main", A));
        assert_eq!(r.lookup("main").unwrap(), named("refs/heads/main", A));
        assert_eq!(
            r.lookup("refs/heads/dev").unwrap(),
            named("refs/heads/dev", B)
        );
        // Branches win over tags of the same name, like git checkout.
        assert_eq!(r.lookup("v1").unwrap(), named("refs/heads/v1", A));
        // Annotated tags resolve to the commit, not the tag object.
        assert_eq!(r.lookup("refs/tags/v1").unwrap(), named("refs/tags/v1", B));
        assert_eq!(r.lookup("light").unwrap(), named("refs/tags/light", A));
        assert_eq!(
            r.lookup("pull/1/head").unwrap(),
            named("refs/pull/1/head", B)
        );
        assert_eq!(
            r.lookup(A).unwrap(),
            Ref {
                name: None,
                sha: A.into()
            }
        );
        assert_eq!(r.lookup("nope"), Err(LookupError::NotFound));
        assert_eq!(r.lookup("refs/heads/nope"), Err(LookupError::NotFound));
    }

    #[test]
    fn hostile_default_branch_is_rejected() {
        let r = RemoteRefs::parse(&format!(
            "ref: refs/heads/--upload-pack=touch\tHEAD\n{A}\tHEAD\n{A}\trefs/heads/--upload-pack=touch\n"
        ))
        .unwrap();
        assert!(matches!(r.lookup("HEAD"), Err(LookupError::Unsafe(_))));
        let r = RemoteRefs::parse(&format!("ref: -x\tHEAD\n{A}\tHEAD\n")).unwrap();
        assert!(matches!(r.lookup("HEAD"), Err(LookupError::Unsafe(_))));
        assert!(RemoteRefs::parse("--upload-pack=x\trefs/heads/main\n").is_err());
    }

    #[test]
    fn ref_name_checks() {
        assert!(check_user_ref("--upload-pack=touch /tmp/x").is_err());
        assert!(check_user_ref("-b").is_err());
        assert!(check_user_ref("").is_err());
        assert!(check_user_ref("feature/x").is_ok());
        for ok in [
            "HEAD",
            "refs/heads/main",
            "refs/tags/v1.0",
            "refs/pull/1/head",
        ] {
            assert!(check_remote_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "main",
            "refs/heads/-x",
            "refs/heads/a b",
            "refs/heads/a..b",
            "refs/heads/.x",
            "refs/heads/x.lock",
            "refs/heads/x/",
            "refs/heads/a:b",
            "refs/heads/a\nb",
            "-refs/heads/x",
        ] {
            assert!(check_remote_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_branches_with_patterns() {
        let r = remote();
        assert_eq!(r.tags(&[]), ["light", "v1", "v2.0"]);
        assert_eq!(r.branches(&[]), ["dev", "main", "v1"]);
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(r.tags(&p(&["v*"])), ["v1", "v2.0"]);
        assert_eq!(r.tags(&p(&["refs/tags/v*"])), ["v1", "v2.0"]);
        assert_eq!(r.branches(&p(&["main", "de?"])), ["dev", "main"]);
        assert_eq!(r.branches(&p(&["ain"])), Vec::<String>::new());
    }

    #[test]
    fn wildmatch_semantics() {
        for (p, n, want) in [
            ("main", "refs/heads/main", true),
            ("heads/main", "refs/heads/main", true),
            ("ain", "refs/heads/main", false),
            ("v[0-9].*", "refs/tags/v1.2", true),
            ("v[!0-9]*", "refs/tags/v1.2", false),
            ("v[^0-9]*", "refs/tags/vx", true),
            ("[[:alpha:]]*", "refs/tags/abc", true),
            ("*", "refs/tags/abc", true),
            ("refs/*/main", "refs/heads/main", true),
            ("refs/*", "refs/heads/a/b", true),
            ("\\*", "refs/tags/*", true),
            ("v?", "refs/tags/v1", true),
            ("v?", "refs/tags/v10", false),
            ("[", "refs/tags/[", true),
        ] {
            assert_eq!(tail_match(p, n), want, "{p} vs {n}");
        }
    }
}
