//! The runner as a container (docs/runner.md): the repository's Dockerfile built with this
//! build's binaries, run as users run it, and reached with the CLI's drivers.
//!
//! * `docker-container://`: a pipeline that pulls from a TLS registry whose CA is only
//!   mounted into `/usr/local/share/ca-certificates`, privileged execution allowed by the
//!   image's engine.toml, `dagger run` through the driver;
//! * a mounted engine.toml without `insecure-entitlements` refuses `insecureRootCapabilities`;
//! * `docker-image://` provisions a container, reuses it on the next call and removes older
//!   engine containers;
//! * `kube-pod://` and `docker-container://` fail fast when their tool or container is missing;
//! * the Kubernetes DaemonSet validates against the Kubernetes schemas.
//!
//! Docker here cannot start `--privileged` containers: the tests use
//! [`docker::ENGINE_RUN_FLAGS`] instead, as docs/runner.md tells such hosts to.

use dagger_integration_tests::docker::{self, Dockerd};
use dagger_integration_tests::fixtures::base64;
use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{require_binary, run, Mode, TestRegistry};
use dagger_integration_tests::{bin, require_root, wait_timeout, Engine, EngineOptions};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "dagger-engine:test";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the `dagger` CLI with `env` (and no runner host of the caller's), feeding `stdin`.
fn dagger(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin("dagger"));
    cmd.args(args)
        .env_remove("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
        .env_remove("DAGGER_LEAVE_OLD_ENGINE")
        .env_remove("DAGGER_ENGINE_DOCKER_RUN_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting dagger");
    let mut input = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut input, stdin.as_bytes()).unwrap();
    drop(input);
    let started = Instant::now();
    // A generous bound so a hung driver fails the test instead of the whole run.
    while started.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!(
        "dagger {args:?} did not finish: {:?}",
        child.wait_with_output()
    );
}

fn json_ok(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// Waits until `dagger version` answers inside the container (the readiness probe of the
/// DaemonSet does the same).
fn wait_engine(d: &Dockerd, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.try_docker(&["exec", name, "dagger", "version"]);
        if out.status.success() {
            return;
        }
        let logs = d.try_docker(&["logs", name]);
        assert!(
            Instant::now() < deadline,
            "engine container {name} not ready: {}\nlogs:\n{}{}",
            text(&out.stderr),
            text(&logs.stdout),
            text(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn logs(d: &Dockerd, name: &str) -> String {
    let out = d.try_docker(&["logs", name]);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// `docker run -d` of the runner image in the host network (the test registry listens on
/// 127.0.0.1), with an exec network of its own so it cannot collide with other engines.
fn run_engine(d: &Dockerd, name: &str, volume: Option<&str>, mounts: &[String], net: u32) {
    let mut args: Vec<String> = ["run", "-d", "--name", name, "--network", "host"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(docker::ENGINE_RUN_FLAGS.iter().map(|s| s.to_string()));
    if let Some(v) = volume {
        args.extend(["-v".to_string(), format!("{v}:/var/lib/dagger")]);
    }
    for m in mounts {
        args.extend(["-v".to_string(), m.clone()]);
    }
    args.push(IMAGE.to_string());
    // Arguments after the image go to dagger-engine.
    let id = std::process::id() % 1000;
    args.extend([
        "--network-name".to_string(),
        format!("rti{id}n{net}"),
        "--network-cidr".to_string(),
        format!("10.{}.{}.0/24", 200 + net, id % 250),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    d.docker(&refs);
}

#[test]
fn runner_image_end_to_end() {
    require_root();
    let d = Dockerd::start();
    d.import_base_image();
    d.build_runner_image(IMAGE);
    let host = d.host();
    let docker_env = [("DOCKER_HOST", host.as_str())];
    let docker_config = d.dir.path().join("client-config").display().to_string();

    // The image: entrypoint, config, CLI, buildctl alias, runc.
    let config = d.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Volumes}}",
        IMAGE,
    ]);
    assert!(
        config.contains("dagger-engine") && config.contains("/var/lib/dagger"),
        "{config}"
    );

    // A TLS registry whose CA the engine gets only through /usr/local/share/ca-certificates.
    let registry = TestRegistry::start(Mode::Tls);
    images::push(
        images::BUSYBOX,
        &registry,
        "busybox:latest",
        Format::Oci,
        None,
    );
    let ca = registry.ca.clone().expect("TLS registry CA");
    let work = tempfile::tempdir().unwrap();
    let repo_config =
        std::fs::read_to_string(dagger_integration_tests::workspace().join("engine.toml")).unwrap();
    // The repository's engine.toml plus: this registry is HTTPS (loopback defaults to HTTP).
    let registry_section = format!("\n[registry.\"{}\"]\nhttp = false\n", registry.addr);
    let allowed = work.path().join("allowed.toml");
    std::fs::write(&allowed, format!("{repo_config}{registry_section}")).unwrap();
    assert!(repo_config.contains("insecure-entitlements = [\"security.insecure\"]"));
    // The same file with the insecure-entitlements line removed, as docs/runner.md says.
    let refused = work.path().join("refused.toml");
    let without: String = repo_config
        .lines()
        .filter(|l| !l.starts_with("insecure-entitlements"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&refused, format!("{without}{registry_section}")).unwrap();

    let ca_mount = format!(
        "{}:/usr/local/share/ca-certificates/test-registry.crt:ro",
        ca.display()
    );
    run_engine(
        &d,
        "rt-engine-a",
        Some("rt-engine-a"),
        &[
            ca_mount.clone(),
            format!("{}:/etc/dagger/engine.toml:ro", allowed.display()),
        ],
        1,
    );
    // No volume given: the image's VOLUME gives /var/lib/dagger an anonymous one.
    run_engine(
        &d,
        "rt-engine-b",
        None,
        &[
            ca_mount,
            format!("{}:/etc/dagger/engine.toml:ro", refused.display()),
        ],
        2,
    );
    wait_engine(&d, "rt-engine-a");
    wait_engine(&d, "rt-engine-b");

    // dial-stdio by both names answers HTTP on the engine socket.
    for cmd in [
        &["dagger-engine", "dial-stdio"][..],
        &["buildctl", "dial-stdio"][..],
    ] {
        let mut args = vec!["exec", "-i", "rt-engine-a"];
        args.extend(cmd);
        // stdin stays open: the engine closes the connection after the answer (Connection:
        // close), and dial-stdio must return then.
        let (_, answer, stderr) = through_dial_stdio(d.command().args(&args));
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(r#""version":"v"#),
            "{cmd:?}: {answer}\n{stderr}"
        );
    }

    // update-ca-certificates ran at start: the system store has the mounted CA.
    let ca_body: String = std::fs::read_to_string(&ca)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let in_store = d.try_docker(&[
        "exec",
        "rt-engine-a",
        "grep",
        "-c",
        &ca_body,
        "/etc/ssl/certs/ca-certificates.crt",
    ]);
    assert_eq!(
        text(&in_store.stdout).trim(),
        "1",
        "the mounted CA is not in the engine container's store:\n{}",
        logs(&d, "rt-engine-a")
    );

    // docker-container://: a pipeline that pulls over TLS and runs privileged.
    let image_ref = format!("{}/busybox:latest", registry.addr);
    let runner_a = [
        (
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "docker-container://rt-engine-a",
        ),
        docker_env[0],
        ("DOCKER_CONFIG", docker_config.as_str()),
    ];
    let query = format!(
        r#"{{ container {{ from(address: "{image_ref}") {{
            plain: withExec(args: ["sh", "-c", "echo hello from the runner image"]) {{ stdout }}
            root: withExec(args: ["sh", "-c", "grep CapEff /proc/self/status"], insecureRootCapabilities: true) {{ stdout }}
        }} }} }}"#
    );
    let v = json_ok(
        &dagger(&["query"], &query, &runner_a),
        "query via docker-container://",
    );
    let from = &v["container"]["from"];
    assert_eq!(from["plain"]["stdout"], "hello from the runner image\n");
    assert!(
        from["root"]["stdout"]
            .as_str()
            .unwrap_or("")
            .contains("CapEff"),
        "{v}"
    );
    assert!(logs(&d, "rt-engine-a").contains("adding the CA certificates"));

    // The mounted CA reaches exec containers that have a CA bundle, for the exec only: the
    // container's own file is unchanged afterwards.
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let ca_query = format!(
        r#"{{ container {{ from(address: "{image_ref}") {{
            withNewFile(path: "{bundle}", contents: "ORIGINAL BUNDLE\n") {{
                withExec(args: ["cat", "{bundle}"]) {{
                    stdout
                    file(path: "{bundle}") {{ contents }}
                }}
            }}
        }} }} }}"#
    );
    let v = json_ok(&dagger(&["query"], &ca_query, &runner_a), "CA bundle query");
    let exec = &v["container"]["from"]["withNewFile"]["withExec"];
    let seen = exec["stdout"].as_str().unwrap_or_default();
    assert!(
        seen.starts_with("ORIGINAL BUNDLE\n") && seen.contains(&ca_body),
        "the exec's CA bundle lacks the mounted CA: {seen}"
    );
    assert_eq!(exec["file"]["contents"], "ORIGINAL BUNDLE\n");

    // Many requests through one driver reuse its connections: `dagger version` + a query per
    // call here; the engine container must not accumulate dial-stdio processes either.
    for _ in 0..3 {
        let out = dagger(&["version"], "", &runner_a);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("engine v"),
            "{}",
            text(&out.stdout)
        );
    }
    // Once the CLIs are gone, their dial-stdio processes end too: only the engine is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = d.try_docker(&[
            "exec",
            "rt-engine-a",
            "sh",
            "-c",
            "ls -l /proc/[0-9]*/exe 2>/dev/null | grep -c 'dagger-engine$' || true",
        ]);
        let engines: u32 = text(&ps.stdout).trim().parse().unwrap_or(99);
        if engines == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{engines} dagger-engine processes in the container: dial-stdio processes were left behind"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // dagger run through the driver: the command's client reaches the engine.
    let script = r#"
import base64, json, os, urllib.request
port, token = os.environ["DAGGER_SESSION_PORT"], os.environ["DAGGER_SESSION_TOKEN"]
req = urllib.request.Request(f"http://127.0.0.1:{port}/query",
    data=json.dumps({"query": "{ version }"}).encode(),
    headers={"Content-Type": "application/json",
             "Authorization": "Basic " + base64.b64encode(f"{token}:".encode()).decode()})
print(json.load(urllib.request.urlopen(req))["data"]["version"])
"#;
    let out = dagger(&["run", "python3", "-c", script], "", &runner_a);
    assert!(
        out.status.success() && text(&out.stdout).starts_with('v'),
        "dagger run via docker-container:// failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // dagger session through the driver, as the SDKs spawn it: handshake line, an authorized
    // query, exit 0 when stdin closes.
    session_through(&runner_a);

    // kube-pod:// end to end, with a stand-in kubectl that records its command line and runs
    // it against the engine container: the driver's kubectl argv, and the tunnel through it.
    let fake = work.path().join("fake-bin");
    std::fs::create_dir_all(&fake).unwrap();
    let argv_log = work.path().join("kubectl-argv");
    let argv_log_s = argv_log.display().to_string();
    let script = r#"#!/bin/sh
printf '%s\n' "$*" >> "$KUBECTL_ARGV_LOG"
while [ "$1" != -- ]; do shift; done
shift
exec docker exec -i rt-engine-a "$@"
"#;
    std::fs::write(fake.join("kubectl"), script).unwrap();
    run(Command::new("chmod").arg("755").arg(fake.join("kubectl")));
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let runner_kube = [
        (
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "kube-pod://rt-engine-a?context=ci&namespace=dagger&container=engine",
        ),
        ("PATH", path.as_str()),
        ("KUBECTL_ARGV_LOG", argv_log_s.as_str()),
        docker_env[0],
        ("DOCKER_CONFIG", docker_config.as_str()),
    ];
    let v = json_ok(
        &dagger(&["query"], "{ version }", &runner_kube),
        "query via kube-pod://",
    );
    assert!(v["version"].as_str().unwrap_or("").starts_with('v'), "{v}");
    let recorded = std::fs::read_to_string(&argv_log).unwrap();
    assert_eq!(
        recorded.lines().next().unwrap(),
        "--context=ci --namespace=dagger exec -i rt-engine-a --container=engine -- dagger-engine dial-stdio"
    );

    // Without insecure-entitlements, privileged execution is refused (and plain execs work).
    let runner_b = [
        (
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "docker-container://rt-engine-b",
        ),
        docker_env[0],
        ("DOCKER_CONFIG", docker_config.as_str()),
    ];
    let out = dagger(&["query"], &query, &runner_b);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "insecureRootCapabilities was allowed: {}",
        text(&out.stdout)
    );
    assert!(stderr.contains("security.insecure"), "{stderr}");
    // The anonymous volume from VOLUME: overlay snapshots, no fallback warning.
    let b_logs = logs(&d, "rt-engine-b");
    assert!(b_logs.contains("snapshotter: overlayfs"), "{b_logs}");
    assert!(
        !b_logs.contains("cannot host overlay snapshots"),
        "{b_logs}"
    );

    // A state directory on the container's own overlay rootfs: the warning users see.
    let mut args = vec!["run", "-d", "--name", "rt-engine-c"];
    args.extend(docker::ENGINE_RUN_FLAGS);
    args.extend([IMAGE, "--root", "/var/tmp/dagger-state"]);
    d.docker(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c_logs = logs(&d, "rt-engine-c");
        if c_logs.contains("cannot host overlay snapshots") {
            assert!(
                c_logs.contains("-v dagger-engine:/var/lib/dagger"),
                "{c_logs}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no overlay warning:\n{c_logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.docker(&["stop", "rt-engine-c"]);

    // docker-image://: provisions dagger-engine-test with the flags this host needs, removes
    // an older engine container, and reuses its container on the next call.
    d.docker(&["create", "--name", "dagger-engine-old", IMAGE]);
    // As a user would write them in the shell-like variable: the device rule is quoted.
    let flags: Vec<String> = docker::ENGINE_RUN_FLAGS
        .iter()
        .map(|f| {
            if f.contains(' ') {
                format!("'{f}'")
            } else {
                f.to_string()
            }
        })
        .collect();
    let flags = flags.join(" ");
    let runner_image = [
        (
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "docker-image://dagger-engine:test",
        ),
        ("DAGGER_ENGINE_DOCKER_RUN_ARGS", flags.as_str()),
        docker_env[0],
        ("DOCKER_CONFIG", docker_config.as_str()),
    ];
    let pipeline = r#"{ directory { withNewFile(path: "greeting.txt", contents: "provisioned") { file(path: "greeting.txt") { contents } } } }"#;
    let v = json_ok(
        &dagger(&["query"], pipeline, &runner_image),
        "query via docker-image://",
    );
    assert_eq!(
        v["directory"]["withNewFile"]["file"]["contents"],
        "provisioned"
    );
    let first = d.docker(&["inspect", "--format", "{{.Id}}", "dagger-engine-test"]);
    let names = d.docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !names.contains("dagger-engine-old"),
        "old engine not removed: {names}"
    );
    let mounts = d.docker(&[
        "inspect",
        "--format",
        "{{json .Mounts}}",
        "dagger-engine-test",
    ]);
    assert!(
        mounts.contains(r#""Name":"dagger-engine""#) && mounts.contains("/var/lib/dagger"),
        "{mounts}"
    );
    let v = json_ok(
        &dagger(&["query"], pipeline, &runner_image),
        "second query via docker-image://",
    );
    assert_eq!(
        v["directory"]["withNewFile"]["file"]["contents"],
        "provisioned"
    );
    let second = d.docker(&["inspect", "--format", "{{.Id}}", "dagger-engine-test"]);
    assert_eq!(
        first, second,
        "the second call did not reuse the engine container"
    );
    let count = d
        .docker(&[
            "ps",
            "-a",
            "--filter",
            "name=^/dagger-engine-",
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .count();
    assert_eq!(count, 1);

    // podman-container://: the same image under podman (storage of its own), a pipeline that
    // pulls over TLS through the driver.
    let podman = docker::Podman::setup();
    podman.load_from(&d, IMAGE);
    let id = std::process::id() % 1000;
    let ca_mount = format!(
        "{}:/usr/local/share/ca-certificates/test-registry.crt:ro",
        ca.display()
    );
    let config_mount = format!("{}:/etc/dagger/engine.toml:ro", allowed.display());
    let (net_name, net_cidr) = (format!("rti{id}n4"), format!("10.204.{}.0/24", id % 250));
    let mut args = vec!["run", "-d", "--name", "rt-engine-p", "--network", "host"];
    args.extend(docker::PODMAN_RUN_FLAGS);
    args.extend([
        "-v",
        &ca_mount,
        "-v",
        &config_mount,
        "-v",
        "rt-engine-p:/var/lib/dagger",
    ]);
    args.extend([
        "localhost/dagger-engine:test",
        "--network-name",
        &net_name,
        "--network-cidr",
        &net_cidr,
    ]);
    podman.podman(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !podman
        .command()
        .args(["exec", "rt-engine-p", "dagger", "version"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "podman engine not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let podman_env = podman.env();
    let mut runner_p: Vec<(&str, &str)> = podman_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    runner_p.push((
        "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
        "podman-container://rt-engine-p",
    ));
    let plain = format!(
        r#"{{ container {{ from(address: "{image_ref}") {{ withExec(args: ["sh", "-c", "echo via podman"]) {{ stdout }} }} }} }}"#
    );
    let v = json_ok(
        &dagger(&["query"], &plain, &runner_p),
        "query via podman-container://",
    );
    assert_eq!(v["container"]["from"]["withExec"]["stdout"], "via podman\n");
    drop(podman);
    drop(registry);
}

/// Spawns `dagger session` with `env`, reads its handshake, sends one authorized query to it
/// and closes its stdin: it must answer and exit 0.
fn session_through(env: &[(&str, &str)]) {
    use std::io::{BufRead, Read, Write};
    let mut cmd = Command::new(bin("dagger"));
    cmd.arg("session")
        .env_remove("_EXPERIMENTAL_DAGGER_RUNNER_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let hello: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("dagger session handshake {line:?}: {e}\n{err}")
    });
    let port = hello["port"].as_u64().unwrap();
    let token = hello["session_token"].as_str().unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    let body = r#"{"query":"{ version }"}"#;
    let auth = base64(format!("{token}:").as_bytes());
    write!(
        conn,
        "POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#""version":"v"#),
        "{answer}"
    );
    drop(child.stdin.take());
    let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("session did not exit");
    assert!(status.success(), "dagger session exited with {status}");
}

/// Sends one `{ version }` request through `cmd` (a dial-stdio) with stdin left open, and
/// returns what came back once the command exited.
fn through_dial_stdio(cmd: &mut Command) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = r#"{"query":"{ version }"}"#;
    let req = format!(
        "POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stdin = child.stdin.take().unwrap();
    let _ = std::io::Write::write_all(&mut stdin, req.as_bytes());
    let status = wait_timeout(&mut child, Duration::from_secs(60))
        .expect("dial-stdio did not exit after the engine closed the connection");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (status, text(&out.stdout), text(&out.stderr))
}

#[test]
fn dial_stdio_by_both_names() {
    let engine = Engine::start(EngineOptions::default());
    let addr = format!("unix://{}", engine.socket.display());
    let links = tempfile::tempdir().unwrap();
    let buildctl = links.path().join("buildctl");
    std::os::unix::fs::symlink(bin("dagger-engine"), &buildctl).unwrap();
    let forms: Vec<Vec<String>> = vec![
        vec![
            bin("dagger-engine").display().to_string(),
            "dial-stdio".into(),
            "--addr".into(),
            addr.clone(),
        ],
        vec![
            bin("dagger-engine").display().to_string(),
            "--addr".into(),
            addr.clone(),
            "dial-stdio".into(),
        ],
        vec![
            buildctl.display().to_string(),
            "--addr".into(),
            addr.clone(),
            "dial-stdio".into(),
        ],
        vec![
            buildctl.display().to_string(),
            format!("--addr={addr}"),
            "dial-stdio".into(),
        ],
    ];
    for argv in &forms {
        let (status, answer, stderr) = through_dial_stdio(Command::new(&argv[0]).args(&argv[1..]));
        assert!(status.success(), "{argv:?}: {status}: {stderr}");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(r#""version":"v"#),
            "{argv:?}: {answer}"
        );
    }
    // Only dial-stdio is served under the buildctl name; tcp addresses are refused; a socket
    // nobody serves is an error naming it.
    let out = Command::new(&buildctl).arg("build").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("dial-stdio"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(bin("dagger-engine"))
        .args(["dial-stdio", "--addr", "tcp://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unix"), "{}", text(&out.stderr));
    let gone = links.path().join("none.sock");
    let out = Command::new(bin("dagger-engine"))
        .args(["dial-stdio", "--addr"])
        .arg(format!("unix://{}", gone.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot connect to the engine")
            && text(&out.stderr).contains(&gone.display().to_string()),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn kube_pod_fails_fast_without_kubectl() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin("dagger"))
        .args(["query"])
        .env("PATH", empty.path())
        .env(
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "kube-pod://dagger-engine-x7k2p?namespace=dagger&container=engine",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"{ version }")?;
            drop(c.stdin.take());
            c.wait_with_output()
        })
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kube-pod://") && stderr.contains("`kubectl`, which is not on PATH"),
        "{stderr}"
    );
}

#[test]
fn docker_container_fails_fast_for_a_missing_container() {
    require_binary("docker", "docker.io");
    let dir = tempfile::tempdir().unwrap();
    // No daemon answers there: `docker inspect` fails, and so must the CLI, at once.
    let host = format!("unix://{}", dir.path().join("none.sock").display());
    let out = dagger(
        &["query"],
        "{ version }",
        &[
            (
                "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
                "docker-container://no-such-engine",
            ),
            ("DOCKER_HOST", &host),
        ],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no container named \"no-such-engine\""),
        "{stderr}"
    );

    // The same check with podman.
    require_binary("podman", "podman");
    let out = dagger(
        &["query"],
        "{ version }",
        &[(
            "_EXPERIMENTAL_DAGGER_RUNNER_HOST",
            "podman-container://no-such-engine",
        )],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("podman-container://no-such-engine")
            && stderr.contains("no container named \"no-such-engine\""),
        "{stderr}"
    );
}

/// The manifests in deploy/kubernetes, validated against the Kubernetes OpenAPI schemas with
/// `kubernetes-validate` (PyPI, pinned, installed into a cached venv) and checked for what
/// docs/kubernetes.md promises.
#[test]
fn daemonset_manifest_is_valid() {
    let ws = dagger_integration_tests::workspace();
    let manifest = ws.join("deploy/kubernetes/daemonset.yaml");
    let venv = validator_venv();
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate rejected {}:\n{}{}",
        manifest.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    // The documents as JSON, through the venv's PyYAML.
    let out = run(Command::new(venv.join("bin/python")).args([
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ]).arg(&manifest));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    let probe = c["readinessProbe"]["exec"]["command"].to_string();
    assert!(probe.contains("dagger"), "{probe}");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    let host_path_at = |mount_path: &str| -> String {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("no mount at {mount_path}"));
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("the mount's volume");
        v["hostPath"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(host_path_at("/var/lib/dagger"), "/var/lib/dagger");
    assert_eq!(host_path_at("/run/dagger"), "/run/dagger");
    // The engine listens on the socket the node sees through the hostPath.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap with engine.toml");
    let toml = config["data"]["engine.toml"].as_str().unwrap();
    assert!(toml.contains("unix:///run/dagger/engine.sock"), "{toml}");
    assert!(mounts
        .iter()
        .any(|m| m["mountPath"] == "/etc/dagger/engine.toml"));
    // Tolerations are documented, commented out.
    let raw = std::fs::read_to_string(&manifest).unwrap();
    assert!(raw.contains("# tolerations:"), "tolerations hint missing");
}

/// A venv with `kubernetes-validate` (pinned), built once under `target/<profile>/`.
fn validator_venv() -> std::path::PathBuf {
    const PIN: &str = "kubernetes-validate==1.37.0";
    let exe = std::env::current_exe().unwrap();
    let mut target = exe.parent().unwrap();
    if target.file_name().is_some_and(|n| n == "deps") {
        target = target.parent().unwrap();
    }
    let venv = target.join("test-tools/kubernetes-validate-1.37.0");
    if venv.join(".complete").is_file() {
        return venv;
    }
    let python = require_binary("python3", "python3-venv");
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(python).args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        PIN,
    ]));
    std::fs::write(venv.join(".complete"), PIN).unwrap();
    venv
}
