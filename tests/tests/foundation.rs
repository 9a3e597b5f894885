//! The engine daemon and CLI foundation, end to end: real `dagger-engine` processes as root,
//! driven by the real `dagger` CLI and raw HTTP.

use dagger_integration_tests::*;
use std::process::Command;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_through_cli_and_raw_http() {
    let engine = Engine::start(EngineOptions::default());
    let out = engine.dagger(&["version"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(line.starts_with("dagger v"), "{line}");
    assert!(
        line.contains(&format!("(engine v{}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(line.contains(&engine.runner_host()), "{line}");

    let r = post_unix(
        &engine.socket,
        "/query",
        &gql("{ version defaultPlatform }"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(
        v["data"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platform = v["data"]["defaultPlatform"].as_str().unwrap();
    assert!(platform.starts_with("linux/"), "{platform}");
}

#[test]
fn dagger_query_prints_data_and_fails_on_errors() {
    let engine = Engine::start(EngineOptions::default());
    let out = engine.dagger(&["query"], "{ v: version p: defaultPlatform }");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["v"].as_str().unwrap().starts_with('v'));
    assert!(v["p"].as_str().unwrap().starts_with("linux/"));

    let doc = engine.dir.path().join("q.graphql");
    std::fs::write(&doc, "{ version }").unwrap();
    let out = engine.dagger(&["query", "--doc", doc.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"version\""));

    let out = engine.dagger(&["query"], "{ version notAField }");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("notAField"), "{}", stderr(&out));

    let out = engine.dagger(&["query"], "{ version(");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Error:"), "{}", stderr(&out));

    let out = engine.dagger(&["query"], "   ");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no query"), "{}", stderr(&out));
}

#[test]
fn python_sdk_introspection_query_succeeds() {
    let engine = Engine::start(EngineOptions::default());
    let query = std::fs::read_to_string(
        workspace().join("tests/fixtures/sdk-queries/py-00-introspection-query.graphql"),
    )
    .unwrap();
    let r = post_unix(&engine.socket, "/query", &gql(&query)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert!(v.get("errors").is_none(), "{v}");
    let schema = &v["data"]["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query");
    let types = schema["types"].as_array().unwrap();
    let query_type = types.iter().find(|t| t["name"] == "Query").unwrap();
    let version = query_type["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "version")
        .expect("Query.version is served");
    assert_eq!(version["type"]["kind"], "NON_NULL");
    assert_eq!(version["type"]["ofType"]["name"], "String");
}

#[test]
fn errors_are_json_for_every_kind_of_bad_request() {
    let engine = Engine::start(EngineOptions::default());
    let cases: &[(&str, &str, &str, u16)] = &[
        ("POST", "/query", &gql("{ version("), 200),
        ("POST", "/query", &gql("{ nope }"), 200),
        ("POST", "/query", "this is not json", 400),
        ("POST", "/query", r#"{"variables": {}}"#, 400),
        ("GET", "/query", "", 405),
        ("POST", "/elsewhere", &gql("{ version }"), 404),
    ];
    for (method, path, body, status) in cases {
        let r = request_unix(&engine.socket, method, path, body).unwrap();
        assert_eq!(r.status, *status, "{method} {path} {body}: {}", r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{method} {path}"
        );
        let v = r.json();
        let msg = v["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {v}"));
        assert!(!msg.is_empty());
    }
    let v = post_unix(&engine.socket, "/query", &gql("{ nope }"))
        .unwrap()
        .json();
    assert!(
        v["errors"][0]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );
}

#[test]
fn aliases_shape_the_response() {
    let engine = Engine::start(EngineOptions::default());
    let r = post_unix(
        &engine.socket,
        "/query",
        &gql("{ version: version b: version a: defaultPlatform }"),
    )
    .unwrap();
    let v = r.json();
    assert!(v.get("errors").is_none(), "{v}");
    let data = v["data"].as_object().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    assert_eq!(data["b"], data["version"]);
    assert!(data["a"].as_str().unwrap().starts_with("linux/"));
    // Keys come back in selection order.
    let pos = |k: &str| r.body.find(&format!("\"{k}\"")).unwrap();
    assert!(
        pos("version") < pos("b") && pos("b") < pos("a"),
        "{}",
        r.body
    );
}

#[test]
fn tcp_listener_serves_and_warns_plaintext() {
    let engine = Engine::start(EngineOptions {
        tcp: true,
        ..Default::default()
    });
    let port = engine.tcp_port.unwrap();
    let r = post_tcp(port, "/query", &gql("{ version }")).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json()["data"]["version"].is_string());
    let log = engine.log();
    assert!(log.contains("plaintext"), "{log}");
    let out = dagger_cli(
        &["version"],
        "",
        &[(
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            &format!("tcp://127.0.0.1:{port}"),
        )],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("tcp://127.0.0.1:{port}")));
}

#[test]
fn second_engine_on_the_same_root_is_refused_at_once() {
    let first = Engine::start(EngineOptions::default());
    let mut second = Engine::spawn(EngineOptions {
        root: Some(first.root.clone()),
        ..Default::default()
    });
    // The first engine holds the lock for the whole test: a second one that waited for it
    // would never exit, and wait_exit would fail.
    let status = second.wait_exit();
    assert!(!status.success());
    let log = second.log();
    assert!(log.contains("in use by another dagger-engine"), "{log}");
    assert!(log.contains("dagger-engine.lock"), "{log}");
    // The first engine is unharmed.
    assert_eq!(
        post_unix(&first.socket, "/query", &gql("{ version }"))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_live_socket_is_not_stolen() {
    let first = Engine::start(EngineOptions::default());
    let mut second = Engine::spawn(EngineOptions {
        extra_args: vec!["--addr".into(), first.runner_host()],
        ..Default::default()
    });
    assert!(!second.wait_exit().success());
    assert!(
        second.log().contains("another engine is already serving"),
        "{}",
        second.log()
    );
    assert_eq!(
        post_unix(&first.socket, "/query", &gql("{ version }"))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn malformed_config_names_file_key_and_line() {
    let cases = [
        (
            "debug = true\n\n[worker.oci]\ngckeepstorage = \"lots\"\n",
            "line 4",
            "worker.oci.gckeepstorage",
        ),
        (
            "insecure-entitlements = [\"security.insecure\", \"device\"]\n",
            "line 1",
            "insecure-entitlements",
        ),
        (
            "[grpc]\naddress = [\"udp://x\"]\n",
            "line 2",
            "grpc.address",
        ),
        ("debug = \"yes\"\n", "line 1", "debug"),
        ("debug = true\n[worker\n", "line 2", "engine.toml"),
    ];
    for (text, line, key) in cases {
        let mut engine = Engine::spawn(EngineOptions {
            config: Some(text.into()),
            ..Default::default()
        });
        let status = engine.wait_exit();
        let log = engine.log();
        assert!(!status.success(), "{text}: {log}");
        assert!(log.contains("engine.toml"), "names the file: {log}");
        assert!(log.contains(line), "names the {line}: {log}");
        assert!(log.contains(key), "names {key}: {log}");
        assert!(!engine.socket.exists(), "nothing was served");
    }
}

#[test]
fn unknown_config_keys_warn_and_the_engine_starts() {
    let engine = Engine::start(EngineOptions {
        config: Some(
            "debug = true\n[worker.oci]\nnetworkMode = \"cni\"\n[history]\nmaxAge = 10\n".into(),
        ),
        ..Default::default()
    });
    let log = engine.log();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("unknown key `worker.oci.networkMode` (line 3)"),
        "{log}"
    );
    assert!(log.contains("unknown key `history` (line 4)"), "{log}");
}

#[test]
fn missing_explicit_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("dagger-engine"))
        .args(["--config", "/nonexistent/engine.toml", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/engine.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn engine_refuses_to_run_without_root() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("engine.toml");
    std::fs::write(&cfg, "").unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("dagger-engine"))
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(dir.path().join("state"))
        .arg("--addr")
        .arg(format!("unix://{}/s.sock", dir.path().display()))
        .output()
        .expect("setpriv (util-linux) runs");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let mut engine = Engine::start(EngineOptions::default());
    let root = engine.root.clone();
    assert!(engine.socket.exists());
    let status = engine.terminate();
    assert!(status.success(), "exit status {status}:\n{}", engine.log());
    assert!(!engine.socket.exists(), "socket left behind");
    assert!(engine.log().contains("engine stopped"));
    // The lock went with the process: a new engine can take the same root.
    let again = Engine::start(EngineOptions {
        root: Some(root),
        ..Default::default()
    });
    assert_eq!(
        post_unix(&again.socket, "/query", &gql("{ version }"))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let mut engine = Engine::start(EngineOptions::default());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = engine.wait_exit();
    assert!(status.success());
    assert!(!engine.socket.exists());
}

#[test]
fn socket_mode_is_0660() {
    use std::os::unix::fs::PermissionsExt;
    let engine = Engine::start(EngineOptions::default());
    let mode = std::fs::metadata(&engine.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let state_mode = std::fs::metadata(&engine.root)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(state_mode, 0o700);
}

/// An overlay mount made for the test; unmounted on drop.
struct OverlayMount {
    merged: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OverlayMount {
    fn new() -> OverlayMount {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work",
                p.display()
            ))
            .arg(p.join("merged"))
            .status()
            .unwrap();
        assert!(st.success(), "mounting a test overlay failed");
        OverlayMount {
            merged: p.join("merged"),
            _dir: dir,
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

#[test]
fn state_dir_on_overlayfs_warns_and_falls_back() {
    require_root();
    let overlay = OverlayMount::new();
    let mut engine = Engine::start(EngineOptions {
        root: Some(overlay.merged.join("dagger")),
        ..Default::default()
    });
    let log = engine.log();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("overlay"))
        .unwrap_or_else(|| panic!("no overlay WARN:\n{log}"));
    assert!(warn.contains("is itself on overlayfs"), "{warn}");
    assert!(warn.contains("native"), "{warn}");
    assert!(warn.contains("-v dagger-engine:/var/lib/dagger"), "{warn}");
    let status = engine.terminate();
    assert!(status.success(), "{status}:\n{}", engine.log());
}

#[test]
fn state_dir_on_ext4_or_tmpfs_uses_overlay_without_warning() {
    let engine = Engine::start(EngineOptions::default());
    let log = engine.log();
    assert!(log.contains("snapshotter: overlayfs"), "{log}");
    assert!(!log.contains("cannot host overlay snapshots"), "{log}");
}

#[test]
fn runner_host_drivers_fail_clearly_when_their_engine_is_missing() {
    // No docker daemon, no such podman container, no kubectl here: each driver says so, naming
    // the runner host (runner_image.rs drives them against real engines).
    for host in [
        "docker-container://dagger-engine",
        "docker-image://localhost:5000/dagger/engine:v1",
        "podman-container://no-such-dagger-engine",
        "kube-pod://dagger-engine-0?namespace=dagger",
    ] {
        let out = dagger_cli(
            &["version"],
            "",
            &[
                ("_EXPERIMENTAL_DAGGER_RUNNER_HOST", host),
                ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
                ("PATH", "/usr/bin:/bin"),
            ],
        );
        assert!(!out.status.success(), "{host}");
        let err = stderr(&out);
        let scheme = host.split("://").next().unwrap();
        assert!(err.contains(scheme), "{host}: {err}");
        assert!(!err.contains("panicked"), "{host}: {err}");
    }
    for (host, expect) in [
        ("ftp://x", "unsupported scheme \"ftp\""),
        ("tcp://nohost", "tcp://HOST:PORT"),
        ("unix://relative", "absolute socket path"),
        ("kube-pod://p?cluster=x", "unknown parameter"),
    ] {
        let out = dagger_cli(
            &["version"],
            "",
            &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", host)],
        );
        assert!(!out.status.success(), "{host}");
        let err = stderr(&out);
        assert!(
            err.contains("invalid _EXPERIMENTAL_DAGGER_RUNNER_HOST"),
            "{host}: {err}"
        );
        assert!(err.contains(expect), "{host}: {err}");
    }
    let out = dagger_cli(
        &["version"],
        "",
        &[(
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "unix:///nonexistent/engine.sock",
        )],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot connect to the engine at unix:///nonexistent/engine.sock")
    );
}

/// With no runner host set, `dagger` starts the engine on the default socket and state dir,
/// then reuses it. Run in a private mount namespace with tmpfs over /run/dagger,
/// /var/lib/dagger and /var/log/dagger, and in a private network namespace (for its bridge), so
/// the machine's own engine is neither seen nor touched.
#[test]
fn embedded_default_starts_then_reuses_the_local_engine() {
    require_root();
    for d in ["/run/dagger", "/var/lib/dagger", "/var/log/dagger"] {
        std::fs::create_dir_all(d).unwrap();
    }
    let script = r#"
set -eu
for d in /run/dagger /var/lib/dagger /var/log/dagger; do mount -t tmpfs tmpfs "$d"; done
"$DAGGER" version 2>first.err
grep -q 'starting the local engine' first.err
test -S /run/dagger/engine.sock
pid=$(cat /run/dagger/engine.pid)
"$DAGGER" version 2>second.err
if grep -q 'starting the local engine' second.err; then echo "second call started another engine"; exit 1; fi
echo '{ version }' | "$DAGGER" query
test -f /var/lib/dagger/dagger-engine.lock
kill -TERM "$pid"
i=0; while [ -e /run/dagger/engine.sock ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
test ! -e /run/dagger/engine.sock
echo EMBEDDED-OK
"#;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir.path())
        .env("DAGGER", bin("dagger"))
        .env_remove("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
        .output()
        .unwrap();
    let so = stdout(&out);
    assert!(
        out.status.success() && so.contains("EMBEDDED-OK"),
        "stdout:\n{so}\nstderr:\n{}\nfirst.err:\n{}",
        stderr(&out),
        std::fs::read_to_string(dir.path().join("first.err")).unwrap_or_default()
    );
    assert!(so.contains("dagger v"), "{so}");
    assert!(so.contains("\"version\""), "{so}");
}

/// When the engine the CLI starts cannot run, the CLI fails quickly and shows why.
#[test]
fn embedded_default_reports_an_engine_that_cannot_start() {
    require_root();
    for d in [
        "/run/dagger",
        "/var/lib/dagger",
        "/var/log/dagger",
        "/etc/dagger",
    ] {
        std::fs::create_dir_all(d).unwrap();
    }
    let script = r#"
set -eu
for d in /run/dagger /var/lib/dagger /var/log/dagger /etc/dagger; do mount -t tmpfs tmpfs "$d"; done
printf 'debug = true\n[worker.oci]\nmax-parallelism = "many"\n' > /etc/dagger/engine.toml
if "$DAGGER" version 2>err; then echo "version succeeded"; exit 1; fi
cat err
"#;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir.path())
        .env("DAGGER", bin("dagger"))
        .env_remove("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
        .output()
        .unwrap();
    let so = stdout(&out);
    assert!(out.status.success(), "{so}\n{}", stderr(&out));
    assert!(so.contains("exited"), "{so}");
    assert!(
        so.contains("worker.oci.max-parallelism"),
        "the engine's own error is shown: {so}"
    );
}
