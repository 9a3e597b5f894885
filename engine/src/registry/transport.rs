//! One request against one endpoint: the connection limit, authentication (Basic, Bearer
//! tokens cached per host, scope and credentials), retries with backoff, and reading bodies under a cap.

use super::auth::{parse_challenges, token_lifetime, Basic, Challenge, HostScheme};
use super::endpoint::Endpoint;
use super::error::chain;
use super::{
    check_header_digest, detect_media_type, BlobStream, FetchedManifest, Inner, LimitedBody,
    RegistryError, ACCEPT_MANIFESTS,
};
use crate::oci::{Digest, Reference};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::{Client, Response, StatusCode};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Attempts per request for connection failures, resets, 429 and 5xx (never other 4xx).
pub(crate) const MAX_ATTEMPTS: u32 = 4;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_millis(3200);
/// Token responses are small JSON documents.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1 << 20;

fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(BACKOFF_MAX)
}

/// The backoff, or the server's `Retry-After` (seconds) when longer, never above the cap.
fn retry_delay(attempt: u32, headers: &HeaderMap) -> Duration {
    let asked = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    backoff(attempt).max(asked).min(BACKOFF_MAX)
}

/// Connection refused/reset, timeouts, a connection closed mid-request. Not certificate
/// failures: retrying cannot fix those.
fn retryable(e: &reqwest::Error, reason: &str) -> bool {
    !reason.contains("certificate") && (e.is_connect() || e.is_timeout() || e.is_request())
}

/// Makes a request body; called once per attempt, so a retried upload re-reads its source.
pub(crate) type MakeBody<'a> = &'a (dyn Fn() -> Result<reqwest::Body, RegistryError> + Send + Sync);

/// One request for [`Inner::send_request`].
pub(crate) struct Request<'a> {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: HeaderMap,
    /// Token scopes, space-separated (`repository:a/b:pull,push repository:c/d:pull`).
    pub scope: String,
    pub body: Option<MakeBody<'a>>,
    /// Attempts for connection failures, 429 and 5xx (1: no retry).
    pub attempts: u32,
    /// Send our credentials or token. False for an upload URL on another host.
    pub authorize: bool,
}

/// A response that passed auth and retries, with the host's connection permit.
pub(crate) struct Sent {
    pub resp: Response,
    pub permit: OwnedSemaphorePermit,
}

enum ReadError {
    TooLarge,
    Transport(String),
}

async fn read_capped(resp: Response, limit: u64) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        // Dropping the response closes the connection without reading the body.
        return Err(ReadError::TooLarge);
    }
    let initial = resp.content_length().unwrap_or(16 * 1024).min(limit) as usize;
    let mut buf = BytesMut::with_capacity(initial);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReadError::Transport(chain(&e)))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Inner {
    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut map = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_connections_per_host)))
            .clone()
    }

    fn auth_error(&self, ep: &Endpoint, repo: &str) -> RegistryError {
        if self.credentials.get(&ep.host).is_some() {
            RegistryError::AuthFailed {
                host: ep.host.clone(),
                repository: repo.to_string(),
            }
        } else {
            RegistryError::CredentialsRequired {
                host: ep.host.clone(),
                repository: repo.to_string(),
            }
        }
    }

    /// GET `url` on `ep` for repository `repo`, under the host's connection limit. Returns
    /// any status other than 401/403/429/5xx for the caller to interpret.
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        repo: &str,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Sent, RegistryError> {
        self.send_request(
            ep,
            repo,
            Request {
                method: reqwest::Method::GET,
                url: url.to_string(),
                headers,
                scope: format!("repository:{repo}:pull"),
                body: None,
                attempts: MAX_ATTEMPTS,
                authorize: true,
            },
        )
        .await
    }

    /// Sends `req` on `ep` (for repository `repo`, named in auth errors) under the host's
    /// connection limit, authenticating for `req.scope` and retrying connection failures, 429
    /// and 5xx up to `req.attempts` times. The body, when there is one, is made afresh for
    /// every attempt. Returns any status other than 401/403/429/5xx for the caller.
    pub(crate) async fn send_request(
        &self,
        ep: &Endpoint,
        repo: &str,
        req: Request<'_>,
    ) -> Result<Sent, RegistryError> {
        let Request {
            method,
            url,
            headers,
            scope,
            body,
            attempts,
            authorize,
        } = req;
        let max_attempts = attempts.max(1);
        let permit = self
            .semaphore(&ep.host)
            .acquire_owned()
            .await
            .map_err(|_| RegistryError::Unavailable {
                host: ep.host.clone(),
                reason: "the client is shutting down".into(),
            })?;
        let client = self.clients.get(&ep.tls, &ep.host)?;
        let creds = self.credentials.get(&ep.host);
        let mut auth = if authorize {
            self.known_auth(&client, ep, repo, &scope, creds).await?
        } else {
            None
        };
        let mut url = url;
        let mut attempt = 1;
        let mut challenged = false;
        loop {
            let mut req = client
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(make) = body {
                req = req.body(make()?);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    if ep.http_fallback && e.is_connect() {
                        if let Some(rest) = url.strip_prefix("https://") {
                            tracing::debug!(host = %ep.host, "HTTPS failed; falling back to plain HTTP");
                            url = format!("http://{rest}");
                            continue;
                        }
                    }
                    let reason = chain(&e);
                    if retryable(&e, &reason) && attempt < max_attempts {
                        tracing::debug!(host = %ep.host, attempt, %reason, "retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Unavailable {
                        host: ep.host.clone(),
                        reason: if attempt > 1 {
                            format!("{reason} (after {attempt} attempts)")
                        } else {
                            reason
                        },
                    });
                }
            };
            match resp.status() {
                StatusCode::UNAUTHORIZED => {
                    if challenged || !authorize {
                        return Err(self.auth_error(ep, repo));
                    }
                    challenged = true;
                    if auth.as_deref().is_some_and(|a| a.starts_with("Bearer ")) {
                        let who = creds.map(Basic::fingerprint).unwrap_or_default();
                        self.auth.forget_token(&ep.host, &scope, &who);
                    }
                    let challenges = parse_challenges(
                        resp.headers()
                            .get_all(header::WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok()),
                    );
                    drop(resp);
                    auth = Some(
                        self.answer_challenge(&client, ep, repo, &scope, &challenges, creds)
                            .await?,
                    );
                }
                StatusCode::FORBIDDEN => {
                    return Err(if auth.is_some() && creds.is_some() {
                        RegistryError::AuthFailed {
                            host: ep.host.clone(),
                            repository: repo.to_string(),
                        }
                    } else {
                        RegistryError::Denied {
                            host: ep.host.clone(),
                            repository: repo.to_string(),
                        }
                    });
                }
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                    if attempt < max_attempts {
                        let delay = retry_delay(attempt, resp.headers());
                        drop(resp);
                        tracing::debug!(host = %ep.host, attempt, status = s.as_u16(), "retrying");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Unavailable {
                        host: ep.host.clone(),
                        reason: format!("HTTP {} after {attempt} attempts", s.as_u16()),
                    });
                }
                _ => return Ok(Sent { resp, permit }),
            }
        }
    }

    /// The Authorization header for a host whose scheme we learned earlier, so only the first
    /// request to a host pays for a 401.
    async fn known_auth(
        &self,
        client: &Client,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        creds: Option<&Basic>,
    ) -> Result<Option<String>, RegistryError> {
        Ok(match self.auth.scheme(&ep.host) {
            Some(HostScheme::Basic) => creds.map(Basic::header_value),
            Some(HostScheme::Bearer { realm, service }) => Some(format!(
                "Bearer {}",
                self.token(client, ep, repo, scope, &realm, service.as_deref(), creds)
                    .await?
            )),
            None => None,
        })
    }

    async fn answer_challenge(
        &self,
        client: &Client,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        challenges: &[Challenge],
        creds: Option<&Basic>,
    ) -> Result<String, RegistryError> {
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, .. } => Some((realm.clone(), service.clone())),
            Challenge::Basic => None,
        });
        if let Some((realm, service)) = bearer {
            self.auth.set_scheme(
                &ep.host,
                HostScheme::Bearer {
                    realm: realm.clone(),
                    service: service.clone(),
                },
            );
            let token = self
                .token(client, ep, repo, scope, &realm, service.as_deref(), creds)
                .await?;
            return Ok(format!("Bearer {token}"));
        }
        if challenges.contains(&Challenge::Basic) {
            self.auth.set_scheme(&ep.host, HostScheme::Basic);
            if let Some(c) = creds {
                return Ok(c.header_value());
            }
        }
        Err(self.auth_error(ep, repo))
    }

    /// A cached token for (host, scope, these credentials), or a new one from the realm:
    /// `GET realm?service=&scope=` with our Basic credentials for the registry host when we
    /// have them. A token is only ever reused by requests made with the same credentials.
    #[allow(clippy::too_many_arguments)]
    async fn token(
        &self,
        client: &Client,
        ep: &Endpoint,
        repo: &str,
        scope: &str,
        realm: &str,
        service: Option<&str>,
        creds: Option<&Basic>,
    ) -> Result<String, RegistryError> {
        let who = creds.map(Basic::fingerprint).unwrap_or_default();
        if let Some(t) = self.auth.token(&ep.host, scope, &who) {
            return Ok(t);
        }
        let bad_realm = |reason: String| RegistryError::InvalidResponse {
            host: ep.host.clone(),
            reason,
        };
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| bad_realm(format!("token realm {realm:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_realm(format!("token realm {realm:?} is not HTTP(S)")));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            // Several scopes (push plus a mount source) go as repeated `scope` parameters.
            for one in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", one);
            }
        }
        let realm_host = url.host_str().unwrap_or("").to_string();
        let mut attempt = 1;
        let resp = loop {
            let mut req = client.get(url.clone());
            if let Some(c) = creds {
                req = req.header(header::AUTHORIZATION, c.header_value());
            }
            let retry = match req.send().await {
                Ok(r)
                    if r.status() == StatusCode::TOO_MANY_REQUESTS
                        || r.status().is_server_error() =>
                {
                    format!("token server {realm_host}: HTTP {}", r.status().as_u16())
                }
                Ok(r) => break r,
                Err(e) => {
                    let reason = chain(&e);
                    if !retryable(&e, &reason) {
                        return Err(RegistryError::Unavailable {
                            host: ep.host.clone(),
                            reason: format!("token server {realm_host}: {reason}"),
                        });
                    }
                    format!("token server {realm_host}: {reason}")
                }
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(RegistryError::Unavailable {
                    host: ep.host.clone(),
                    reason: format!("{retry} (after {attempt} attempts)"),
                });
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        };
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.auth_error(ep, repo))
            }
            s => {
                return Err(bad_realm(format!(
                    "token server {realm_host} answered HTTP {}",
                    s.as_u16()
                )))
            }
        }
        let body = read_capped(resp, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => {
                    bad_realm(format!("token response from {realm_host} is too large"))
                }
                ReadError::Transport(reason) => RegistryError::Unavailable {
                    host: ep.host.clone(),
                    reason: format!("token server {realm_host}: {reason}"),
                },
            })?;
        // Never include the body in errors: it is the token.
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|_| bad_realm(format!("token response from {realm_host} is not JSON")))?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| bad_realm(format!("token response from {realm_host} has no token")))?;
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad_realm(format!(
                "token response from {realm_host} has a malformed token"
            )));
        }
        self.auth.store_token(
            &ep.host,
            scope,
            &who,
            token.clone(),
            token_lifetime(parsed.expires_in),
        );
        tracing::debug!(host = %ep.host, %scope, "obtained a registry token");
        Ok(token)
    }

    pub(crate) async fn fetch_manifest_at(
        &self,
        ep: &Endpoint,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let display = reference.to_string();
        let url = ep.url(
            &reference.repository,
            &format!("manifests/{}", reference.reference_for_manifest()),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static(ACCEPT_MANIFESTS),
        );
        let mut attempt = 1;
        loop {
            let Sent { resp, permit } = self
                .send(ep, &reference.repository, &url, headers.clone())
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound {
                        what: "manifest",
                        reference: display,
                    })
                }
                _ => return Err(unexpected(ep, display, resp).await),
            }
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .filter(|v| !v.is_empty());
            let bytes = match read_capped(resp, self.max_manifest_bytes).await {
                Ok(b) => b,
                Err(ReadError::TooLarge) => {
                    return Err(RegistryError::TooLarge {
                        what: "manifest".into(),
                        reference: display,
                        limit: self.max_manifest_bytes,
                    })
                }
                Err(ReadError::Transport(reason)) => {
                    // A reset or truncated body: the request may be repeated.
                    drop(permit);
                    if attempt < MAX_ATTEMPTS {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Unavailable {
                        host: ep.host.clone(),
                        reason: format!(
                            "reading the manifest for {display}: {reason} (after {attempt} attempts)"
                        ),
                    });
                }
            };
            drop(permit);
            let digest = Digest::of(&bytes);
            if let Some(want) = &reference.digest {
                if want != &digest {
                    return Err(RegistryError::DigestMismatch {
                        reference: display,
                        expected: want.to_string(),
                        actual: digest,
                    });
                }
            }
            if let Some(h) = header_digest {
                if check_header_digest(&h, &bytes, &digest).is_err() {
                    return Err(RegistryError::HeaderDigestMismatch {
                        reference: display,
                        header: h.chars().take(200).collect(),
                        actual: digest,
                    });
                }
            }
            let media_type =
                detect_media_type(content_type.as_deref(), &bytes).map_err(|reason| {
                    RegistryError::InvalidManifest {
                        reference: display.clone(),
                        reason,
                    }
                })?;
            return Ok(FetchedManifest {
                digest,
                media_type,
                bytes,
                endpoint: ep.base.clone(),
            });
        }
    }

    pub(crate) async fn fetch_blob_at(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        expected_size: u64,
        offset: u64,
    ) -> Result<BlobStream, RegistryError> {
        let url = ep.url(&reference.repository, &format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range = format!("bytes={offset}-");
            headers.insert(
                header::RANGE,
                header::HeaderValue::from_str(&range)
                    .map_err(|_| RegistryError::InvalidRequest(format!("bad range {range}")))?,
            );
        }
        let Sent { resp, permit } = self.send(ep, &reference.repository, &url, headers).await?;
        let blob_ref = format!("{digest} in {}", reference.name());
        let start = match resp.status() {
            StatusCode::OK => 0,
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range_start);
                match range {
                    Some(s) if s == offset => s,
                    other => {
                        return Err(RegistryError::InvalidResponse {
                            host: ep.host.clone(),
                            reason: format!(
                                "asked for blob {digest} from byte {offset}, got a range starting at {}",
                                other.map_or("an unknown offset".to_string(), |s| s.to_string())
                            ),
                        })
                    }
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    what: "blob",
                    reference: blob_ref,
                })
            }
            _ => return Err(unexpected(ep, blob_ref, resp).await),
        };
        let remaining = expected_size - start;
        if resp.content_length().is_some_and(|n| n > remaining) {
            return Err(RegistryError::TooLarge {
                what: format!("blob {digest}"),
                reference: reference.name(),
                limit: expected_size,
            });
        }
        let body = LimitedBody {
            inner: Some(resp.bytes_stream().boxed()),
            remaining,
            offset: start,
            expected_size,
            host: ep.host.clone(),
            digest: digest.clone(),
            reference: reference.name(),
            permit: Some(permit),
        };
        Ok(BlobStream {
            restarted: offset > 0 && start == 0,
            offset: start,
            endpoint: ep.base.clone(),
            stream: body.boxed(),
        })
    }
}

/// An unexpected status, with a hint for the common misconfiguration of speaking plain HTTP
/// to an HTTPS registry (Go's TLS server answers that with a 400).
async fn unexpected(ep: &Endpoint, reference: String, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    if status == 400 && resp.url().scheme() == "http" {
        if let Ok(body) = read_capped(resp, 4096).await {
            if String::from_utf8_lossy(&body).contains("HTTPS server") {
                return RegistryError::Config {
                    host: ep.host.clone(),
                    reason: format!(
                        "it speaks HTTPS but plain HTTP was used (set `http = false` in [registry.\"{}\"])",
                        ep.host
                    ),
                };
            }
        }
    }
    RegistryError::UnexpectedStatus {
        host: ep.host.clone(),
        reference,
        status,
    }
}

/// `bytes START-END/TOTAL` → START.
fn parse_content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let got: Vec<u64> = (1..=7).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 3200, 3200]);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_delay(1, &h), Duration::from_secs(2));
        h.insert(header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_delay(1, &h), BACKOFF_MAX);
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_delay(2, &h), Duration::from_millis(400));
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(parse_content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(parse_content_range_start("items 1-2/3"), None);
        assert_eq!(parse_content_range_start("bytes */200"), None);
    }
}
