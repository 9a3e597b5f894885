//! `Container.withRegistryAuth` / `withoutRegistryAuth` end to end: Debian's real
//! `docker-registry` in htpasswd (Basic) and token modes, an engine with NO credentials of its
//! own (an empty DOCKER_CONFIG), pulls (`from`) and pushes (`publish`) with credentials given
//! by the request only, checked with skopeo; credentials (and the tokens they earn) never
//! serve another request; the password never shows in IDs, errors or the engine log; and the
//! real Python SDK.

use dagger_integration_tests::images;
use dagger_integration_tests::registry::{require_binary, run, Mode, TestRegistry, PASS, USER};
use dagger_integration_tests::{Engine, EngineOptions};
use std::process::Command;

/// An engine that trusts `reg` and has no registry credentials at all: DOCKER_CONFIG is an
/// empty directory, so neither the machine's nor root's docker config is read.
fn engine_without_credentials(reg: &TestRegistry) -> Engine {
    let dir = tempfile::tempdir().unwrap().keep().join("docker");
    std::fs::create_dir_all(&dir).unwrap();
    Engine::start(EngineOptions {
        config: Some(dagger_integration_tests::fixtures::registry_toml(reg)),
        env: vec![("DOCKER_CONFIG".into(), dir.display().to_string())],
        ..Default::default()
    })
}

/// A secret holding `value`, as its ID.
fn secret(engine: &Engine, name: &str, value: &str) -> String {
    let data = engine.query_ok(&format!(
        r#"{{ setSecret(name: "{name}", plaintext: "{value}") {{ id }} }}"#
    ));
    data["setSecret"]["id"].as_str().unwrap().to_string()
}

/// The first error of a GraphQL answer: (message, extensions.code).
fn first_error(v: &serde_json::Value) -> (String, String) {
    let e = &v["errors"][0];
    let msg = e["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
        .to_string();
    (
        msg,
        e["extensions"]["code"].as_str().unwrap_or("").to_string(),
    )
}

fn skopeo() -> Command {
    let skopeo = require_binary("skopeo", "skopeo");
    let work = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(skopeo);
    cmd.env("REGISTRY_AUTH_FILE", work.join("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", work.join("registries.conf"));
    cmd
}

/// `skopeo inspect --creds` of `image` on `reg`: the digest it sees.
fn skopeo_digest(reg: &TestRegistry, image: &str) -> String {
    let mut cmd = skopeo();
    cmd.arg("inspect");
    match &reg.cert_dir {
        Some(dir) => cmd.arg("--cert-dir").arg(dir),
        None => cmd.arg("--tls-verify=false"),
    };
    cmd.arg("--creds").arg(format!("{USER}:{PASS}"));
    cmd.arg(format!("docker://{}/{image}", reg.addr));
    let out = run(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// The JSON inside a `Container:` ID (zstd-compressed, base64url): what the ID reveals.
fn id_json(id: &str) -> String {
    let node: serde_json::Value =
        dagger_engine::solver::id::decode("Container", id).expect("a container ID");
    node.to_string()
}

#[test]
fn basic_auth_from_and_publish_with_credentials_given_by_the_request_only() {
    let reg = TestRegistry::start(Mode::Basic);
    images::push_busybox(&reg, "private/busybox:1");
    let engine = engine_without_credentials(&reg);
    let image = format!("{}/private/busybox:1", reg.addr);
    let pw = secret(&engine, "registry-password", PASS);

    // 1. Without credentials the pull is refused, clearly.
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} }} }} }}"#
    ));
    let (msg, code) = first_error(&v);
    assert_eq!(code, "PERMISSION_DENIED", "{v}");
    assert!(
        msg.contains(&reg.addr)
            && msg.contains("private/busybox")
            && msg.contains("authentication")
            && msg.contains("withRegistryAuth"),
        "{msg}"
    );

    // 2. With withRegistryAuth (before `from`) it succeeds. The address may be a host, or a
    //    full image reference of that host.
    for address in [reg.addr.clone(), format!("{}/private/busybox:1", reg.addr)] {
        let data = engine.query_ok(&format!(
            r#"{{ container {{ withRegistryAuth(address: "{address}", username: "{USER}", secret: "{pw}") {{
                from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} id }} }} }} }}"#
        ));
        let c = &data["container"]["withRegistryAuth"]["from"];
        assert!(c["file"]["size"].as_i64().unwrap() > 0, "{data}");
        // The ID names the secret, never its value.
        let id = c["id"].as_str().unwrap();
        assert!(!id.contains(PASS));
        let json = id_json(id);
        assert!(
            json.contains("registryAuth") && json.contains(USER),
            "{json}"
        );
        assert!(!json.contains(PASS), "password in the ID: {json}");
    }

    // 2b. An authenticated and an anonymous pull of the same (new) tag at the same time:
    //     they never share one flight, so only the authenticated one gets the image.
    images::push_busybox(&reg, "private/busybox:2");
    let image2 = format!("{}/private/busybox:2", reg.addr);
    let (with_auth, anonymous) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            engine.query(&format!(
                r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
                    from(address: "{image2}") {{ file(path: "/bin/busybox") {{ size }} }} }} }} }}"#,
                reg.addr
            ))
        });
        let b = s.spawn(|| {
            engine.query(&format!(
                r#"{{ container {{ from(address: "{image2}") {{ file(path: "/bin/busybox") {{ size }} }} }} }}"#
            ))
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(with_auth.get("errors").is_none(), "{with_auth}");
    assert_eq!(
        first_error(&anonymous).1,
        "PERMISSION_DENIED",
        "{anonymous}"
    );

    // 3. Right after, a request without credentials still cannot pull the private image by
    //    tag, although its blobs are in the engine's content store now: the tag is resolved
    //    against the registry with the request's own credentials (none).
    let v = engine.query(&format!(
        r#"{{ container {{ from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} }} }} }}"#
    ));
    assert_eq!(first_error(&v).1, "PERMISSION_DENIED", "{v}");

    // 4. withoutRegistryAuth removes them (whatever form the address takes).
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
            withoutRegistryAuth(address: "{}/private/busybox:other") {{
            from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} }} }} }} }} }}"#,
        reg.addr, reg.addr
    ));
    assert_eq!(first_error(&v).1, "PERMISSION_DENIED", "{v}");
    // ... and credentials for another host do not apply.
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "registry.example.com", username: "{USER}", secret: "{pw}") {{
            from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} }} }} }} }}"#
    ));
    assert_eq!(first_error(&v).1, "PERMISSION_DENIED", "{v}");

    // 5. A wrong password fails without showing itself.
    let wrong = "wrong-password-7f3a9c";
    let bad = secret(&engine, "bad", wrong);
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{bad}") {{
            from(address: "{image}") {{ file(path: "/bin/busybox") {{ size }} }} }} }} }}"#,
        reg.addr
    ));
    let (msg, code) = first_error(&v);
    assert_eq!(code, "PERMISSION_DENIED", "{v}");
    assert!(
        !v.to_string().contains(wrong),
        "password in the error: {msg}"
    );

    // 6. publish with the credentials (the same chain pulls the base and pushes), and
    //    skopeo sees the image.
    let out = format!("{}/out/app:v1", reg.addr);
    let data = engine.query_ok(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
            from(address: "{image}") {{ withNewFile(path: "/hello.txt", contents: "auth") {{
            publish(address: "{out}") }} }} }} }} }}"#,
        reg.addr
    ));
    let published = data["container"]["withRegistryAuth"]["from"]["withNewFile"]["publish"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        published.starts_with(&format!("{out}@sha256:")),
        "{published}"
    );
    let digest = published.rsplit('@').next().unwrap();
    assert_eq!(skopeo_digest(&reg, "out/app:v1"), digest);

    // Credentials given after `from` still count for publish (they are in effect on the
    // container being published), and they change nothing in the image: the same digest.
    let data = engine.query_ok(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
            from(address: "{image}") {{ withNewFile(path: "/hello.txt", contents: "auth") {{
            withoutRegistryAuth(address: "{}") {{
            withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
            publish(address: "{}/out/app:v2") }} }} }} }} }} }} }}"#,
        reg.addr, reg.addr, reg.addr, reg.addr
    ));
    let again = data["container"]["withRegistryAuth"]["from"]["withNewFile"]["withoutRegistryAuth"]
        ["withRegistryAuth"]["publish"]
        .as_str()
        .unwrap();
    assert_eq!(again.rsplit('@').next().unwrap(), digest, "{again}");
    assert_eq!(skopeo_digest(&reg, "out/app:v2"), digest);

    // 7. The same publish without credentials (the base was pulled with them, so only the
    //    push lacks them) is refused.
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{
            from(address: "{image}") {{ withNewFile(path: "/hello.txt", contents: "auth") {{
            withoutRegistryAuth(address: "{}") {{
            publish(address: "{}/out/app:v3") }} }} }} }} }} }}"#,
        reg.addr, reg.addr, reg.addr
    ));
    let (msg, code) = first_error(&v);
    assert_eq!(code, "PERMISSION_DENIED", "{v}");
    assert!(msg.contains("out/app"), "{msg}");

    // 8. A malformed address is refused where it is written.
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "bad host/x", username: "{USER}", secret: "{pw}") {{ id }} }} }}"#
    ));
    assert_eq!(first_error(&v).1, "INVALID_ARGUMENT", "{v}");

    let log = engine.log();
    assert!(!log.contains(PASS), "password in the engine log");
    assert!(!log.contains(wrong), "wrong password in the engine log");
}

#[test]
fn token_registry_push_tokens_stay_with_the_credentials_that_earned_them() {
    // The token server gives anonymous clients pull access only, and testuser everything.
    let reg = TestRegistry::start(Mode::Token);
    images::push_busybox(&reg, "base/busybox:1");
    let engine = engine_without_credentials(&reg);
    let base = format!("{}/base/busybox:1", reg.addr);
    let pw = secret(&engine, "token-password", PASS);
    let publish = |auth: bool, tag: &str| {
        let inner = format!(
            r#"from(address: "{base}") {{ withNewFile(path: "/t.txt", contents: "token") {{
                publish(address: "{}/out/app:{tag}") }} }}"#,
            reg.addr
        );
        let q = if auth {
            format!(
                r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{pw}") {{ {inner} }} }} }}"#,
                reg.addr
            )
        } else {
            format!("{{ container {{ {inner} }} }}")
        };
        engine.query(&q)
    };

    // Anonymous pulls are allowed here, pushes are not.
    let v = publish(false, "anon0");
    let (msg, code) = first_error(&v);
    assert_eq!(code, "PERMISSION_DENIED", "{v}");
    assert!(msg.contains("out/app"), "{msg}");

    // With credentials: pushed, and skopeo sees it.
    let v = publish(true, "v1");
    assert!(v.get("errors").is_none(), "{v}\n{}", engine.log());
    let published = v["data"]["container"]["withRegistryAuth"]["from"]["withNewFile"]["publish"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = published.rsplit('@').next().unwrap();
    assert_eq!(skopeo_digest(&reg, "out/app:v1"), digest);

    // Right after, a request without credentials pushes to the same repository (the same
    // token scope, `repository:out/app:pull,push`): the push token earned with the
    // credentials is cached, but not for it. Refused.
    let v = publish(false, "anon1");
    assert_eq!(first_error(&v).1, "PERMISSION_DENIED", "{v}");
    // ... nor for wrong credentials.
    let wrong = "wrong-token-password-2b8e";
    let bad = secret(&engine, "bad", wrong);
    let v = engine.query(&format!(
        r#"{{ container {{ withRegistryAuth(address: "{}", username: "{USER}", secret: "{bad}") {{
            from(address: "{base}") {{ publish(address: "{}/out/app:bad") }} }} }} }}"#,
        reg.addr, reg.addr
    ));
    assert_eq!(first_error(&v).1, "PERMISSION_DENIED", "{v}");
    assert!(!v.to_string().contains(wrong));

    // The credentials still work after all that (their token is still cached for them).
    let v = publish(true, "v2");
    assert!(v.get("errors").is_none(), "{v}");
    assert_eq!(skopeo_digest(&reg, "out/app:v2"), digest);
    // No tag was created by the refused pushes.
    for tag in ["anon0", "anon1", "bad"] {
        let mut cmd = skopeo();
        cmd.arg("inspect")
            .arg("--cert-dir")
            .arg(reg.cert_dir.as_ref().unwrap())
            .arg("--creds")
            .arg(format!("{USER}:{PASS}"))
            .arg(format!("docker://{}/out/app:{tag}", reg.addr));
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "tag {tag} exists");
    }

    let log = engine.log();
    assert!(!log.contains(PASS), "password in the engine log");
    assert!(!log.contains(wrong), "wrong password in the engine log");
}

#[test]
fn the_real_python_sdk_pulls_and_publishes_with_registry_auth() {
    use dagger_integration_tests::sdk::{run_program, Lang, Launch, SdkFixture};
    // Plain HTTP with htpasswd: the SDK program needs no CA.
    let registry = TestRegistry::start(Mode::BasicHttp);
    images::push_busybox(&registry, "sdk/busybox:latest");
    let engine = engine_without_credentials(&registry);
    let image = format!("{}/sdk/busybox:latest", registry.addr);
    let fx = SdkFixture {
        engine,
        registry,
        image,
    };
    let run = run_program(&fx, Lang::Python, Launch::DaggerRun, "registry_auth.py");
    assert!(
        run.status.success() && run.stdout.contains("ALL OK"),
        "{}\nengine log:\n{}",
        run.describe(),
        fx.engine.log()
    );
    for check in [
        "anonymous from is refused",
        "from with registry auth",
        "publish with registry auth",
        "published image reads back with auth",
        "anonymous read of the published tag is refused",
        "without_registry_auth removes it",
    ] {
        assert!(
            run.stdout.contains(&format!("ok: {check}")),
            "missing {check:?}\n{}",
            run.describe()
        );
    }
    assert!(
        !fx.engine.log().contains(PASS),
        "password in the engine log"
    );
}
