//! `$VAR` / `${VAR}` expansion against a container's environment, as Go's `os.Expand` does it
//! (what Dagger applies for `expand: true`): unknown variables become empty strings, and `$$`
//! is not an escape.

/// Expands `s` using `lookup`.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' || i + 1 == b.len() {
            let ch = s[i..].chars().next().unwrap_or_default();
            out.push(ch);
            i += ch.len_utf8().max(1);
            continue;
        }
        let rest = &s[i + 1..];
        if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) if end > 0 => {
                    out.push_str(&lookup(&inner[..end]).unwrap_or_default());
                    i += 2 + end + 1;
                }
                // `${}` or an unclosed brace: Go drops the bad syntax.
                Some(end) => i += 2 + end + 1,
                None => i = b.len(),
            }
            continue;
        }
        let name_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
            .count();
        let name_len = if name_len == 0 {
            // Go treats one special character after `$` as a name (`$*`, `$1`, `$@`...).
            rest.chars().next().map(|c| c.len_utf8()).unwrap_or(0)
        } else {
            name_len
        };
        out.push_str(&lookup(&rest[..name_len]).unwrap_or_default());
        i += 1 + name_len;
    }
    out
}

/// Looks a name up in `KEY=VALUE` entries, the last one winning.
pub fn env_lookup<'a>(env: &'a [String]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        env.iter().rev().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_go() {
        let env = vec![
            "HOME=/root".to_string(),
            "A=1".to_string(),
            "A=2".to_string(),
        ];
        let e = |s| expand(s, env_lookup(&env));
        assert_eq!(e("$HOME/x"), "/root/x");
        assert_eq!(e("${HOME}x"), "/rootx");
        assert_eq!(e("$A"), "2");
        assert_eq!(e("$NOPE-"), "-");
        assert_eq!(e("a$"), "a$");
        assert_eq!(e("${unclosed"), "");
        assert_eq!(e("é$A"), "é2");
        assert_eq!(e("no vars"), "no vars");
    }
}
