//! `container.from` end to end: the real engine pulls from Debian's docker-registry (every auth
//! mode, mirrors, platforms, media types) and from an in-process fake where a real registry
//! cannot misbehave (wrong bytes, slow bodies), and survives kill -9 mid-pull.

use dagger_engine::metadata::{Metadata, DB_FILE};
use dagger_integration_tests::fixtures::{docker_config, registry_toml};
use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::oci_build::{FileSpec, TestImage};
use dagger_integration_tests::registry::{FakeRegistry, Mode, TestRegistry};
use dagger_integration_tests::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine_for(reg: &TestRegistry, extra_toml: &str) -> Engine {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut env = Vec::new();
    if let (Some(u), Some(p)) = (&reg.user, &reg.pass) {
        env.push((
            "DOCKER_CONFIG".to_string(),
            docker_config(&dir.join("docker"), &reg.addr, u, p),
        ));
    } else {
        env.push((
            "DOCKER_CONFIG".to_string(),
            dir.join("empty-docker").display().to_string(),
        ));
    }
    Engine::start(EngineOptions {
        config: Some(format!("{}{extra_toml}", registry_toml(reg))),
        env,
        ..Default::default()
    })
}

const BUSYBOX_QUERY: &str = r#"imageRef platform defaultArgs envVariable(name: "PATH") workdir
    rootfs { entries } file(path: "/etc/passwd") { contents size name }
    directory(path: "/bin") { exists(path: "sh") }"#;

fn check_busybox(data: &serde_json::Value, reference: &str) {
    let c = &data["container"]["from"];
    assert!(
        c["imageRef"].as_str().unwrap().starts_with(reference),
        "{c}"
    );
    assert!(c["imageRef"].as_str().unwrap().contains("@sha256:"), "{c}");
    assert_eq!(c["platform"], "linux/amd64");
    assert_eq!(c["defaultArgs"], serde_json::json!(["/bin/sh"]));
    assert!(c["envVariable"].as_str().unwrap().contains("/bin"));
    let entries: Vec<&str> = c["rootfs"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        entries.contains(&"bin/") && entries.contains(&"etc/"),
        "{entries:?}"
    );
    assert_eq!(c["file"]["contents"], "root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(c["file"]["name"], "passwd");
    assert_eq!(c["file"]["size"], 30);
    assert_eq!(c["directory"]["exists"], true);
}

#[test]
fn pull_by_tag_and_digest_through_every_auth_mode() {
    for mode in [
        Mode::Plain,
        Mode::Tls,
        Mode::Basic,
        Mode::BasicHttp,
        Mode::Token,
    ] {
        let reg = TestRegistry::start(mode);
        let digest = images::push_busybox(&reg, "lib/busybox:1");
        let engine = engine_for(&reg, "");
        let by_tag = format!("{}/lib/busybox:1", reg.addr);
        let data = engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{by_tag}") {{ {BUSYBOX_QUERY} }} }} }}"#
        ));
        check_busybox(&data, &by_tag);
        let by_digest = format!("{}/lib/busybox@{digest}", reg.addr);
        let data = engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{by_digest}") {{ imageRef file(path: "/etc/passwd") {{ contents }} }} }} }}"#
        ));
        assert_eq!(
            data["container"]["from"]["imageRef"],
            format!("{}/lib/busybox@{digest}", reg.addr),
            "{mode:?}"
        );
    }
}

#[test]
fn wrong_credentials_fail_clearly_without_leaking_them() {
    for mode in [Mode::Basic, Mode::Token] {
        let reg = TestRegistry::start(mode);
        images::push_busybox(&reg, "private/busybox:1");
        let dir = tempfile::tempdir().unwrap();
        let secret = "not-the-password-7f3a9";
        let engine = Engine::start(EngineOptions {
            config: Some(registry_toml(&reg)),
            env: vec![(
                "DOCKER_CONFIG".into(),
                docker_config(dir.path(), &reg.addr, "testuser", secret),
            )],
            ..Default::default()
        });
        let reference = format!("{}/private/busybox:1", reg.addr);
        let v = engine.query(&format!(
            r#"{{ container {{ from(address: "{reference}") {{ imageRef }} }} }}"#
        ));
        let err = &v["errors"][0];
        let msg = err["message"].as_str().unwrap();
        if mode == Mode::Basic {
            assert_eq!(err["extensions"]["code"], "PERMISSION_DENIED", "{v}");
        }
        assert!(msg.contains("private/busybox"), "names the image: {msg}");
        assert!(!v.to_string().contains(secret), "password leaked: {v}");
        assert!(!engine.log().contains(secret), "password in the log");
    }
}

#[test]
fn whiteouts_and_opaque_dirs_on_both_snapshotters() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::MULTILAYER, &reg, "multi:1", Format::Oci, None);
    for snapshotter in ["overlayfs", "native"] {
        let engine = engine_for(
            &reg,
            &format!("[worker.oci]\nsnapshotter = \"{snapshotter}\"\n"),
        );
        let data = engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{}/multi:1") {{
                data: directory(path: "/data") {{ entries }}
                opq: directory(path: "/opq") {{ entries }}
                motd: file(path: "/etc/motd") {{ contents }}
                l2: exists(path: "/data/l2.txt")
                deep: exists(path: "/opq/sub/deep.txt")
            }} }} }}"#,
            reg.addr
        ));
        let c = &data["container"]["from"];
        assert_eq!(
            c["data"]["entries"],
            serde_json::json!(["l3.txt"]),
            "{snapshotter}"
        );
        assert_eq!(
            c["opq"]["entries"],
            serde_json::json!(["new.txt"]),
            "{snapshotter}"
        );
        assert!(
            c["motd"]["contents"].as_str().unwrap().contains("changed"),
            "{c}"
        );
        assert_eq!(c["l2"], false);
        assert_eq!(c["deep"], false);
        assert!(engine.log().contains(&format!(
            "snapshotter: {}",
            if snapshotter == "native" {
                "native"
            } else {
                "overlayfs"
            }
        )));
    }
}

#[test]
fn platform_selection_from_an_index() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::MULTIARCH, &reg, "multi/arch:1", Format::Oci, None);
    let engine = engine_for(&reg, "");
    let r = format!("{}/multi/arch:1", reg.addr);
    let data = engine.query_ok(&format!(
        r#"{{ a: container {{ from(address: "{r}") {{ platform imageRef }} }}
             b: container(platform: "linux/arm64") {{ from(address: "{r}") {{ platform imageRef }} }} }}"#
    ));
    assert_eq!(data["a"]["from"]["platform"], "linux/amd64");
    assert_eq!(data["b"]["from"]["platform"], "linux/arm64");
    assert_ne!(data["a"]["from"]["imageRef"], data["b"]["from"]["imageRef"]);
    let v = engine.query(&format!(
        r#"{{ container(platform: "linux/s390x") {{ from(address: "{r}") {{ platform }} }} }}"#
    ));
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[test]
fn docker_schema2_images_pull() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(
        images::BUSYBOX,
        &reg,
        "docker/busybox:1",
        Format::DockerV2S2,
        None,
    );
    let engine = engine_for(&reg, "");
    let r = format!("{}/docker/busybox:1", reg.addr);
    let data = engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{r}") {{ {BUSYBOX_QUERY} }} }} }}"#
    ));
    check_busybox(&data, &r);
}

#[test]
fn mirror_is_used_when_configured() {
    let mirror = TestRegistry::start(Mode::Plain);
    let mut origin = TestRegistry::start(Mode::Plain);
    images::push(
        images::BUSYBOX,
        &mirror,
        "only/in-mirror:1",
        Format::Oci,
        None,
    );
    let origin_addr = origin.addr.clone();
    origin.stop();
    let engine = Engine::start(EngineOptions {
        config: Some(format!(
            "[registry.\"{origin_addr}\"]\nmirrors = [\"{}\"]\n",
            mirror.addr
        )),
        ..Default::default()
    });
    let data = engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{origin_addr}/only/in-mirror:1") {{ file(path: "/etc/passwd") {{ contents }} }} }} }}"#
    ));
    assert!(data["container"]["from"]["file"]["contents"]
        .as_str()
        .unwrap()
        .starts_with("root:"));
}

#[test]
fn missing_images_and_paths_name_what_is_missing() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "here:1", Format::Oci, None);
    let engine = engine_for(&reg, "");
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{}/not/here:1") {{ imageRef }} }} }}"#,
        reg.addr
    ));
    assert_eq!(v["errors"][0]["extensions"]["code"], "NOT_FOUND", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not/here"),
        "{v}"
    );
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{}/here:1") {{ file(path: "/etc/nope") {{ contents }} }} }} }}"#,
        reg.addr
    ));
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/etc/nope"),
        "{v}"
    );
    let v = engine.query(r#"{ container { from(address: "UPPER/case") { imageRef } } }"#);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid image reference"),
        "{v}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Files under `dir` whose name starts with `prefix`.
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hostile_registry_bytes_commit_nothing() {
    let rt = runtime();
    let mut img = TestImage::new(
        "evil/repo",
        vec![vec![FileSpec::new("etc/hello", "hello")]],
        true,
    );
    let layer_digest = img.layers[0].digest.clone();
    let mut tampered = img.layers[0].blob.clone();
    let last = tampered.len() - 9;
    tampered[last] ^= 0xff;
    img.overrides.insert(layer_digest.clone(), tampered);
    let img = Arc::new(img);
    let i = img.clone();
    let fake = rt.block_on(FakeRegistry::start(move |r| i.answer(r)));
    let engine = Engine::start(EngineOptions::default());
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{}") {{ imageRef }} }} }}"#,
        img.reference(&fake.addr)
    ));
    let msg = v["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(!engine
        .root
        .join("content/blobs/sha256")
        .join(layer_digest.hex())
        .exists());
    assert!(names_in(&engine.root.join("content/ingest"))
        .iter()
        .all(|n| !n.contains(layer_digest.hex())));
    assert!(
        names_in(&engine.root.join("snapshots"))
            .iter()
            .all(|n| n.starts_with('.')),
        "no snapshot"
    );

    // A layer whose bytes are right but whose content is not what the config promises.
    let good = TestImage::new("liar/repo", vec![vec![FileSpec::new("a", "1")]], true);
    let other = TestImage::new("x", vec![vec![FileSpec::new("a", "2")]], true);
    let mut config: serde_json::Value = serde_json::from_slice(&good.config).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([other.layers[0].diff_id.to_string()]);
    let liar = Arc::new(TestImage::assemble(
        "liar/repo",
        good.layers,
        serde_json::to_vec(&config).unwrap(),
    ));
    let l = liar.clone();
    let fake2 = rt.block_on(FakeRegistry::start(move |r| l.answer(r)));
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{}") {{ imageRef }} }} }}"#,
        liar.reference(&fake2.addr)
    ));
    let msg = v["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(msg.contains("unpacks to"), "{msg}");
    assert!(
        names_in(&engine.root.join("snapshots"))
            .iter()
            .all(|n| n.starts_with('.')),
        "no snapshot"
    );
}

#[test]
fn concurrent_pulls_download_each_blob_once() {
    let rt = runtime();
    let mut img = TestImage::new(
        "shared/repo",
        vec![
            vec![FileSpec::new("one", vec![1u8; 300_000])],
            vec![FileSpec::new("two", vec![2u8; 300_000])],
        ],
        true,
    );
    img.blob_delay = Duration::from_millis(200);
    let img = Arc::new(img);
    let i = img.clone();
    let fake = rt.block_on(FakeRegistry::start(move |r| i.answer(r)));
    let engine = Arc::new(Engine::start(EngineOptions::default()));
    let reference = img.reference(&fake.addr);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (engine, reference) = (engine.clone(), reference.clone());
            std::thread::spawn(move || {
                engine.query_ok(&format!(
                    r#"{{ container {{ from(address: "{reference}") {{ file(path: "two") {{ size }} }} }} }}"#
                ))
            })
        })
        .collect();
    for t in threads {
        let data = t.join().unwrap();
        assert_eq!(data["container"]["from"]["file"]["size"], 300_000);
    }
    let mut per_blob = std::collections::HashMap::<String, usize>::new();
    for r in fake.requests() {
        if r.method == "GET" && r.path().contains("/blobs/") {
            *per_blob.entry(r.path().to_string()).or_default() += 1;
        }
    }
    assert_eq!(per_blob.len(), 3, "config + 2 layers: {per_blob:?}");
    assert!(
        per_blob.values().all(|n| *n == 1),
        "each blob once: {per_blob:?}"
    );
}

/// kill -9 while a large layer downloads and while it unpacks; after each restart the pull
/// completes with the right contents and the store is consistent.
#[test]
fn kill_9_mid_pull_then_restart_gives_the_right_image() {
    let rt = runtime();
    // Incompressible data, so the layer is large on the wire too.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let big: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let small: Vec<FileSpec> = (0..2000)
        .map(|i| FileSpec::new(&format!("many/f{i}"), format!("{i}")))
        .collect();
    let mut img = TestImage::new(
        "crash/repo",
        vec![vec![FileSpec::new("big.bin", big.clone())], small],
        false,
    );
    img.slow = Some((256 << 10, Duration::from_millis(15)));
    let img = Arc::new(img);
    let i = img.clone();
    let fake = rt.block_on(FakeRegistry::start(move |r| i.answer(r)));
    let reference = img.reference(&fake.addr);
    let query = format!(
        r#"{{ container {{ from(address: "{reference}") {{ big: file(path: "big.bin") {{ size }} f: file(path: "many/f1999") {{ contents }} }} }} }}"#
    );

    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("state");
    let opts = || EngineOptions {
        root: Some(root.clone()),
        ..Default::default()
    };

    // 1. Crash during the download.
    let mut engine = Engine::start(opts());
    let socket = engine.socket.clone();
    let q = query.clone();
    let pending = std::thread::spawn(move || post_unix(&socket, "/query", &gql(&q)));
    let ingest = root.join("content/ingest");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial = names_in(&ingest).iter().any(|n| {
            std::fs::metadata(ingest.join(n).join("data"))
                .map(|m| m.len() > 1 << 20)
                .unwrap_or(false)
        });
        if partial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "download never started:\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    engine.kill9();
    let _ = pending.join();
    assert!(
        !root
            .join("content/blobs/sha256")
            .join(img.layers[0].digest.hex())
            .exists(),
        "no half blob visible"
    );

    // 2. Restart, let the download finish (it resumes), crash while unpacking.
    let mut engine = Engine::start(opts());
    let socket = engine.socket.clone();
    let q = query.clone();
    let pending = std::thread::spawn(move || post_unix(&socket, "/query", &gql(&q)));
    let snapshots = root.join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if names_in(&snapshots).iter().any(|n| n.starts_with("new-")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unpack never started:\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    engine.kill9();
    let _ = pending.join();
    let ranged = fake
        .requests()
        .iter()
        .any(|r| r.path().ends_with(img.layers[0].digest.hex()) && r.header("range").is_some());
    assert!(
        ranged,
        "the second run resumed the download with a Range request"
    );

    // 3. Restart: the pull completes and everything is consistent.
    let mut engine = Engine::start(opts());
    let data = engine.query_ok(&query);
    assert_eq!(data["container"]["from"]["big"]["size"], big.len());
    assert_eq!(data["container"]["from"]["f"]["contents"], "1999");
    assert!(engine.terminate().success());
    assert!(
        names_in(&snapshots).iter().all(|n| !n.starts_with("new-")),
        "{:?}",
        names_in(&snapshots)
    );
    let meta = Metadata::open(&root.join("metadata").join(DB_FILE)).unwrap();
    let report = meta
        .check_consistency(&root.join("content/blobs/sha256"), &snapshots)
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}
