//! Pushing images: the registry push client (`RegistryClient::push_image`) against Debian's
//! real `docker-registry` in every auth/TLS mode and against a scripted fake (chunked uploads,
//! Location handling, mount fallback, retries, registry errors), and `Container.publish`
//! end to end, checked with skopeo, a second engine and podman.

use dagger_engine::error::{Classify, ErrorKind};
use dagger_engine::oci::{Digest, Reference};
use dagger_engine::registry::{
    BlobOutcome, Credentials, PushBlob, PushManifest, PushOptions, RegistryClient, RegistryError,
    RegistryOptions,
};
use dagger_integration_tests::fixtures::{
    base64, docker_config, index_platforms, registry_toml, PodmanStore,
};
use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{
    require_binary, run, FakeRegistry, FakeRequest, FakeResponse, Mode, TestRegistry, PASS, USER,
};
use dagger_integration_tests::{Engine, EngineOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

// ---- helpers ----

fn client_for(reg: &TestRegistry, credentials: Credentials, push: PushOptions) -> RegistryClient {
    let mut hosts = BTreeMap::new();
    hosts.insert(reg.addr.clone(), reg.registry_config());
    RegistryClient::new(RegistryOptions {
        hosts,
        extra_ca_dir: None,
        credentials,
        push,
        ..Default::default()
    })
    .unwrap()
}

fn fake_client(push: PushOptions) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        extra_ca_dir: None,
        push,
        ..Default::default()
    })
    .unwrap()
}

/// An image read from the test OCI layout: its blobs (configs and layers) and its manifests,
/// children before the index.
struct LayoutImage {
    blobs: Vec<PushBlob>,
    manifests: Vec<PushManifest>,
}

fn layout_blob(layout: &Path, digest: &str) -> (Digest, PathBuf) {
    let d = Digest::parse(digest).unwrap();
    let path = layout.join("blobs/sha256").join(d.hex());
    (d, path)
}

fn layout_image(tag: &str) -> LayoutImage {
    let layout = images::layout();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in the layout"))
        .clone();
    let mut out = LayoutImage {
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    fn walk(layout: &Path, desc: &serde_json::Value, out: &mut LayoutImage) {
        let media_type = desc["mediaType"].as_str().unwrap().to_string();
        let (digest, path) = layout_blob(layout, desc["digest"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(children) = doc["manifests"].as_array() {
            for c in children {
                walk(layout, c, out);
            }
        } else {
            for d in std::iter::once(&doc["config"]).chain(doc["layers"].as_array().unwrap()) {
                let (digest, path) = layout_blob(layout, d["digest"].as_str().unwrap());
                if out.blobs.iter().all(|b| b.digest != digest) {
                    out.blobs.push(PushBlob {
                        size: d["size"].as_u64().unwrap(),
                        digest,
                        path,
                        mount_from: Vec::new(),
                    });
                }
            }
        }
        if out.manifests.iter().all(|m| m.digest != digest) {
            out.manifests.push(PushManifest {
                digest,
                media_type,
                bytes: bytes.into(),
            });
        }
    }
    walk(layout, &entry, &mut out);
    out
}

fn skopeo() -> Command {
    let skopeo = require_binary("skopeo", "skopeo");
    let work = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(skopeo);
    cmd.env("REGISTRY_AUTH_FILE", work.join("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", work.join("registries.conf"));
    cmd
}

/// `skopeo inspect [--raw]` of `repo:tag` on `reg`, as JSON.
fn skopeo_inspect(reg: &TestRegistry, image: &str, extra: &[&str]) -> serde_json::Value {
    let mut cmd = skopeo();
    cmd.arg("inspect").args(extra);
    match &reg.cert_dir {
        Some(dir) => cmd.arg("--cert-dir").arg(dir),
        None => cmd.arg("--tls-verify=false"),
    };
    match reg.creds() {
        Some((u, p)) => cmd.arg("--creds").arg(format!("{u}:{p}")),
        None => cmd.arg("--no-creds"),
    };
    cmd.arg(format!("docker://{}/{image}", reg.addr));
    let out = run(&mut cmd);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `skopeo copy --all` of `image` into a fresh OCI layout: skopeo verifies every blob digest.
fn skopeo_copy_out(reg: &TestRegistry, image: &str) {
    let dest = tempfile::tempdir().unwrap();
    let mut cmd = skopeo();
    cmd.args(["copy", "--all", "--insecure-policy", "--quiet"]);
    match &reg.cert_dir {
        Some(dir) => cmd.arg("--src-cert-dir").arg(dir),
        None => cmd.arg("--src-tls-verify=false"),
    };
    match reg.creds() {
        Some((u, p)) => cmd.arg("--src-creds").arg(format!("{u}:{p}")),
        None => cmd.arg("--src-no-creds"),
    };
    cmd.arg(format!("docker://{}/{image}", reg.addr))
        .arg(format!("oci:{}:x", dest.path().display()));
    run(&mut cmd);
}

// ---- the push client against the real registry ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_client_every_auth_mode_monolithic_and_chunked() {
    for mode in [
        Mode::Plain,
        Mode::Tls,
        Mode::Basic,
        Mode::BasicHttp,
        Mode::Token,
    ] {
        let reg = TestRegistry::start(mode);
        let image = layout_image(images::MULTIARCH);
        let root = image.manifests.last().unwrap().digest.clone();
        // Monolithic in some modes, chunked in others (the busybox layer is ~1 MB).
        let chunked = matches!(mode, Mode::Tls | Mode::Token);
        let opts = if chunked {
            PushOptions {
                chunk_threshold: 64 * 1024,
                chunk_size: 200 * 1024,
            }
        } else {
            PushOptions::default()
        };
        let client = client_for(&reg, reg.credentials(), opts);
        let target = Reference::parse(&format!("{}/pushed/multi:v1", reg.addr)).unwrap();
        let report = client
            .push_image(&target, image.blobs, image.manifests)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(report.digest, root, "{mode:?}");
        assert!(report.uploaded >= 3, "{mode:?}: {report:?}");
        assert_eq!(report.existed + report.mounted, 0, "{mode:?}: {report:?}");

        // The index arrived byte for byte, and every blob verifies.
        let raw = skopeo_inspect(&reg, "pushed/multi:v1", &["--raw"]);
        assert_eq!(
            raw["mediaType"], "application/vnd.oci.image.index.v1+json",
            "{mode:?}"
        );
        let arm = skopeo_inspect(&reg, "pushed/multi:v1", &["--override-arch", "arm64"]);
        assert_eq!(arm["Architecture"], "arm64", "{mode:?}");
        skopeo_copy_out(&reg, "pushed/multi:v1");
        // Our own client reads it back with the same digest.
        let fetched = client.fetch_manifest(&target).await.unwrap();
        assert_eq!(fetched.digest, root);

        // A second push finds every blob in place and uploads nothing.
        let again = layout_image(images::MULTIARCH);
        let report = client
            .push_image(&target, again.blobs, again.manifests)
            .await
            .unwrap();
        assert_eq!(report.uploaded, 0, "{mode:?}: {report:?}");
        assert!(report.existed >= 3, "{mode:?}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_client_mounts_from_a_source_repository() {
    for mode in [Mode::Plain, Mode::Token] {
        let reg = TestRegistry::start(mode);
        images::push_busybox(&reg, "src/busybox:1");
        let client = client_for(&reg, reg.credentials(), PushOptions::default());
        let mut image = layout_image(images::BUSYBOX);
        for b in &mut image.blobs {
            b.mount_from = vec!["src/busybox".to_string()];
        }
        let target = Reference::parse(&format!("{}/dst/app:1", reg.addr)).unwrap();
        let report = client
            .push_image(&target, image.blobs, image.manifests)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(report.uploaded, 0, "{mode:?}: {report:?}");
        assert_eq!(report.mounted, 2, "{mode:?}: {report:?}");
        skopeo_copy_out(&reg, "dst/app:1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_auth_failures_name_the_repository_but_never_the_password() {
    let secret = "wrong-password-91c2e";
    for mode in [Mode::Basic, Mode::Token] {
        let reg = TestRegistry::start(mode);
        let client = client_for(
            &reg,
            Credentials::none().with(&reg.addr, USER, secret),
            PushOptions::default(),
        );
        let image = layout_image(images::BUSYBOX);
        let target = Reference::parse(&format!("{}/private/app:1", reg.addr)).unwrap();
        let e = client
            .push_image(&target, image.blobs, image.manifests)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{mode:?}: {msg}");
        assert!(
            msg.contains("private/app") && msg.contains(&reg.addr),
            "{msg}"
        );
        assert!(!msg.contains(secret) && !format!("{e:?}").contains(secret));
        assert!(!msg.contains(PASS));

        // Without credentials: refused as a push, even where anonymous pulls are allowed.
        let anon = client_for(&reg, Credentials::none(), PushOptions::default());
        let image = layout_image(images::BUSYBOX);
        let e = anon
            .push_image(&target, image.blobs, image.manifests)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{mode:?}: {e}");
        assert!(e.to_string().contains("push access denied"), "{e}");
    }
}

// ---- the push client against a scripted fake ----

/// A scripted registry for pushes: blobs are missing (HEAD 404) unless `existing`, uploads
/// open at a relative Location, PATCHes move the session to an absolute Location, and every
/// manifest PUT answers with `manifest_answer`.
#[derive(Clone)]
struct Script {
    existing: bool,
    min_chunk: Option<u64>,
    /// 503 on the first `fail_puts` blob PUTs.
    fail_puts: usize,
    /// Answer a mount with 202 (refused) instead of 201.
    refuse_mount: bool,
    manifest_answer: Option<FakeResponse>,
}

fn scripted(addr: Arc<Mutex<String>>, script: Script) -> impl Fn(&FakeRequest) -> FakeResponse {
    let puts = Arc::new(Mutex::new(0usize));
    let session = Arc::new(Mutex::new(0usize));
    move |req: &FakeRequest| {
        let path = req.path().to_string();
        match req.method.as_str() {
            "HEAD" if path.contains("/blobs/") => {
                if script.existing {
                    FakeResponse::ok(Vec::new())
                } else {
                    FakeResponse::not_found()
                }
            }
            "POST" if path.ends_with("/blobs/uploads/") => {
                if req.query("mount").is_some() && !script.refuse_mount {
                    return FakeResponse::status(201);
                }
                let mut n = session.lock().unwrap();
                *n += 1;
                let mut r = FakeResponse::status(202).header(
                    "Location",
                    &format!("/v2/app/blobs/uploads/s{}?_state=a", *n),
                );
                if let Some(m) = script.min_chunk {
                    r = r.header("OCI-Chunk-Min-Length", &m.to_string());
                }
                r
            }
            "PATCH" => {
                let next = format!(
                    "http://{}/v2/app/blobs/uploads/next-{}",
                    addr.lock().unwrap(),
                    req.header("content-range").unwrap_or("?")
                );
                FakeResponse::status(202).header("Location", &next)
            }
            "PUT" if path.contains("/blobs/uploads/") => {
                let mut p = puts.lock().unwrap();
                *p += 1;
                if *p <= script.fail_puts {
                    FakeResponse::status(503)
                } else {
                    FakeResponse::status(201)
                }
            }
            "PUT" if path.contains("/manifests/") => script
                .manifest_answer
                .clone()
                .unwrap_or_else(|| FakeResponse::status(201)),
            _ => FakeResponse::status(400),
        }
    }
}

async fn fake(script: Script) -> FakeRegistry {
    let addr = Arc::new(Mutex::new(String::new()));
    let f = FakeRegistry::start(scripted(addr.clone(), script)).await;
    *addr.lock().unwrap() = f.addr.clone();
    f
}

fn plain_script() -> Script {
    Script {
        existing: false,
        min_chunk: None,
        fail_puts: 0,
        refuse_mount: false,
        manifest_answer: None,
    }
}

/// A blob file of `size` bytes (not a real image: the fake does not check).
fn blob_file(dir: &Path, size: usize) -> PushBlob {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let digest = Digest::of(&bytes);
    let path = dir.join(digest.hex());
    std::fs::write(&path, &bytes).unwrap();
    PushBlob {
        digest,
        size: size as u64,
        path,
        mount_from: Vec::new(),
    }
}

fn manifest(bytes: &[u8]) -> PushManifest {
    PushManifest {
        digest: Digest::of(bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes: bytes.to_vec().into(),
    }
}

#[tokio::test]
async fn chunked_upload_follows_locations_and_the_minimum_chunk_length() {
    let reg = fake(Script {
        min_chunk: Some(300_000),
        ..plain_script()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blob = blob_file(dir.path(), 1_000_000);
    let client = fake_client(PushOptions {
        chunk_threshold: 100_000,
        chunk_size: 100_000,
    });
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    let m = manifest(b"{}");
    let report = client
        .push_image(&target, vec![blob.clone()], vec![m.clone()])
        .await
        .unwrap();
    assert_eq!(report.uploaded, 1);
    assert_eq!(report.uploaded_bytes, 1_000_000);
    let reqs = reg.requests();
    let patches: Vec<&FakeRequest> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    // 300 000-byte chunks (the registry's minimum beats our 100 000): 3 full ones and the rest.
    let ranges: Vec<&str> = patches
        .iter()
        .map(|r| r.header("content-range").unwrap())
        .collect();
    assert_eq!(
        ranges,
        [
            "0-299999",
            "300000-599999",
            "600000-899999",
            "900000-999999"
        ]
    );
    // The first PATCH went to the relative Location of the POST; the next ones each to the
    // absolute Location of the previous answer.
    assert_eq!(patches[0].target, "/v2/app/blobs/uploads/s1?_state=a");
    assert_eq!(patches[1].path(), "/v2/app/blobs/uploads/next-0-299999");
    assert_eq!(
        patches[3].path(),
        "/v2/app/blobs/uploads/next-600000-899999"
    );
    let close = reqs
        .iter()
        .find(|r| r.method == "PUT" && r.path().contains("/blobs/uploads/"))
        .unwrap();
    assert_eq!(close.path(), "/v2/app/blobs/uploads/next-900000-999999");
    assert_eq!(close.query("digest").unwrap(), blob.digest.to_string());
    assert_eq!(close.header("content-length"), Some("0"));
    let put_manifest = reqs
        .iter()
        .find(|r| r.path() == "/v2/app/manifests/1")
        .unwrap();
    assert_eq!(
        put_manifest.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
}

#[tokio::test]
async fn small_blobs_go_in_one_put_and_existing_ones_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let blob = blob_file(dir.path(), 5000);
    let client = fake_client(PushOptions::default());

    let reg = fake(plain_script()).await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    client
        .push_image(&target, vec![blob.clone()], vec![manifest(b"{}")])
        .await
        .unwrap();
    let reqs = reg.requests();
    let put = reqs
        .iter()
        .find(|r| r.method == "PUT" && r.path().contains("/blobs/uploads/"))
        .unwrap();
    assert_eq!(put.header("content-length"), Some("5000"));
    assert_eq!(put.query("digest").unwrap(), blob.digest.to_string());
    assert_eq!(
        put.query("_state").as_deref(),
        Some("a"),
        "keeps the Location's query"
    );
    assert!(reqs.iter().all(|r| r.method != "PATCH"));

    let reg = fake(Script {
        existing: true,
        ..plain_script()
    })
    .await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    let report = client
        .push_image(&target, vec![blob.clone()], vec![manifest(b"{}")])
        .await
        .unwrap();
    assert_eq!((report.existed, report.uploaded), (1, 0));
    let methods: Vec<String> = reg
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path()))
        .collect();
    assert_eq!(
        methods,
        [
            format!("HEAD /v2/app/blobs/{}", blob.digest),
            "PUT /v2/app/manifests/1".to_string()
        ]
    );
}

#[tokio::test]
async fn refused_mount_falls_back_to_upload_and_failed_uploads_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut blob = blob_file(dir.path(), 5000);
    blob.mount_from = vec!["library/base".into()];
    let client = fake_client(PushOptions::default());

    let reg = fake(Script {
        refuse_mount: true,
        fail_puts: 1,
        ..plain_script()
    })
    .await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    let outcome = client.push_blob(&target, &blob).await.unwrap();
    assert_eq!(outcome, BlobOutcome::Uploaded);
    let reqs = reg.requests();
    let posts: Vec<&FakeRequest> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts[0].query("mount").unwrap(), blob.digest.to_string());
    assert_eq!(posts[0].query("from").as_deref(), Some("library/base"));
    // The refused mount's session took the first PUT (503); a new session took the second.
    assert_eq!(posts.len(), 2, "{reqs:?}");
    let puts: Vec<&FakeRequest> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0].path(), "/v2/app/blobs/uploads/s1");
    assert_eq!(puts[1].path(), "/v2/app/blobs/uploads/s2");

    let reg = fake(plain_script()).await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    assert_eq!(
        client.push_blob(&target, &blob).await.unwrap(),
        BlobOutcome::Mounted
    );
}

#[tokio::test]
async fn manifest_errors_show_the_registry_message_and_digests_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let blob = blob_file(dir.path(), 100);
    let client = fake_client(PushOptions::default());
    let reg = fake(Script {
        manifest_answer: Some(
            FakeResponse::new(
                400,
                br#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"config blob unknown"}]}"#.to_vec(),
            )
            .header("Content-Type", "application/json"),
        ),
        ..plain_script()
    })
    .await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    let e = client
        .push_image(&target, vec![blob.clone()], vec![manifest(b"{}")])
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("MANIFEST_INVALID: manifest invalid") && msg.contains("config blob unknown"),
        "{msg}"
    );
    assert!(msg.contains("400") && msg.contains("app"), "{msg}");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    let wrong = Digest::of(b"something else");
    let reg = fake(Script {
        manifest_answer: Some(
            FakeResponse::status(201).header("Docker-Content-Digest", &wrong.to_string()),
        ),
        ..plain_script()
    })
    .await;
    let target = Reference::parse(&format!("{}/app:1", reg.addr)).unwrap();
    let e = client
        .push_image(&target, vec![blob], vec![manifest(b"{}")])
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::HeaderDigestMismatch { .. }),
        "{e}"
    );
}

// ---- Container.publish end to end ----

/// A fresh engine that trusts `reg` and holds `creds` for `host` (a DOCKER_CONFIG).
fn engine_with(reg: &TestRegistry, host: &str, creds: Option<(&str, &str)>) -> Engine {
    let dir = tempfile::tempdir().unwrap().keep().join("docker");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some((u, p)) = creds {
        docker_config(&dir, host, u, p);
    }
    Engine::start(EngineOptions {
        config: Some(registry_toml(reg)),
        env: vec![("DOCKER_CONFIG".into(), dir.display().to_string())],
        ..Default::default()
    })
}

fn engine_for(reg: &TestRegistry) -> Engine {
    engine_with(reg, &reg.addr, reg.creds())
}

/// The pipeline the publish tests build: an image plus an exec, a new file, env and an
/// entrypoint. `publish_args` is the inside of `publish(...)`.
fn build_and_publish(base: &str, publish_args: &str) -> String {
    format!(
        r#"{{ container {{ from(address: "{base}") {{
            withExec(args: ["sh", "-c", "echo built > /built.txt"]) {{
            withNewFile(path: "/hello.txt", contents: "hello from publish") {{
            withEnvVariable(name: "GREETING", value: "hi") {{
            withEntrypoint(args: ["/bin/sh", "-c"]) {{
                publish({publish_args})
            }} }} }} }} }} }} }}"#
    )
}

fn published(data: &serde_json::Value) -> String {
    data["container"]["from"]["withExec"]["withNewFile"]["withEnvVariable"]["withEntrypoint"]
        ["publish"]
        .as_str()
        .unwrap_or_else(|| panic!("no publish result: {data}"))
        .to_string()
}

/// Pulls `reference` with a second, fresh engine and checks the files and config arrived.
fn check_with_fresh_engine(reg: &TestRegistry, reference: &str) {
    let engine = engine_for(reg);
    let data = engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{reference}") {{
            envVariable(name: "GREETING") entrypoint
            withExec(args: ["cat", "/hello.txt", "/built.txt"]) {{ stdout }}
        }} }} }}"#
    ));
    let c = &data["container"]["from"];
    assert_eq!(c["envVariable"], "hi", "{data}");
    assert_eq!(c["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["withExec"]["stdout"], "hello from publishbuilt\n");
}

#[test]
fn publish_to_every_registry_mode_then_inspect_and_run_elsewhere() {
    for mode in [Mode::Plain, Mode::Tls, Mode::Basic, Mode::Token] {
        let reg = TestRegistry::start(mode);
        images::push_busybox(&reg, "base/busybox:1");
        let engine = engine_for(&reg);
        let base = format!("{}/base/busybox:1", reg.addr);
        let address = format!("{}/out/app:v1", reg.addr);
        let data = engine.query_ok(&build_and_publish(
            &base,
            &format!(r#"address: "{address}""#),
        ));
        let result = published(&data);
        assert!(
            result.starts_with(&format!("{address}@sha256:")),
            "{mode:?}: {result}"
        );
        let digest = result.rsplit('@').next().unwrap();

        let raw = skopeo_inspect(&reg, "out/app:v1", &["--raw"]);
        assert_eq!(
            raw["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{mode:?}"
        );
        let layers = raw["layers"].as_array().unwrap();
        assert!(layers.len() >= 2, "{mode:?}: {raw}");
        for l in layers {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
                "{mode:?}"
            );
        }
        let inspect = skopeo_inspect(&reg, "out/app:v1", &[]);
        assert_eq!(inspect["Digest"], digest, "{mode:?}");
        let config = skopeo_inspect(&reg, "out/app:v1", &["--config"]);
        let env: Vec<&str> = config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"GREETING=hi"), "{mode:?}: {env:?}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/bin/sh", "-c"])
        );
        assert_eq!(config["architecture"], "amd64");
        skopeo_copy_out(&reg, "out/app:v1");

        check_with_fresh_engine(&reg, &result);
    }
}

#[test]
fn publish_runs_under_podman() {
    let podman = require_binary("podman", "podman");
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "base/busybox:1", Format::Oci, None);
    let engine = engine_for(&reg);
    let address = format!("{}/out/podman:v1", reg.addr);
    let data = engine.query_ok(&build_and_publish(
        &format!("{}/base/busybox:1", reg.addr),
        &format!(r#"address: "{address}""#),
    ));
    let result = published(&data);

    // A private podman store and configuration.
    let store = PodmanStore::new(&podman);
    let podman_cmd = |args: &[&str]| store.command(args);
    run(&mut podman_cmd(&[
        "pull",
        "--quiet",
        "--tls-verify=false",
        &result,
    ]));
    let out = run(&mut podman_cmd(&[
        "run",
        "--rm",
        "--network=none",
        &result,
        "cat /hello.txt; echo; echo $GREETING",
    ]));
    let _ = run(&mut podman_cmd(&["rmi", "--all", "--force"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from publish\nhi\n",
        "the entrypoint (sh -c) ran the command with the image's env"
    );
}

#[test]
fn multi_platform_docker_media_types_and_zstd() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::AMD64, &reg, "base/amd64:1", Format::Oci, None);
    images::push(images::ARM64, &reg, "base/arm64:1", Format::Oci, None);
    let engine = engine_for(&reg);
    let a = &reg.addr;

    // amd64 and arm64 variants (no exec on arm64): an index.
    let data = engine.query_ok(&format!(
        r#"{{ amd: container(platform: "linux/amd64") {{ from(address: "{a}/base/amd64:1") {{
                withNewFile(path: "/which", contents: "amd64") {{ id }} }} }}
             arm: container(platform: "linux/arm64") {{ from(address: "{a}/base/arm64:1") {{
                withNewFile(path: "/which", contents: "arm64") {{ id }} }} }} }}"#
    ));
    let amd = data["amd"]["from"]["withNewFile"]["id"].as_str().unwrap();
    let arm = data["arm"]["from"]["withNewFile"]["id"].as_str().unwrap();
    let data = engine.query_ok(&format!(
        r#"{{ container {{ publish(address: "{a}/out/multi:1",
                platformVariants: ["{amd}", "{arm}"]) }} }}"#
    ));
    let result = data["container"]["publish"].as_str().unwrap();
    assert!(
        result.starts_with(&format!("{a}/out/multi:1@sha256:")),
        "{result}"
    );
    let raw = skopeo_inspect(&reg, "out/multi:1", &["--raw"]);
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let mut platforms = index_platforms(&raw);
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let arm_cfg = skopeo_inspect(
        &reg,
        "out/multi:1",
        &["--override-arch", "arm64", "--config"],
    );
    assert_eq!(arm_cfg["architecture"], "arm64");
    skopeo_copy_out(&reg, "out/multi:1");
    let fresh = engine_for(&reg);
    let data = fresh.query_ok(&format!(
        r#"{{ a: container {{ from(address: "{a}/out/multi:1") {{ file(path: "/which") {{ contents }} }} }}
             b: container(platform: "linux/arm64") {{ from(address: "{a}/out/multi:1") {{ file(path: "/which") {{ contents }} }} }} }}"#
    ));
    assert_eq!(data["a"]["from"]["file"]["contents"], "amd64");
    assert_eq!(data["b"]["from"]["file"]["contents"], "arm64");

    // Docker media types, zstd layers.
    let data = engine.query_ok(&build_and_publish(
        &format!("{a}/base/amd64:1"),
        &format!(r#"address: "{a}/out/docker:1", mediaTypes: DockerMediaTypes"#),
    ));
    published(&data);
    let raw = skopeo_inspect(&reg, "out/docker:1", &["--raw"]);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    skopeo_copy_out(&reg, "out/docker:1");

    let data = engine.query_ok(&build_and_publish(
        &format!("{a}/base/amd64:1"),
        &format!(r#"address: "{a}/out/zstd:1", forcedCompression: Zstd"#),
    ));
    let zstd_ref = published(&data);
    let raw = skopeo_inspect(&reg, "out/zstd:1", &["--raw"]);
    for l in raw["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    skopeo_copy_out(&reg, "out/zstd:1");
    check_with_fresh_engine(&reg, &zstd_ref);
}

/// A TCP proxy in front of a registry that counts the blob upload requests going through it
/// (request lines seen in the client-to-registry stream).
struct CountingProxy {
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
    _rt: tokio::runtime::Runtime,
}

/// The methods whose request lines the proxy records.
const COUNTED: [&[u8]; 4] = [b"POST /v2/", b"PUT /v2/", b"PATCH /v2/", b"HEAD /v2/"];

/// Records every complete request line in `data` (method names followed by " /v2/" are
/// specific enough: layer bodies are compressed) and returns where the next scan must start:
/// at an incomplete line, else far enough back to catch a method name cut by the read.
fn scan_request_lines(data: &[u8], seen: &Mutex<Vec<String>>) -> usize {
    let longest = COUNTED.iter().map(|m| m.len()).max().unwrap_or(0);
    let mut pos = 0;
    loop {
        let next = COUNTED
            .iter()
            .filter_map(|m| {
                data[pos..]
                    .windows(m.len())
                    .position(|w| w == *m)
                    .map(|i| pos + i)
            })
            .min();
        let Some(start) = next else {
            return pos.max(data.len().saturating_sub(longest - 1));
        };
        let Some(len) = data[start..].windows(2).position(|w| w == b"\r\n") else {
            return start;
        };
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&data[start..start + len]).into_owned());
        pos = start + len;
    }
}

#[test]
fn request_lines_split_across_reads_are_counted_once() {
    let seen = Mutex::new(Vec::new());
    let stream = b"xxPUT /v2/a/blobs/uploads/1?digest=d HTTP/1.1\r\nHost: h\r\n\r\nbodyPATCH /v2/b HTTP/1.1\r\n";
    for cut in 0..stream.len() {
        seen.lock().unwrap().clear();
        let mut pending = stream[..cut].to_vec();
        let keep = scan_request_lines(&pending, &seen);
        pending.drain(..keep);
        pending.extend_from_slice(&stream[cut..]);
        let keep = scan_request_lines(&pending, &seen);
        pending.drain(..keep);
        let lines = seen.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "PUT /v2/a/blobs/uploads/1?digest=d HTTP/1.1",
                "PATCH /v2/b HTTP/1.1"
            ],
            "cut at {cut}"
        );
    }
}

impl CountingProxy {
    fn start(upstream: &str) -> CountingProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (up, seen) = (upstream.to_string(), lines.clone());
        let task = rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, seen) = (up.clone(), seen.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    // Bytes not yet scanned past; a request line split across reads is
                    // completed by the next read before it is recorded.
                    let mut pending: Vec<u8> = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let keep_from = scan_request_lines(&pending, &seen);
                        pending.drain(..keep_from);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                    let _ = back.await;
                });
            }
        });
        CountingProxy {
            addr,
            lines,
            _task: task,
            _rt: rt,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

#[test]
fn republish_uploads_nothing_and_base_layers_mount_across_repositories() {
    let reg = TestRegistry::start(Mode::Plain);
    let proxy = CountingProxy::start(&reg.addr);
    images::push(images::BUSYBOX, &reg, "base/busybox:1", Format::Oci, None);
    let engine = engine_for(&reg);
    // Pulled and pushed through the proxy, so the base layer's source is the proxy's address.
    let p = &proxy.addr;
    let query = build_and_publish(
        &format!("{p}/base/busybox:1"),
        &format!(r#"address: "{p}/out/app:1""#),
    );
    let first = published(&engine.query_ok(&query));
    let lines = proxy.take();
    let uploads = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| {
                (l.starts_with("PUT ") || l.starts_with("PATCH ")) && l.contains("/blobs/uploads/")
            })
            .count()
    };
    let mounts: Vec<&String> = lines.iter().filter(|l| l.contains("mount=")).collect();
    assert_eq!(mounts.len(), 1, "the busybox layer is mounted: {lines:#?}");
    assert!(
        mounts[0].contains("from=base%2Fbusybox") || mounts[0].contains("from=base/busybox"),
        "{mounts:?}"
    );
    // New layers (exec, file) and the config are uploaded; the base layer is not.
    assert!(uploads(&lines) >= 2, "{lines:#?}");

    // Unchanged: every blob exists, nothing is uploaded, the same digest comes back.
    let second = published(&engine.query_ok(&query));
    assert_eq!(first, second);
    let lines = proxy.take();
    assert_eq!(uploads(&lines), 0, "{lines:#?}");
    assert!(lines.iter().all(|l| !l.starts_with("POST ")), "{lines:#?}");
    assert!(
        lines.iter().filter(|l| l.starts_with("HEAD ")).count() >= 3,
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PUT ") && l.contains("/manifests/1")),
        "{lines:#?}"
    );
}

#[test]
fn publish_auth_failure_names_the_repository_not_the_password() {
    let secret = "wrong-password-5d1b7";
    for mode in [Mode::Basic, Mode::Token] {
        let reg = TestRegistry::start(mode);
        images::push_busybox(&reg, "base/busybox:1");
        // Right credentials to pull the base, wrong ones to push: one host, so the push
        // goes to a second registry whose credentials are wrong.
        let target = TestRegistry::start(mode);
        let dir = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({ "auths": {
            reg.addr.as_str(): { "auth": base64(format!("{USER}:{PASS}").as_bytes()) },
            target.addr.as_str(): { "auth": base64(format!("{USER}:{secret}").as_bytes()) },
        } });
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let toml = format!("{}{}", registry_toml(&reg), registry_toml(&target));
        let engine = Engine::start(EngineOptions {
            config: Some(toml),
            env: vec![("DOCKER_CONFIG".into(), dir.path().display().to_string())],
            ..Default::default()
        });
        let v = engine.query(&build_and_publish(
            &format!("{}/base/busybox:1", reg.addr),
            &format!(r#"address: "{}/private/app:1""#, target.addr),
        ));
        let err = &v["errors"][0];
        let msg = err["message"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(
            err["extensions"]["code"], "PERMISSION_DENIED",
            "{mode:?}: {v}"
        );
        assert!(
            msg.contains("private/app") && msg.contains(&target.addr),
            "{msg}"
        );
        assert!(!v.to_string().contains(secret), "password leaked: {v}");
        assert!(!engine.log().contains(secret), "password in the log");
    }
}

#[test]
fn the_real_python_sdk_publishes() {
    use dagger_integration_tests::sdk::{run_program, Lang, Launch, SdkFixture};
    let fx = SdkFixture::start();
    let run = run_program(&fx, Lang::Python, Launch::DaggerRun, "publish.py");
    assert!(
        run.status.success() && run.stdout.contains("ALL OK"),
        "{}\nengine log:\n{}",
        run.describe(),
        fx.engine.log()
    );
    for check in [
        "publish returns address@digest",
        "published file reads back",
        "published env reads back",
        "multi-platform publish",
        "arm64 variant reads back",
        "publishing nothing fails clearly",
    ] {
        assert!(
            run.stdout.contains(&format!("ok: {check}")),
            "missing {check:?}\n{}",
            run.describe()
        );
    }
}
