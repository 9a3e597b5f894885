//! Credentials (Docker's `config.json`), `WWW-Authenticate` challenges and the bearer-token
//! cache. Secrets live only in [`Basic`] and [`CachedToken`], whose `Debug` output redacts them.

use super::RegistryError;
use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A username and password for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Basic {
    pub username: String,
    pub password: String,
}

impl Basic {
    pub fn header_value(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

impl fmt::Debug for Basic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Basic({}:<redacted>)", self.username)
    }
}

/// Registry credentials by host. Hosts are normalised the way Docker writes them in
/// `config.json`: `https://index.docker.io/v1/`, `index.docker.io`, `registry-1.docker.io`
/// and `docker.io` are one host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, Basic>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Anonymous access everywhere.
    pub fn none() -> Self {
        Credentials::default()
    }

    /// Reads `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. A missing file means
    /// anonymous access; an unreadable or malformed one is logged (without its contents) and
    /// also means anonymous access, so a broken config never stops public pulls.
    pub fn from_docker_config() -> Self {
        let Some(path) = docker_config_path() else {
            return Credentials::none();
        };
        match std::fs::read(&path) {
            Ok(bytes) => match Credentials::parse(&bytes, &path.display().to_string()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring docker credentials");
                    Credentials::none()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Credentials::none(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read docker credentials; pulling anonymously");
                Credentials::none()
            }
        }
    }

    /// Parses the `auths` section of a Docker `config.json`: each entry has a base64 `auth`
    /// (`user:password`) or `username` and `password`. Entries with neither (identity tokens,
    /// credential helpers) are skipped.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RegistryError> {
        Credentials::parse(bytes, "JSON")
    }

    fn parse(bytes: &[u8], source_name: &str) -> Result<Self, RegistryError> {
        let err = |reason: String| RegistryError::Credentials {
            source_name: source_name.to_string(),
            reason,
        };
        // Deliberately not echoing serde's message: it can quote the offending (secret) value.
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            err(format!(
                "not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut creds = Credentials::none();
        let Some(auths) = doc.get("auths") else {
            return Ok(creds);
        };
        let auths = auths
            .as_object()
            .ok_or_else(|| err("`auths` is not an object".into()))?;
        for (key, entry) in auths {
            let host = credential_host(key);
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
            let auth = field("auth");
            let basic = if !auth.is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim())
                    })
                    .map_err(|_| err(format!("the `auth` of {key:?} is not base64")))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| err(format!("the `auth` of {key:?} is not UTF-8")))?;
                let (user, pass) = decoded
                    .split_once(':')
                    .ok_or_else(|| err(format!("the `auth` of {key:?} is not user:password")))?;
                Basic {
                    username: user.to_string(),
                    password: pass.trim_end_matches('\n').to_string(),
                }
            } else if !field("username").is_empty() && !field("password").is_empty() {
                Basic {
                    username: field("username").to_string(),
                    password: field("password").to_string(),
                }
            } else {
                continue;
            };
            creds.by_host.insert(host, basic);
        }
        Ok(creds)
    }

    /// Adds (or replaces) the credentials for `host` (e.g. from `withRegistryAuth`).
    pub fn insert(&mut self, host: &str, username: &str, password: &str) {
        self.by_host.insert(
            credential_host(host),
            Basic {
                username: username.to_string(),
                password: password.to_string(),
            },
        );
    }

    /// Builder form of [`Credentials::insert`].
    pub fn with(mut self, host: &str, username: &str, password: &str) -> Self {
        self.insert(host, username, password);
        self
    }

    pub fn has(&self, host: &str) -> bool {
        self.by_host.contains_key(&credential_host(host))
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    pub(crate) fn get(&self, host: &str) -> Option<&Basic> {
        self.by_host.get(&credential_host(host))
    }

    /// Removes the credentials for `host`, if any.
    pub fn remove(&mut self, host: &str) {
        self.by_host.remove(&credential_host(host));
    }

    /// These credentials with `over`'s entries taking precedence host by host (e.g. the
    /// `withRegistryAuth` of one request over the engine's docker config).
    pub fn overlaid(&self, over: &Credentials) -> Credentials {
        let mut by_host = self.by_host.clone();
        for (host, basic) in &over.by_host {
            by_host.insert(host.clone(), basic.clone());
        }
        Credentials { by_host }
    }

    /// A salted digest of every entry (hosts, usernames and passwords): equal for equal
    /// credentials within this process, and revealing nothing about them. Empty when there
    /// are none. For keys of caches and shared flights, never for display.
    pub fn fingerprint(&self) -> String {
        if self.by_host.is_empty() {
            return String::new();
        }
        let mut material = Vec::new();
        for (host, basic) in &self.by_host {
            for part in [host.as_str(), &basic.username, &basic.password] {
                material.extend_from_slice(&(part.len() as u64).to_le_bytes());
                material.extend_from_slice(part.as_bytes());
            }
        }
        salted_digest(&material)
    }
}

impl Basic {
    /// A salted digest of the username and password (see [`Credentials::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        let mut material = Vec::new();
        for part in [&self.username, &self.password] {
            material.extend_from_slice(&(part.len() as u64).to_le_bytes());
            material.extend_from_slice(part.as_bytes());
        }
        salted_digest(&material)
    }
}

/// sha256 of a random per-process key followed by `material`, in hex.
fn salted_digest(material: &[u8]) -> String {
    use sha2::Digest as _;
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .is_err()
        {
            // Without the kernel's randomness the digest is still one-way, only unsalted.
            let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &key);
            key = sha2::Sha256::digest(seed.as_bytes()).into();
        }
        key
    });
    let mut h = sha2::Sha256::new();
    h.update(key);
    h.update(material);
    hex::encode(h.finalize())
}

/// The credential host a `withRegistryAuth` address names, as Dagger reads it: a scheme,
/// a trailing slash, a digest and a tag are ignored; `localhost[:port]` and names with a dot
/// or a port are hosts; anything else (`alpine`, `library/alpine`) is Docker Hub. Docker Hub
/// aliases become `docker.io`.
pub fn auth_address_host(address: &str) -> Result<String, String> {
    let a = address.trim();
    let a = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("http://"))
        .unwrap_or(a);
    let a = a.trim_end_matches('/');
    let a = a.split('@').next().unwrap_or("");
    let (first, has_path) = match a.split_once('/') {
        Some((first, _)) => (first, true),
        None => (a, false),
    };
    // `host:port` keeps a numeric port; `name:tag` loses the tag.
    let first = match first.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (has_path
                    || h.contains('.')
                    || h.starts_with('[')
                    || h.eq_ignore_ascii_case("localhost")) =>
        {
            first
        }
        Some((h, _tag)) => h,
        None => first,
    };
    if first.is_empty() {
        return Err(format!(
            "invalid registry address {address:?}: expected a host such as registry.example.com[:port]"
        ));
    }
    if first.bytes().any(|b| {
        !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_' | b'[' | b']'))
    }) {
        return Err(format!(
            "invalid registry address {address:?}: expected a host such as registry.example.com[:port]"
        ));
    }
    let lower = first.to_ascii_lowercase();
    let is_host = lower.contains('.')
        || lower.contains(':')
        || lower == "localhost"
        || lower.starts_with("localhost:");
    if !is_host {
        return Ok("docker.io".to_string());
    }
    Ok(credential_host(&lower))
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".docker").join("config.json"))
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://HOST:PORT/x` → `host:port`.
pub(crate) fn credential_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses every challenge in the given header values (RFC 7235: `scheme param=value, ...`,
/// several challenges may share one header). Unknown schemes and a Bearer without a realm
/// are dropped.
pub(crate) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        for (scheme, params) in split_challenges(value) {
            match scheme.to_ascii_lowercase().as_str() {
                "basic" => out.push(Challenge::Basic),
                "bearer" => {
                    let get = |k: &str| {
                        params
                            .iter()
                            .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                            .map(|(_, v)| v.clone())
                    };
                    if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                        out.push(Challenge::Bearer {
                            realm,
                            service: get("service"),
                            scope: get("scope"),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out
}

type RawChallenge = (String, Vec<(String, String)>);

fn split_challenges(value: &str) -> Vec<RawChallenge> {
    let s = value.as_bytes();
    let mut i = 0;
    let mut out: Vec<RawChallenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=' | b'"') {
            *i += 1;
        }
        value[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray quote or '=': skip a byte so we always make progress.
            i += 1;
            continue;
        }
        // Look past spaces: `word=` is a parameter of the current challenge, otherwise
        // `word` starts a new challenge.
        let mut j = i;
        while j < s.len() && (s[j] == b' ' || s[j] == b'\t') {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' {
            i = j + 1;
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
                i += 1;
            }
            let val = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // closing quote (or end)
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            if let Some(last) = out.last_mut() {
                last.1.push((word, val));
            }
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// How a host asked us to authenticate last time, so later requests (other repositories,
/// other blobs) can authenticate up front instead of taking a 401 first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// Tokens by (host, scope, credentials) and the scheme each host uses. The credentials part
/// is [`Basic::fingerprint`] (empty for anonymous requests), so a token obtained with one set
/// of credentials is never handed to a request made with other credentials or none.
#[derive(Default)]
pub(crate) struct AuthCache {
    tokens: Mutex<HashMap<(String, String, String), CachedToken>>,
    schemes: Mutex<HashMap<String, HostScheme>>,
}

impl AuthCache {
    pub fn token(&self, host: &str, scope: &str, who: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&(host.to_string(), scope.to_string(), who.to_string()))
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.token.clone())
    }

    pub fn store_token(
        &self,
        host: &str,
        scope: &str,
        who: &str,
        token: String,
        lifetime: Duration,
    ) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            (host.to_string(), scope.to_string(), who.to_string()),
            CachedToken {
                token,
                expires: now + lifetime,
            },
        );
    }

    pub fn forget_token(&self, host: &str, scope: &str, who: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&(host.to_string(), scope.to_string(), who.to_string()));
    }

    pub fn scheme(&self, host: &str) -> Option<HostScheme> {
        let schemes = self.schemes.lock().unwrap_or_else(|p| p.into_inner());
        schemes.get(host).cloned()
    }

    pub fn set_scheme(&self, host: &str, scheme: HostScheme) {
        let mut schemes = self.schemes.lock().unwrap_or_else(|p| p.into_inner());
        schemes.insert(host.to_string(), scheme);
    }
}

/// How long to keep a token: its `expires_in` (60 s when absent, as the token spec says),
/// minus a margin so a token never expires between our check and the registry's.
pub(crate) fn token_lifetime(expires_in: Option<u64>) -> Duration {
    let secs = expires_in.filter(|s| *s > 0).unwrap_or(60);
    let margin = (secs / 10).clamp(1, 30);
    Duration::from_secs(secs.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ]);
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }]
        );
    }

    #[test]
    fn basic_challenge_and_case_insensitive_scheme() {
        assert_eq!(
            parse_challenges([r#"Basic realm="basic-realm""#]),
            vec![Challenge::Basic]
        );
        assert_eq!(parse_challenges(["basic"]), vec![Challenge::Basic]);
        assert_eq!(
            parse_challenges([r#"BEARER Realm="http://127.0.0.1:1/token""#]),
            vec![Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: None
            }]
        );
    }

    #[test]
    fn several_challenges_in_one_header_and_odd_spacing() {
        let c = parse_challenges([
            r#"Basic realm="a, b", Bearer realm = "http://x/t" , service=svc,scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            c,
            vec![
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "http://x/t".into(),
                    service: Some("svc".into()),
                    scope: Some("repository:a/b:pull,push".into()),
                }
            ]
        );
    }

    #[test]
    fn escaped_quotes_unknown_schemes_and_garbage() {
        let c = parse_challenges([r#"Bearer realm="http://x/\"t\"""#]);
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: r#"http://x/"t""#.into(),
                service: None,
                scope: None
            }]
        );
        assert!(parse_challenges([r#"Negotiate abc, Digest realm="r""#]).is_empty());
        // A Bearer without a realm cannot be used.
        assert!(parse_challenges([r#"Bearer service="x""#]).is_empty());
        for junk in ["", "=", "\"", ",,,", "Bearer realm=\"unterminated", "= = ="] {
            let _ = parse_challenges([junk]);
        }
        assert_eq!(
            parse_challenges(["Bearer realm=\"http://x/unterminated"]),
            vec![Challenge::Bearer {
                realm: "http://x/unterminated".into(),
                service: None,
                scope: None
            }]
        );
    }

    #[test]
    fn docker_config_auth_and_username_password() {
        let json = br#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzOndpdGg6Y29sb25z"},
                "127.0.0.1:5000": {"username": "u2", "password": "p2"},
                "http://Registry.Example.com:8443/v2/": {"auth": "YTpi"},
                "ghcr.io": {"identitytoken": "x"},
                "quay.io": {}
            },
            "credsStore": "desktop"
        }"#;
        let c = Credentials::from_json(json).unwrap();
        let hub = c.get("docker.io").unwrap();
        assert_eq!(hub.username, "user");
        assert_eq!(hub.password, "pass:with:colons");
        assert_eq!(c.get("registry-1.docker.io"), Some(hub));
        assert_eq!(c.get("127.0.0.1:5000").unwrap().username, "u2");
        assert_eq!(c.get("registry.example.com:8443").unwrap().password, "b");
        assert!(c.get("ghcr.io").is_none());
        assert!(c.get("quay.io").is_none());
        assert!(c.get("127.0.0.1:5001").is_none());
        let debug = format!("{c:?}");
        assert!(!debug.contains("pass"), "{debug}");
        assert!(!format!("{hub:?}").contains("pass"));
    }

    #[test]
    fn docker_config_errors_do_not_echo_secrets() {
        assert!(Credentials::from_json(b"{}").unwrap().is_empty());
        assert!(Credentials::from_json(br#"{"auths": {}}"#)
            .unwrap()
            .is_empty());
        let e = Credentials::from_json(br#"{"auths": {"h": {"auth": "%%secret%%"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        // base64 of "nocolon"
        let e = Credentials::from_json(br#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("user:password") && !e.contains("nocolon"), "{e}");
        let e = Credentials::from_json(br#"{"auths": {"h": {"auth": "supersecret"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("supersecret"), "{e}");
        assert!(Credentials::from_json(br#"{"auths": []}"#).is_err());
    }

    #[test]
    fn docker_config_from_env_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            br#"{"auths":{"example.com":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        // Only this test touches DOCKER_CONFIG in this process.
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let c = Credentials::from_docker_config();
        std::env::set_var("DOCKER_CONFIG", dir.path().join("missing"));
        let missing = Credentials::from_docker_config();
        std::env::remove_var("DOCKER_CONFIG");
        assert!(c.has("example.com"));
        assert!(missing.is_empty());
    }

    #[test]
    fn tokens_are_kept_per_credentials() {
        let cache = AuthCache::default();
        let alice = Basic {
            username: "alice".into(),
            password: "pw-a".into(),
        };
        let other_pw = Basic {
            username: "alice".into(),
            password: "pw-b".into(),
        };
        assert_ne!(alice.fingerprint(), other_pw.fingerprint());
        assert_eq!(alice.fingerprint(), alice.clone().fingerprint());
        assert!(!alice.fingerprint().contains("pw-a"));
        cache.store_token(
            "h",
            "s",
            &alice.fingerprint(),
            "push-token".into(),
            Duration::from_secs(60),
        );
        assert_eq!(
            cache.token("h", "s", &alice.fingerprint()).as_deref(),
            Some("push-token")
        );
        assert_eq!(cache.token("h", "s", ""), None, "anonymous");
        assert_eq!(cache.token("h", "s", &other_pw.fingerprint()), None);
        cache.forget_token("h", "s", "");
        assert!(cache.token("h", "s", &alice.fingerprint()).is_some());
    }

    #[test]
    fn overlay_and_fingerprints() {
        let base =
            Credentials::none()
                .with("docker.io", "hub", "hubpw")
                .with("r.example.com", "u", "p");
        let over = Credentials::none().with("https://index.docker.io/v1/", "me", "mine");
        let merged = base.overlaid(&over);
        assert_eq!(merged.get("docker.io").unwrap().username, "me");
        assert_eq!(merged.get("r.example.com").unwrap().username, "u");
        assert_eq!(Credentials::none().fingerprint(), "");
        assert_ne!(base.fingerprint(), merged.fingerprint());
        assert_eq!(merged.fingerprint(), base.overlaid(&over).fingerprint());
        assert!(!merged.fingerprint().contains("mine"));
        let mut removed = merged.clone();
        removed.remove("registry-1.docker.io");
        assert!(removed.get("docker.io").is_none());
    }

    #[test]
    fn auth_addresses_name_hosts_like_dagger() {
        let host = |a: &str| auth_address_host(a).unwrap();
        assert_eq!(host("docker.io"), "docker.io");
        assert_eq!(host("registry-1.docker.io"), "docker.io");
        assert_eq!(host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(host("alpine"), "docker.io");
        assert_eq!(host("alpine:3.19"), "docker.io");
        assert_eq!(host("library/alpine:3"), "docker.io");
        assert_eq!(host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(host("127.0.0.1:5000/private/app:v1"), "127.0.0.1:5000");
        assert_eq!(host("http://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(
            host("Registry.Example.com:8443/team/app@sha256:abc"),
            "registry.example.com:8443"
        );
        assert_eq!(host("ghcr.io/org/img:1.0"), "ghcr.io");
        assert_eq!(host("localhost:5000"), "localhost:5000");
        assert_eq!(host("localhost/app"), "localhost");
        assert!(auth_address_host("").is_err());
        assert!(auth_address_host("https://").is_err());
        assert!(auth_address_host("bad host/x").is_err());
    }

    #[test]
    fn token_cache_expires() {
        let cache = AuthCache::default();
        cache.store_token("h", "s", "", "t".into(), Duration::from_secs(60));
        assert_eq!(cache.token("h", "s", "").as_deref(), Some("t"));
        assert_eq!(cache.token("h", "other", ""), None);
        cache.store_token("h", "s2", "", "t2".into(), Duration::ZERO);
        assert_eq!(cache.token("h", "s2", ""), None);
        assert_eq!(token_lifetime(None), Duration::from_secs(54));
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(270));
        assert_eq!(token_lifetime(Some(3600)), Duration::from_secs(3570));
        assert_eq!(token_lifetime(Some(1)), Duration::ZERO);
    }
}
