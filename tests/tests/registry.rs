//! The registry client (`dagger_engine::registry`) against Debian's real `docker-registry` in
//! every auth/TLS mode, and against an in-process fake that misbehaves on purpose
//! (anchors C.5 R1-R8).

use dagger_engine::config::RegistryConfig;
use dagger_engine::error::{Classify, ErrorKind};
use dagger_engine::oci::{Digest, Platform, Reference};
use dagger_engine::registry::{
    BlobStream, Credentials, RegistryClient, RegistryError, RegistryOptions, ResolvedImage,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{
    FakeBody, FakeRegistry, FakeRequest, FakeResponse, Mode, TestRegistry, PASS, USER,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- helpers ----

fn options(hosts: Vec<(String, RegistryConfig)>, credentials: Credentials) -> RegistryOptions {
    RegistryOptions {
        hosts: hosts.into_iter().collect::<BTreeMap<_, _>>(),
        // Only what a test hands in: the machine's extra CAs must not make a test pass.
        extra_ca_dir: None,
        credentials,
        ..Default::default()
    }
}

fn client(hosts: Vec<(String, RegistryConfig)>, credentials: Credentials) -> RegistryClient {
    RegistryClient::new(options(hosts, credentials)).expect("registry client")
}

/// A client with the registry's own settings and credentials.
fn client_for(reg: &TestRegistry) -> RegistryClient {
    client(
        vec![(reg.addr.clone(), reg.registry_config())],
        reg.credentials(),
    )
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

async fn read_all(mut blob: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = blob.next_chunk().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Resolves `r` for linux/amd64 and downloads the config and every layer, checking each
/// against its descriptor (as the content store will).
async fn pull(client: &RegistryClient, r: &Reference) -> ResolvedImage {
    let img = client
        .resolve(r, &amd64())
        .await
        .unwrap_or_else(|e| panic!("resolve {r}: {e}"));
    assert_eq!(img.manifest.digest, Digest::of(&img.manifest.bytes));
    let mut blobs = vec![img.config.clone()];
    for l in img.parsed.layers() {
        blobs.push((Digest::parse(l.digest().as_ref()).unwrap(), l.size()));
    }
    for (digest, size) in blobs {
        let s = client
            .fetch_blob(r, &digest, size, 0)
            .await
            .unwrap_or_else(|e| panic!("fetch blob {digest}: {e}"));
        assert!(!s.restarted);
        let bytes = read_all(s)
            .await
            .unwrap_or_else(|e| panic!("read {digest}: {e}"));
        assert_eq!(bytes.len() as u64, size, "{digest}");
        assert_eq!(Digest::of(&bytes), digest);
    }
    img
}

/// Pushes busybox and pulls it by tag and by digest.
async fn pull_busybox_by_tag_and_digest(reg: &TestRegistry, client: &RegistryClient) {
    let pushed = images::push(
        images::BUSYBOX,
        reg,
        "busybox:latest",
        Format::Oci,
        reg.creds(),
    );
    let by_tag = reference(&format!("{}/busybox:latest", reg.addr));
    let img = pull(client, &by_tag).await;
    assert_eq!(img.manifest.digest.to_string(), pushed);
    assert_eq!(img.manifest.media_type, MEDIA_TYPE_OCI_MANIFEST);
    assert!(img.index.is_none());
    assert_eq!(img.parsed.layers().len(), 1);
    assert!(img.manifest.endpoint.contains(&reg.addr));
    let by_digest = reference(&format!("{}/busybox@{pushed}", reg.addr));
    let again = pull(client, &by_digest).await;
    assert_eq!(again.manifest.bytes, img.manifest.bytes);
}

fn assert_kind(e: &RegistryError, kind: ErrorKind) {
    assert_eq!(e.kind(), kind, "{e}");
}

// ---- the real docker-registry ----

#[tokio::test]
async fn plain_http_pull_by_tag_and_digest() {
    let reg = TestRegistry::start(Mode::Plain);
    // Loopback registries default to plain HTTP: no settings at all.
    let c = client(vec![], Credentials::none());
    pull_busybox_by_tag_and_digest(&reg, &c).await;

    // `insecure` on a loopback host tries HTTPS first and falls back to plain HTTP.
    let fallback = client(
        vec![(
            reg.addr.clone(),
            RegistryConfig {
                insecure: true,
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    pull(
        &fallback,
        &reference(&format!("{}/busybox:latest", reg.addr)),
    )
    .await;

    images::push(images::MULTILAYER, &reg, "multi:layers", Format::Oci, None);
    let img = pull(&c, &reference(&format!("{}/multi:layers", reg.addr))).await;
    assert_eq!(img.parsed.layers().len(), 3);

    let missing = reference(&format!("{}/busybox:nope", reg.addr));
    let e = c.fetch_manifest(&missing).await.unwrap_err();
    assert_kind(&e, ErrorKind::NotFound);
    assert!(e.to_string().contains(&missing.to_string()), "{e}");
    let e = c
        .fetch_blob(
            &reference(&format!("{}/busybox:latest", reg.addr)),
            &Digest::of(b"nothing"),
            7,
            0,
        )
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::NotFound);
}

#[tokio::test]
async fn tls_with_ca_from_registry_config() {
    let reg = TestRegistry::start(Mode::Tls);
    pull_busybox_by_tag_and_digest(&reg, &client_for(&reg)).await;
}

#[tokio::test]
async fn tls_with_ca_from_extra_ca_dir() {
    let reg = TestRegistry::start(Mode::Tls);
    let mut opts = options(
        vec![(
            reg.addr.clone(),
            RegistryConfig {
                http: Some(false),
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    opts.extra_ca_dir = reg.cert_dir.clone();
    let c = RegistryClient::new(opts).unwrap();
    pull_busybox_by_tag_and_digest(&reg, &c).await;
}

#[tokio::test]
async fn tls_without_the_ca_fails_fast_and_insecure_skips_verification() {
    let reg = TestRegistry::start(Mode::Tls);
    images::push(images::BUSYBOX, &reg, "busybox:latest", Format::Oci, None);
    let r = reference(&format!("{}/busybox:latest", reg.addr));
    let untrusting = client(
        vec![(
            reg.addr.clone(),
            RegistryConfig {
                http: Some(false),
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    let e = untrusting.fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);
    assert!(e.to_string().contains("certificate"), "{e}");

    // Loopback defaults to plain HTTP; against an HTTPS registry the error says what to set.
    let e = client(vec![], Credentials::none())
        .fetch_manifest(&r)
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("http = false"), "{e}");

    let insecure = client(
        vec![(
            reg.addr.clone(),
            RegistryConfig {
                http: Some(false),
                insecure: true,
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    pull(&insecure, &r).await;
    // insecure with `http` unset on loopback: HTTPS first, as BuildKit does.
    let fallback = client(
        vec![(
            reg.addr.clone(),
            RegistryConfig {
                insecure: true,
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    pull(&fallback, &r).await;
}

#[tokio::test]
async fn basic_auth_over_tls() {
    let reg = TestRegistry::start(Mode::Basic);
    pull_busybox_by_tag_and_digest(&reg, &client_for(&reg)).await;
    let r = reference(&format!("{}/busybox:latest", reg.addr));

    let anonymous = client(
        vec![(reg.addr.clone(), reg.registry_config())],
        Credentials::none(),
    );
    let e = anonymous.fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);

    let secret = "wrong-Secret-Zx9";
    let wrong = client(
        vec![(reg.addr.clone(), reg.registry_config())],
        Credentials::none().with(&reg.addr, USER, secret),
    );
    let e = wrong.resolve(&r, &amd64()).await.unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
    let text = format!("{e} {e:?}");
    assert!(
        text.contains(&format!("authentication failed for {}/busybox", reg.addr)),
        "{text}"
    );
    assert!(!text.contains(secret) && !text.contains(PASS), "{text}");
    assert!(!format!("{wrong:?}").contains(secret));
}

#[tokio::test]
async fn basic_auth_over_plain_http() {
    let reg = TestRegistry::start(Mode::BasicHttp);
    pull_busybox_by_tag_and_digest(&reg, &client_for(&reg)).await;
    let wrong = client(
        vec![],
        Credentials::none().with(&reg.addr, USER, "nope-nope"),
    );
    let e = wrong
        .fetch_manifest(&reference(&format!("{}/busybox:latest", reg.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
    assert!(!e.to_string().contains("nope-nope"), "{e}");
}

#[tokio::test]
async fn bearer_tokens_with_and_without_credentials() {
    let reg = TestRegistry::start(Mode::Token);
    // Pushing needs credentials; pulling works with them and anonymously (pull-only token).
    pull_busybox_by_tag_and_digest(&reg, &client_for(&reg)).await;
    let anonymous = client(
        vec![(reg.addr.clone(), reg.registry_config())],
        Credentials::none(),
    );
    pull(
        &anonymous,
        &reference(&format!("{}/busybox:latest", reg.addr)),
    )
    .await;

    let secret = "token-Secret-Q7";
    let wrong = client(
        vec![(reg.addr.clone(), reg.registry_config())],
        Credentials::none().with(&reg.addr, USER, secret),
    );
    let e = wrong
        .fetch_manifest(&reference(&format!("{}/busybox:latest", reg.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
    let text = format!("{e} {e:?}");
    assert!(text.contains("authentication failed for"), "{text}");
    assert!(!text.contains(secret), "{text}");
}

#[tokio::test]
async fn mirror_with_a_path_serves_what_the_origin_lacks() {
    let origin = TestRegistry::start(Mode::Plain);
    let mirror = TestRegistry::start(Mode::Plain);
    // `HOST/PATH` mirrors put PATH under /v2: the image lives at mirror/v2/hub/busybox.
    let pushed = images::push(
        images::BUSYBOX,
        &mirror,
        "hub/busybox:latest",
        Format::Oci,
        None,
    );
    let c = client(
        vec![(
            origin.addr.clone(),
            RegistryConfig {
                mirrors: vec![format!("{}/hub", mirror.addr)],
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    let r = reference(&format!("{}/busybox:latest", origin.addr));
    let img = pull(&c, &r).await;
    assert_eq!(img.manifest.digest.to_string(), pushed);
    assert_eq!(
        img.manifest.endpoint,
        format!("http://{}/v2/hub", mirror.addr)
    );

    // Something only the origin has: the mirror's 404 sends us on to the origin.
    let only_origin = images::push(images::ARM64, &origin, "busybox:arm", Format::Oci, None);
    let fetched = c
        .fetch_manifest(&reference(&format!("{}/busybox:arm", origin.addr)))
        .await
        .unwrap();
    assert_eq!(fetched.digest.to_string(), only_origin);
    assert_eq!(fetched.endpoint, format!("http://{}/v2", origin.addr));

    // Neither has it: NotFound naming the image as asked for.
    let e = c
        .fetch_manifest(&reference(&format!("{}/busybox:none", origin.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::NotFound);
    assert!(e.to_string().contains(&origin.addr), "{e}");
}

#[tokio::test]
async fn mirror_serves_while_the_origin_is_down() {
    let mut origin = TestRegistry::start(Mode::Plain);
    let mirror = TestRegistry::start(Mode::Tls);
    images::push(
        images::BUSYBOX,
        &mirror,
        "busybox:latest",
        Format::Oci,
        None,
    );
    origin.stop();
    let c = client(
        vec![
            (
                origin.addr.clone(),
                RegistryConfig {
                    mirrors: vec![mirror.addr.clone()],
                    ..Default::default()
                },
            ),
            // The mirror's own settings (HTTPS with its CA) apply to it.
            (mirror.addr.clone(), mirror.registry_config()),
        ],
        Credentials::none(),
    );
    let img = pull(&c, &reference(&format!("{}/busybox:latest", origin.addr))).await;
    assert_eq!(img.manifest.endpoint, format!("https://{}/v2", mirror.addr));
    // When neither serves it, the down origin is reported, not the mirror's 404.
    let e = c
        .fetch_manifest(&reference(&format!("{}/other:latest", origin.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);
    assert!(e.to_string().contains(&origin.addr), "{e}");
}

#[tokio::test]
async fn multiarch_index_selects_the_platform() {
    let reg = TestRegistry::start(Mode::Plain);
    let index_digest = images::push(images::MULTIARCH, &reg, "multi:latest", Format::Oci, None);
    let amd = images::push(images::AMD64, &reg, "single:amd64", Format::Oci, None);
    let arm = images::push(images::ARM64, &reg, "single:arm64", Format::Oci, None);
    let c = client(vec![], Credentials::none());
    let r = reference(&format!("{}/multi:latest", reg.addr));

    let img = pull(&c, &r).await;
    let index = img.index.as_ref().expect("an index");
    assert_eq!(index.digest.to_string(), index_digest);
    assert_eq!(index.media_type, MEDIA_TYPE_OCI_INDEX);
    assert_eq!(img.manifest.digest.to_string(), amd);

    for p in ["linux/arm64", "linux/arm64/v8", "linux/aarch64"] {
        let img = c.resolve(&r, &Platform::parse(p).unwrap()).await.unwrap();
        assert_eq!(img.manifest.digest.to_string(), arm, "{p}");
        let cfg = c
            .fetch_blob(&r, &img.config.0, img.config.1, 0)
            .await
            .unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&read_all(cfg).await.unwrap()).unwrap();
        assert_eq!(cfg["architecture"], "arm64");
    }

    let e = c
        .resolve(&r, &Platform::parse("linux/s390x").unwrap())
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    let text = e.to_string();
    assert!(
        text.contains("linux/s390x")
            && text.contains("linux/amd64")
            && text.contains("linux/arm64"),
        "{text}"
    );

    // By digest, the index is verified and still resolved.
    let pinned = reference(&format!("{}/multi@{index_digest}", reg.addr));
    let img = c.resolve(&pinned, &amd64()).await.unwrap();
    assert_eq!(img.manifest.digest.to_string(), amd);
}

#[tokio::test]
async fn docker_schema2_manifest_resolves() {
    let reg = TestRegistry::start(Mode::Plain);
    let pushed = images::push(
        images::BUSYBOX,
        &reg,
        "docker:v2s2",
        Format::DockerV2S2,
        None,
    );
    let c = client(vec![], Credentials::none());
    let img = pull(&c, &reference(&format!("{}/docker:v2s2", reg.addr))).await;
    assert_eq!(img.manifest.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(img.manifest.digest.to_string(), pushed);
    assert_eq!(
        img.parsed.config().media_type().to_string(),
        "application/vnd.docker.container.image.v1+json"
    );
}

// ---- the fake registry ----

/// A one-layer image served from `/v2/test/repo/`.
struct FakeImage {
    manifest: Vec<u8>,
    manifest_digest: Digest,
    config: Vec<u8>,
    config_digest: Digest,
    layer: Vec<u8>,
    layer_digest: Digest,
}

impl FakeImage {
    fn new() -> Arc<FakeImage> {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (config_digest, layer_digest) = (Digest::of(&config), Digest::of(&layer));
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        Arc::new(FakeImage {
            manifest_digest: Digest::of(&manifest),
            manifest,
            config,
            config_digest,
            layer,
            layer_digest,
        })
    }

    /// The well-behaved answer to `req`.
    fn answer(&self, req: &FakeRequest) -> FakeResponse {
        let path = req.path();
        let manifest = |body: &[u8]| {
            FakeResponse::ok(body)
                .header("Content-Type", MEDIA_TYPE_OCI_MANIFEST)
                .header("Docker-Content-Digest", &Digest::of(body).to_string())
        };
        if path == "/v2/test/repo/manifests/latest"
            || path == format!("/v2/test/repo/manifests/{}", self.manifest_digest)
        {
            return manifest(&self.manifest);
        }
        if path == format!("/v2/test/repo/blobs/{}", self.config_digest) {
            return FakeResponse::ok(self.config.clone());
        }
        if path == format!("/v2/test/repo/blobs/{}", self.layer_digest) {
            return FakeResponse::ok(self.layer.clone());
        }
        FakeResponse::not_found()
    }

    fn reference(&self, fake: &FakeRegistry) -> Reference {
        reference(&format!("{}/test/repo:latest", fake.addr))
    }
}

fn plain_client() -> RegistryClient {
    client(vec![], Credentials::none())
}

#[tokio::test]
async fn fake_well_behaved_image_pulls() {
    let img = FakeImage::new();
    let i = img.clone();
    let fake = FakeRegistry::start(move |r| i.answer(r)).await;
    let resolved = pull(&plain_client(), &img.reference(&fake)).await;
    assert_eq!(resolved.manifest.digest, img.manifest_digest);
    for r in fake.requests() {
        if r.path().contains("/manifests/") {
            let accept = r.header("accept").unwrap_or("");
            for mt in [
                MEDIA_TYPE_OCI_MANIFEST,
                MEDIA_TYPE_OCI_INDEX,
                MEDIA_TYPE_DOCKER_MANIFEST,
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ] {
                assert!(accept.contains(mt), "{accept}");
            }
        }
    }
}

/// R1: a blob whose body is not its digest is streamed as is (the content store rejects it);
/// a manifest pinned by digest is rejected here.
#[tokio::test]
async fn r1_wrong_bytes_are_not_hidden_and_pinned_manifests_are_verified() {
    let img = FakeImage::new();
    let evil_layer = vec![b'x'; img.layer.len()];
    let tampered = {
        let mut m = img.manifest.clone();
        m.extend_from_slice(b"\n ");
        m
    };
    let (i, evil, t) = (img.clone(), evil_layer.clone(), tampered.clone());
    let fake = FakeRegistry::start(move |r| {
        if r.path().ends_with(&format!("blobs/{}", i.layer_digest)) {
            FakeResponse::ok(evil.clone())
        } else if r
            .path()
            .ends_with(&format!("manifests/{}", i.manifest_digest))
        {
            // No Docker-Content-Digest: only the pinned digest can catch this.
            FakeResponse::ok(t.clone()).header("Content-Type", MEDIA_TYPE_OCI_MANIFEST)
        } else {
            i.answer(r)
        }
    })
    .await;
    let c = plain_client();
    let r = img.reference(&fake);
    let blob = c
        .fetch_blob(&r, &img.layer_digest, img.layer.len() as u64, 0)
        .await
        .unwrap();
    let bytes = read_all(blob).await.unwrap();
    assert_eq!(bytes, evil_layer);
    assert_ne!(Digest::of(&bytes), img.layer_digest);

    let pinned = reference(&format!("{}/test/repo@{}", fake.addr, img.manifest_digest));
    let e = c.resolve(&pinned, &amd64()).await.unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&img.manifest_digest.to_string()),
        "{e}"
    );
}

/// R2: a Docker-Content-Digest that disagrees with the body is an error; an empty one is
/// ignored.
#[tokio::test]
async fn r2_docker_content_digest_header() {
    let img = FakeImage::new();
    let header = Arc::new(std::sync::Mutex::new(String::new()));
    let (i, h) = (img.clone(), header.clone());
    let fake = FakeRegistry::start(move |r| {
        if r.path().contains("/manifests/") {
            FakeResponse::ok(i.manifest.clone())
                .header("Content-Type", MEDIA_TYPE_OCI_MANIFEST)
                .header("Docker-Content-Digest", &h.lock().unwrap())
        } else {
            i.answer(r)
        }
    })
    .await;
    let c = plain_client();
    let r = img.reference(&fake);

    *header.lock().unwrap() = Digest::of(b"something else").to_string();
    let e = c.fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert!(
        matches!(e, RegistryError::HeaderDigestMismatch { .. }),
        "{e:?}"
    );

    *header.lock().unwrap() = "sha256:not-hex".into();
    assert_kind(
        &c.fetch_manifest(&r).await.unwrap_err(),
        ErrorKind::InvalidArgument,
    );

    *header.lock().unwrap() = String::new();
    assert_eq!(
        c.fetch_manifest(&r).await.unwrap().digest,
        img.manifest_digest
    );

    *header.lock().unwrap() = img.manifest_digest.to_string();
    assert_eq!(
        c.fetch_manifest(&r).await.unwrap().digest,
        img.manifest_digest
    );
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// R3: an oversized manifest is refused without reading it all, whether or not its length is
/// declared; a truncated one is an error.
#[tokio::test]
async fn r3_oversized_and_truncated_manifests() {
    // Far more than loopback socket buffers hold, so the fake sees the hang-up.
    const ENDLESS: u64 = 64 << 20;
    let img = FakeImage::new();
    let i = img.clone();
    let fake = FakeRegistry::start(move |r| {
        let base = FakeResponse::ok(Vec::new()).header("Content-Type", MEDIA_TYPE_OCI_MANIFEST);
        match r.path() {
            "/v2/test/big/manifests/declared" => base.with_body(FakeBody::Endless {
                max: ENDLESS,
                chunked: false,
            }),
            "/v2/test/big/manifests/chunked" => base.with_body(FakeBody::Endless {
                max: ENDLESS,
                chunked: true,
            }),
            "/v2/test/big/manifests/truncated" => base.with_body(FakeBody::Truncated {
                declared: 1000,
                sent: b"{\"schemaVersion\":2,".to_vec(),
            }),
            _ => i.answer(r),
        }
    })
    .await;
    let c = plain_client();

    let e = c
        .fetch_manifest(&reference(&format!("{}/test/big:declared", fake.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
    wait_for("the client to hang up", || {
        fake.stats.client_hangups.load(Ordering::SeqCst) >= 1
    })
    .await;
    let first = fake.stats.bytes_streamed.load(Ordering::SeqCst);
    assert!(first < ENDLESS / 2, "{first} bytes streamed");

    let e = c
        .fetch_manifest(&reference(&format!("{}/test/big:chunked", fake.addr)))
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
    wait_for("the client to hang up", || {
        fake.stats.client_hangups.load(Ordering::SeqCst) >= 2
    })
    .await;
    let second = fake.stats.bytes_streamed.load(Ordering::SeqCst) - first;
    assert!(second < ENDLESS / 2, "{second} bytes streamed");

    let before = fake.request_count();
    let e = c
        .fetch_manifest(&reference(&format!("{}/test/big:truncated", fake.addr)))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);
    // A truncated body is a transport failure: retried, then reported.
    assert_eq!(fake.request_count() - before, 4);
}

/// Blob bodies are capped at the expected size and must reach it.
#[tokio::test]
async fn blob_size_is_enforced_both_ways() {
    let img = FakeImage::new();
    let i = img.clone();
    let fake = FakeRegistry::start(move |r| {
        let p = r.path();
        if p.ends_with(
            "/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111",
        ) {
            FakeResponse::ok(vec![1u8; 20])
        } else if p.ends_with(
            "/blobs/sha256:2222222222222222222222222222222222222222222222222222222222222222",
        ) {
            FakeResponse::ok(Vec::new()).with_body(FakeBody::Endless {
                max: 1 << 20,
                chunked: true,
            })
        } else if p.ends_with(
            "/blobs/sha256:3333333333333333333333333333333333333333333333333333333333333333",
        ) {
            FakeResponse::ok(Vec::new()).with_body(FakeBody::Truncated {
                declared: 100,
                sent: vec![3u8; 40],
            })
        } else {
            i.answer(r)
        }
    })
    .await;
    let c = plain_client();
    let r = img.reference(&fake);
    let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();

    // Declared longer than expected: refused before streaming.
    let e = c.fetch_blob(&r, &d('1'), 10, 0).await.unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);

    // Undeclared and endless: the stream errors once it passes the expected size.
    let s = c.fetch_blob(&r, &d('2'), 1000, 0).await.unwrap();
    let e = read_all(s).await.unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");

    // Cut short: an error, not a quiet short read.
    let s = c.fetch_blob(&r, &d('3'), 100, 0).await.unwrap();
    let e = read_all(s).await.unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);

    // Resume offsets past the end are the caller's bug.
    let e = c
        .fetch_blob(&r, &img.layer_digest, 10, 11)
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
}

/// Resume: a Range request, and what happens when the server ignores it.
#[tokio::test]
async fn blob_resume_with_range() {
    let img = FakeImage::new();
    let honour = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (i, h) = (img.clone(), honour.clone());
    let fake = FakeRegistry::start(move |r| {
        if let Some(range) = r.header("range") {
            if h.load(Ordering::SeqCst) && r.path().ends_with(&i.layer_digest.to_string()) {
                let start: usize = range
                    .strip_prefix("bytes=")
                    .and_then(|x| x.strip_suffix('-'))
                    .and_then(|x| x.parse().ok())
                    .unwrap();
                let len = i.layer.len();
                return FakeResponse::new(206, i.layer[start..].to_vec())
                    .header("Content-Range", &format!("bytes {start}-{}/{len}", len - 1));
            }
        }
        i.answer(r)
    })
    .await;
    let c = plain_client();
    let r = img.reference(&fake);
    let size = img.layer.len() as u64;

    let s = c
        .fetch_blob(&r, &img.layer_digest, size, 4000)
        .await
        .unwrap();
    assert!(!s.restarted);
    assert_eq!(s.offset, 4000);
    assert_eq!(read_all(s).await.unwrap(), img.layer[4000..]);
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.header("range"), Some("bytes=4000-"));

    honour.store(false, Ordering::SeqCst);
    let s = c
        .fetch_blob(&r, &img.layer_digest, size, 4000)
        .await
        .unwrap();
    assert!(s.restarted);
    assert_eq!(s.offset, 0);
    assert_eq!(read_all(s).await.unwrap(), img.layer);

    // Nothing left to fetch: no request at all.
    let before = fake.request_count();
    let s = c
        .fetch_blob(&r, &img.layer_digest, size, size)
        .await
        .unwrap();
    assert!(read_all(s).await.unwrap().is_empty());
    assert_eq!(fake.request_count(), before);
}

/// R7: 503/429/resets are retried with backoff; 503 forever gives up after 4 attempts;
/// other 4xx are never retried.
#[tokio::test]
async fn r7_retries_are_bounded_and_only_for_transient_failures() {
    let img = FakeImage::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (i, n) = (img.clone(), calls.clone());
    let fake = FakeRegistry::start(move |r| {
        let k = n.fetch_add(1, Ordering::SeqCst);
        match r.path() {
            "/v2/test/flaky/manifests/latest" if k < 2 => FakeResponse::status(503),
            "/v2/test/flaky/manifests/latest" => i.answer(&FakeRequest {
                target: "/v2/test/repo/manifests/latest".into(),
                ..r.clone()
            }),
            "/v2/test/busy/manifests/latest" if k < 1 => {
                FakeResponse::status(429).header("Retry-After", "0")
            }
            "/v2/test/busy/manifests/latest" => i.answer(&FakeRequest {
                target: "/v2/test/repo/manifests/latest".into(),
                ..r.clone()
            }),
            "/v2/test/reset/manifests/latest" if k < 1 => FakeResponse::hang_up(),
            "/v2/test/reset/manifests/latest" => i.answer(&FakeRequest {
                target: "/v2/test/repo/manifests/latest".into(),
                ..r.clone()
            }),
            "/v2/test/down/manifests/latest" => FakeResponse::status(503),
            "/v2/test/bad/manifests/latest" => FakeResponse::status(400),
            _ => i.answer(r),
        }
    })
    .await;
    let c = plain_client();
    let at = |repo: &str| reference(&format!("{}/test/{repo}:latest", fake.addr));

    calls.store(0, Ordering::SeqCst);
    let m = c.fetch_manifest(&at("flaky")).await.unwrap();
    assert_eq!(m.digest, img.manifest_digest);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    calls.store(0, Ordering::SeqCst);
    c.fetch_manifest(&at("busy")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    calls.store(0, Ordering::SeqCst);
    c.fetch_manifest(&at("reset")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    calls.store(0, Ordering::SeqCst);
    let t = Instant::now();
    let e = c.fetch_manifest(&at("down")).await.unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);
    assert!(e.to_string().contains(&fake.addr), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // 200 + 400 + 800 ms of backoff between the 4 attempts: a lower bound only.
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");

    calls.store(0, Ordering::SeqCst);
    let e = c.fetch_manifest(&at("bad")).await.unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    calls.store(0, Ordering::SeqCst);
    let e = c.fetch_manifest(&at("missing")).await.unwrap_err();
    assert_kind(&e, ErrorKind::NotFound);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// R7: nothing listening at all.
#[tokio::test]
async fn connection_refused_is_unavailable_naming_the_host() {
    let addr = format!("127.0.0.1:{}", dagger_integration_tests::free_port());
    let e = plain_client()
        .fetch_manifest(&reference(&format!("{addr}/x:latest")))
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::Unavailable);
    assert!(e.to_string().contains(&addr), "{e}");
}

/// R8: never more than `max_connections_per_host` requests at once on one host.
#[tokio::test]
async fn r8_per_host_connection_limit() {
    let img = FakeImage::new();
    let i = img.clone();
    let fake = FakeRegistry::start(move |r| i.answer(r).delay(Duration::from_millis(150))).await;
    let mut opts = options(vec![], Credentials::none());
    opts.max_connections_per_host = 2;
    let c = RegistryClient::new(opts).unwrap();
    let r = img.reference(&fake);
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (c, r, img) = (c.clone(), r.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            if k % 2 == 0 {
                let s = c
                    .fetch_blob(&r, &img.layer_digest, img.layer.len() as u64, 0)
                    .await?;
                read_all(s).await.map(|_| ())
            } else {
                c.fetch_manifest(&r).await.map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.stats.max_in_flight.load(Ordering::SeqCst), 2);
}

/// R6: a Bearer challenge → one token for `repository:<name>:pull` (with our Basic
/// credentials), reused for every later request; Basic challenges use the credentials.
#[tokio::test]
async fn r6_bearer_token_flow_and_cache() {
    let img = FakeImage::new();
    let secret = "fake-Secret-K3";
    let auth_ok = format!(
        "Basic {}",
        base64_encode(format!("{USER}:{secret}").as_bytes())
    );
    let token_requests = Arc::new(AtomicUsize::new(0));
    let (i, n) = (img.clone(), token_requests.clone());
    let fake = Arc::new(std::sync::OnceLock::<String>::new());
    let addr_cell = fake.clone();
    let server = FakeRegistry::start(move |r| {
        let addr = addr_cell.get().cloned().unwrap_or_default();
        if r.path() == "/token" {
            n.fetch_add(1, Ordering::SeqCst);
            assert_eq!(r.query("service").as_deref(), Some("fake-registry"));
            assert_eq!(r.query("scope").as_deref(), Some("repository:test/repo:pull"));
            if r.header("authorization") != Some(auth_ok.as_str()) {
                return FakeResponse::status(401);
            }
            return FakeResponse::ok(br#"{"access_token":"tok-123","expires_in":300}"#.to_vec())
                .header("Content-Type", "application/json");
        }
        if r.header("authorization") != Some("Bearer tok-123") {
            return FakeResponse::status(401).header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:test/repo:pull""#
                ),
            );
        }
        i.answer(r)
    })
    .await;
    fake.set(server.addr.clone()).unwrap();
    let r = img.reference(&server);

    let c = client(vec![], Credentials::none().with(&server.addr, USER, secret));
    pull(&c, &r).await;
    pull(&c, &r).await;
    assert_eq!(token_requests.load(Ordering::SeqCst), 1);
    // Only the first request went unauthenticated.
    let unauthenticated = server
        .requests()
        .iter()
        .filter(|q| q.path() != "/token" && q.header("authorization").is_none())
        .count();
    assert_eq!(unauthenticated, 1);

    let wrong = client(
        vec![],
        Credentials::none().with(&server.addr, USER, "bad-bad-bad"),
    );
    let e = wrong.fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(!e.to_string().contains("bad-bad-bad"), "{e}");

    let anonymous = plain_client();
    let e = anonymous.fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn basic_challenge_sends_credentials_only_when_asked() {
    let img = FakeImage::new();
    let expected = format!("Basic {}", base64_encode(b"u:p"));
    let i = img.clone();
    let fake = FakeRegistry::start(move |r| {
        if r.header("authorization") != Some(expected.as_str()) {
            return FakeResponse::status(401).header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        i.answer(r)
    })
    .await;
    let r = img.reference(&fake);
    let e = plain_client().fetch_manifest(&r).await.unwrap_err();
    assert_kind(&e, ErrorKind::PermissionDenied);
    assert!(
        matches!(e, RegistryError::CredentialsRequired { .. }),
        "{e:?}"
    );

    let c = client(vec![], Credentials::none().with(&fake.addr, "u", "p"));
    pull(&c, &r).await;
    // After the first challenge the credentials go up front.
    let challenged = fake
        .requests()
        .iter()
        .filter(|q| q.header("authorization").is_none())
        .count();
    assert_eq!(
        challenged, 2,
        "one from the anonymous client, one from the first pull"
    );
}

/// R5: nested indexes are followed, sizes checked, the outer index reported.
#[tokio::test]
async fn r5_nested_index() {
    let img = FakeImage::new();
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": Digest::of(b"arm").to_string(), "size": 3,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": img.manifest_digest.to_string(),
             "size": img.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }))
    .unwrap();
    let outer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": Digest::of(b"attest").to_string(),
             "size": 6, "platform": {"os": "unknown", "architecture": "unknown"}},
            {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": Digest::of(&inner).to_string(),
             "size": inner.len()},
        ]
    }))
    .unwrap();
    let (i, inner_b, outer_b) = (img.clone(), inner.clone(), outer.clone());
    let fake = FakeRegistry::start(move |r| {
        if r.path() == "/v2/test/repo/manifests/nested" {
            FakeResponse::ok(outer_b.clone()).header("Content-Type", MEDIA_TYPE_OCI_INDEX)
        } else if r.path() == format!("/v2/test/repo/manifests/{}", Digest::of(&inner_b)) {
            FakeResponse::ok(inner_b.clone()).header("Content-Type", MEDIA_TYPE_OCI_INDEX)
        } else {
            i.answer(r)
        }
    })
    .await;
    let c = plain_client();
    let r = reference(&format!("{}/test/repo:nested", fake.addr));
    let resolved = pull(&c, &r).await;
    assert_eq!(resolved.manifest.digest, img.manifest_digest);
    assert_eq!(resolved.index.unwrap().digest, Digest::of(&outer));
    assert_eq!(resolved.config.0, img.config_digest);

    let e = c
        .resolve(&r, &Platform::parse("linux/riscv64").unwrap())
        .await
        .unwrap_err();
    assert_kind(&e, ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("linux/arm/v7"), "{e}");
}

/// Mirrors with a path, on the fake: the exact URLs requested.
#[tokio::test]
async fn mirror_path_is_placed_under_v2() {
    let img = FakeImage::new();
    let i = img.clone();
    let mirror = FakeRegistry::start(move |r| match r.path().strip_prefix("/v2/some/prefix") {
        Some(rest) => i.answer(&FakeRequest {
            target: format!("/v2{rest}"),
            ..r.clone()
        }),
        None => FakeResponse::not_found(),
    })
    .await;
    let origin = format!("127.0.0.1:{}", dagger_integration_tests::free_port());
    let c = client(
        vec![(
            origin.clone(),
            RegistryConfig {
                mirrors: vec![format!("{}/some/prefix/", mirror.addr)],
                ..Default::default()
            },
        )],
        Credentials::none(),
    );
    pull(&c, &reference(&format!("{origin}/test/repo:latest"))).await;
    let paths: Vec<String> = mirror.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        paths[0], "/v2/some/prefix/test/repo/manifests/latest",
        "{paths:?}"
    );
    assert!(paths
        .iter()
        .all(|p| p.starts_with("/v2/some/prefix/test/repo/")));
}

#[test]
fn credentials_from_a_docker_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
            base64_encode(b"user:pw")
        ),
    )
    .unwrap();
    let c = Credentials::from_json(&std::fs::read(&path).unwrap()).unwrap();
    assert!(c.has("127.0.0.1:5000"));
    assert!(!format!("{c:?}").contains("pw"));
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
