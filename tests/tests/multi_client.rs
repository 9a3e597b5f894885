//! Many clients at once (issue 6): each `dagger session` reads its own machine (working
//! directory, environment) for host directories and `secret(uri)`, and all of them share the
//! engine's cache.

use dagger_integration_tests::sdk::*;
use serde_json::Value;
use std::path::Path;

fn query(s: &SessionProcess, q: &str) -> Value {
    let r = s.query(Some(&s.auth()), q);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v["errors"].is_null(), "{q}\n{v}");
    v
}

/// `path` of the first answer's nested objects, as a string.
fn id_at(v: &Value, keys: &[&str]) -> String {
    let mut cur = &v["data"];
    for k in keys {
        cur = &cur[*k];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("no {keys:?} in {v}"))
        .to_string()
}

/// The stdout of an exec in `image` with the session's `.` at /src and secret `id` as $TOKEN.
fn run_in(s: &SessionProcess, image: &str, dir_id: &str, secret_id: &str, script: &str) -> String {
    let v = query(
        s,
        &format!(
            r#"{{ container {{ from(address: {image:?}) {{ withDirectory(path: "/src", source: {dir_id:?}) {{ withSecretVariable(name: "TOKEN", secret: {secret_id:?}) {{ withExec(args: ["sh", "-c", {script:?}]) {{ stdout }} }} }} }} }} }}"#
        ),
    );
    v["data"]["container"]["from"]["withDirectory"]["withSecretVariable"]["withExec"]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_string()
}

fn client_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("who.txt"), format!("I am {name}\n")).unwrap();
    std::fs::write(dir.join("token.txt"), format!("file-token-{name}")).unwrap();
    dir
}

#[test]
fn concurrent_sessions_see_their_own_files_and_secrets_and_share_the_cache() {
    let fx = SdkFixture::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir_a = client_dir(tmp.path(), "alice");
    let dir_b = client_dir(tmp.path(), "bob");
    let a = SessionProcess::start_in(&fx.engine, &dir_a, &[("CLIENT_TOKEN", "env-token-alice")]);
    let b = SessionProcess::start_in(&fx.engine, &dir_b, &[("CLIENT_TOKEN", "env-token-bob")]);

    // Both sessions at once, each from its own thread.
    let results: Vec<(String, String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&a, &b]
            .into_iter()
            .map(|s| {
                let image = fx.image.clone();
                scope.spawn(move || {
                    let dir = id_at(
                        &query(s, r#"{ host { directory(path: ".") { id } } }"#),
                        &["host", "directory", "id"],
                    );
                    let env_secret = id_at(
                        &query(s, r#"{ secret(uri: "env://CLIENT_TOKEN") { id } }"#),
                        &["secret", "id"],
                    );
                    let file_secret = id_at(
                        &query(
                            s,
                            r#"{ host { setSecretFile(name: "tok", path: "token.txt") { id } } }"#,
                        ),
                        &["host", "setSecretFile", "id"],
                    );
                    // The value reaches the exec; its digest proves which one without printing it.
                    let who = run_in(s, &image, &dir, &env_secret, "cat /src/who.txt");
                    let env = run_in(
                        s,
                        &image,
                        &dir,
                        &env_secret,
                        "printf %s \"$TOKEN\" | sha256sum",
                    );
                    let file = run_in(
                        s,
                        &image,
                        &dir,
                        &file_secret,
                        "printf %s \"$TOKEN\" | sha256sum",
                    );
                    (who, env, file)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sha = |s: &str| {
        format!(
            "{}  -\n",
            dagger_engine::oci::Digest::of(s.as_bytes()).hex()
        )
    };
    for ((who, env, file), name) in results.iter().zip(["alice", "bob"]) {
        assert_eq!(
            who,
            &format!("I am {name}\n"),
            "host directory of the wrong client"
        );
        assert_eq!(
            env,
            &sha(&format!("env-token-{name}")),
            "env:// secret of {name}"
        );
        assert_eq!(
            file,
            &sha(&format!("file-token-{name}")),
            "file secret of {name}"
        );
    }

    // Shared cache: an exec whose output is random runs once; the other client gets the
    // cached result (same random bytes) for the same operation.
    let random = r#"{ container { from(address: "IMAGE") { withExec(args: ["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"]) { stdout } } } }"#
        .replace("IMAGE", &fx.image);
    let first = query(&a, &random);
    let second = query(&b, &random);
    assert_eq!(
        first["data"], second["data"],
        "the second client re-ran a cached exec"
    );

    // The engine never saw a secret value in a query text or its log.
    let log = fx.engine.log();
    for value in [
        "env-token-alice",
        "env-token-bob",
        "file-token-alice",
        "file-token-bob",
    ] {
        assert!(
            !log.contains(value),
            "secret value {value} in the engine log"
        );
    }
}

#[test]
fn the_engine_does_not_read_its_own_environment_for_secret_uris() {
    let fx = SdkFixture::start();
    // Straight to the engine, without a session: refused, and nothing about the engine's env.
    let v = fx.engine.query(r#"{ secret(uri: "env://PATH") { id } }"#);
    let message = v["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(message.contains("client"), "{message}");
    assert!(!message.contains("/usr/bin"), "{message}");
    // Through a session, a missing variable is a clear error that names it.
    let tmp = tempfile::tempdir().unwrap();
    let s = SessionProcess::start_in(&fx.engine, tmp.path(), &[]);
    let r = s.query(
        Some(&s.auth()),
        r#"{ secret(uri: "env://DAGGER_TEST_UNSET_VAR") { id } }"#,
    );
    let v = r.json();
    let message = v["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        message.contains("DAGGER_TEST_UNSET_VAR") && message.contains("not set"),
        "{message}"
    );
}
