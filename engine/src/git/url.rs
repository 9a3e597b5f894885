//! Git remote URLs: which schemes are allowed, where credentials go, and how a URL is shown.
//!
//! Credentials embedded in an http(s) URL (`https://user:token@host/repo.git`) are taken out
//! of it here: git only ever sees the bare URL, the credentials travel as an HTTP header in the
//! environment (see `cli.rs`), and every message shows the URL with its user-info masked (G6).

use super::GitError;
use base64::Engine as _;

/// What replaces user-info in every message.
pub(crate) const MASK: &str = "xxxxx";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
    Git,
    Ssh,
}

/// The user name sent with `httpAuthToken` when `httpAuthUsername` is empty, as Dagger does
/// (the name GitHub and GitLab accept for tokens).
pub const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";

/// Credentials given apart from the URL. Deliberately not `Debug`.
pub enum HttpCredentials {
    /// Basic authentication with a token as the password.
    Token { username: String, token: String },
    /// The whole `Authorization` header value (e.g. `Bearer ...`).
    Header(String),
}

/// HTTP credentials taken from a URL. Deliberately not `Debug`.
#[derive(Clone)]
pub(crate) struct HttpAuth {
    /// The value of the `Authorization` header.
    pub header: String,
    /// Every form a secret may take in text: redacted from all messages.
    pub secrets: Vec<String>,
}

/// A parsed, allowed remote.
#[derive(Clone)]
pub struct GitUrl {
    scheme: Scheme,
    /// What git is given: no user-info (for http), no fragment.
    remote: String,
    /// What messages show: `remote` with user-info masked.
    display: String,
    /// `scheme://host[:port]/`: the scope the credentials are sent to.
    origin: String,
    auth: Option<HttpAuth>,
}

impl std::fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitUrl")
            .field("url", &self.display)
            .finish()
    }
}

impl GitUrl {
    /// Parses `input` the way Dagger does: `scheme://…` for https, http, git and ssh,
    /// scp-style `user@host:path` for ssh, and anything else as `https://<input>`.
    pub fn parse(input: &str) -> Result<GitUrl, GitError> {
        let shown = match input.rfind('@') {
            // Scheme-less `user:token@host/path` is https too: mask it the same way.
            Some(at) if !input.contains("://") => format!("{MASK}{}", &input[at..]),
            _ => redact_userinfo(input),
        };
        let invalid = |reason: &str| GitError::InvalidUrl {
            url: shown.clone(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(invalid("empty URL"));
        }
        // Option injection (G3): a URL is an argument to git even after `--`-less callers.
        if input.starts_with('-') {
            return Err(invalid("a URL must not start with '-'"));
        }
        if input.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("control characters or whitespace in URL"));
        }
        if input.starts_with('/') || input.starts_with('.') || input.starts_with('~') {
            return Err(GitError::Unsupported {
                url: shown,
                reason: "local paths are not supported; use an https, http, git or ssh URL".into(),
            });
        }
        if input.contains("://") {
            return Self::parse_with_scheme(input, &shown);
        }
        if let Some((user, host, _path)) = scp_parts(input) {
            if user.is_empty() || host.is_empty() {
                return Err(invalid("malformed scp-style URL"));
            }
            return Ok(GitUrl {
                scheme: Scheme::Ssh,
                remote: input.to_string(),
                display: input.to_string(),
                origin: format!("ssh://{host}/"),
                auth: None,
            });
        }
        // Dagger tries https:// first for scheme-less URLs (`github.com/org/repo`).
        Self::parse_with_scheme(&format!("https://{input}"), &shown)
    }

    fn parse_with_scheme(input: &str, shown: &str) -> Result<GitUrl, GitError> {
        let invalid = |reason: String| GitError::InvalidUrl {
            url: shown.to_string(),
            reason,
        };
        let mut url = url::Url::parse(input).map_err(|e| invalid(e.to_string()))?;
        let scheme = match url.scheme() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            "git" => Scheme::Git,
            "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
            other => {
                return Err(GitError::Unsupported {
                    url: shown.to_string(),
                    reason: format!(
                        "scheme {other:?} is not supported; use https, http, git or ssh"
                    ),
                })
            }
        };
        if url.fragment().is_some() {
            return Err(invalid(
                "URL fragments (#ref:subdir) are not supported; select the ref with branch, tag, commit or ref"
                    .into(),
            ));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => return Err(invalid("no host".into())),
        };
        let origin = match url.port() {
            Some(p) => format!("{}://{host}:{p}/", url.scheme()),
            None => format!("{}://{host}/", url.scheme()),
        };
        let has_user = !url.username().is_empty();
        let password = url.password().map(str::to_string);
        let mut auth = None;
        match scheme {
            Scheme::Https | Scheme::Http if has_user || password.is_some() => {
                let user = percent_decode(url.username());
                let pass = password.as_deref().map(percent_decode).unwrap_or_default();
                let pair = format!("{user}:{pass}");
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
                let mut secrets = vec![encoded.clone(), pair];
                for s in [
                    url.username().to_string(),
                    user,
                    password.clone().unwrap_or_default(),
                    pass,
                ] {
                    // Very short strings would mask unrelated text and protect nothing.
                    if s.len() >= 3 && !secrets.contains(&s) {
                        secrets.push(s);
                    }
                }
                auth = Some(HttpAuth {
                    header: format!("Basic {encoded}"),
                    secrets,
                });
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            Scheme::Git if has_user || password.is_some() => {
                return Err(invalid("git:// URLs cannot carry credentials".into()));
            }
            Scheme::Ssh if password.is_some() => {
                return Err(invalid(
                    "ssh URLs cannot carry a password; use an SSH agent socket".into(),
                ));
            }
            _ => {}
        }
        let remote = url.to_string();
        let display = if auth.is_some() {
            let mut masked = url.clone();
            let _ = masked.set_username(MASK);
            masked.to_string()
        } else {
            remote.clone()
        };
        Ok(GitUrl {
            scheme,
            remote,
            display,
            origin,
            auth,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The URL git is given: never contains credentials.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// The URL as messages show it.
    pub fn display(&self) -> &str {
        &self.display
    }

    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn auth(&self) -> Option<&HttpAuth> {
        self.auth.as_ref()
    }

    /// Replaces the URL's credentials with ones given apart from it (`httpAuthToken`,
    /// `httpAuthHeader`). Only http(s) URLs carry HTTP credentials.
    pub fn with_credentials(mut self, creds: HttpCredentials) -> Result<GitUrl, GitError> {
        if !matches!(self.scheme, Scheme::Https | Scheme::Http) {
            return Err(GitError::InvalidUrl {
                url: self.display.clone(),
                reason:
                    "HTTP credentials (httpAuthToken, httpAuthHeader) need an http or https URL"
                        .into(),
            });
        }
        let (header, mut secrets) = match creds {
            HttpCredentials::Token { username, token } => {
                let username = if username.is_empty() {
                    DEFAULT_TOKEN_USERNAME.to_string()
                } else {
                    username
                };
                let pair = format!("{username}:{token}");
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
                (format!("Basic {encoded}"), vec![encoded, pair, token])
            }
            HttpCredentials::Header(value) => (value.clone(), vec![value]),
        };
        // Very short strings would mask unrelated text and protect nothing.
        secrets.retain(|s| s.len() >= 3);
        self.auth = Some(HttpAuth { header, secrets });
        // The URL itself no longer names a user: show it as git is given it.
        self.display = self.remote.clone();
        Ok(self)
    }

    /// Masks user-info in URLs and every known form of this URL's secrets in `text`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = redact_userinfo(text);
        if let Some(auth) = &self.auth {
            // Longest first, so a secret that contains another is masked whole.
            let mut secrets: Vec<&String> = auth.secrets.iter().collect();
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
            for s in secrets {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }
}

/// `user@host:path` (BuildKit's scp-style form: the user is required).
fn scp_parts(s: &str) -> Option<(&str, &str, &str)> {
    let (user, rest) = s.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let word = |w: &str| {
        w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    (word(user) && word(host) && !path.starts_with("//")).then_some((user, host, path))
}

/// Masks the user-info of every `scheme://user-info@host` in `text`.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || "'\"<>`".contains(c)
            })
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(Ok(v)) = hex.map(|h| u8::from_str_radix(h, 16)) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_normalisation() {
        let u = GitUrl::parse("HTTPS://Example.COM:443/org/repo.git").unwrap();
        assert_eq!(u.scheme(), Scheme::Https);
        assert_eq!(u.remote(), "https://example.com/org/repo.git");
        assert_eq!(u.origin(), "https://example.com/");
        let u = GitUrl::parse("git://127.0.0.1:9418/repo.git").unwrap();
        assert_eq!(u.scheme(), Scheme::Git);
        assert_eq!(u.origin(), "git://127.0.0.1:9418/");
        let u = GitUrl::parse("github.com/dagger/dagger").unwrap();
        assert_eq!(u.remote(), "https://github.com/dagger/dagger");
        let u = GitUrl::parse("git@github.com:dagger/dagger.git").unwrap();
        assert_eq!(u.scheme(), Scheme::Ssh);
        assert_eq!(u.remote(), "git@github.com:dagger/dagger.git");
        let u = GitUrl::parse("ssh://git@host:2222/repo.git").unwrap();
        assert_eq!(u.scheme(), Scheme::Ssh);
        assert!(u.auth().is_none());
    }

    #[test]
    fn rejected_urls() {
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "-oProxyCommand=x",
            "file:///etc",
            "/srv/repo.git",
            "./repo",
            "ext::sh -c touch% /tmp/x",
            "https://host/repo.git#main:sub",
            "https://host/a\nb",
            "git://user:pw@host/repo.git",
            "ssh://git:pw@host/repo.git",
            "ftp://host/repo.git",
        ] {
            assert!(GitUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn credentials_leave_the_url() {
        let u = GitUrl::parse("https://alice:s3cr%40t@127.0.0.1:8443/private.git").unwrap();
        assert_eq!(u.remote(), "https://127.0.0.1:8443/private.git");
        assert_eq!(u.display(), "https://xxxxx@127.0.0.1:8443/private.git");
        assert_eq!(u.origin(), "https://127.0.0.1:8443/");
        let auth = u.auth().unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("alice:s3cr@t");
        assert_eq!(auth.header, format!("Basic {expected}"));
        let msg = format!(
            "fatal: https://alice:s3cr%40t@127.0.0.1:8443/ said s3cr@t and {expected} and s3cr%40t"
        );
        let red = u.redact(&msg);
        for s in ["s3cr@t", "s3cr%40t", expected.as_str(), "alice:"] {
            assert!(!red.contains(s), "{s} in {red}");
        }
        // Errors about scheme-less URLs mask credentials too.
        let e = GitUrl::parse("bob:t0psecret@host/a b").err().unwrap();
        assert!(!e.to_string().contains("t0psecret"), "{e}");
        let e = GitUrl::parse("https://bob:t0psecret@host/a b")
            .err()
            .unwrap();
        assert!(!e.to_string().contains("t0psecret"), "{e}");
        // A token in the user name (GitHub style) is a secret too.
        let u = GitUrl::parse("https://ghp_abcdef@github.com/o/r").unwrap();
        assert!(!u.display().contains("ghp_"));
        assert!(!u.redact("user ghp_abcdef denied").contains("ghp_"));
    }

    #[test]
    fn userinfo_is_masked_in_any_text() {
        assert_eq!(
            redact_userinfo("clone 'http://u:p@h:1/r' and git://h/x and ssh://git@h/y"),
            "clone 'http://xxxxx@h:1/r' and git://h/x and ssh://xxxxx@h/y"
        );
        assert_eq!(redact_userinfo("no urls here"), "no urls here");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%3Ac"), "a@b:c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
