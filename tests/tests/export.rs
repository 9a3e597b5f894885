//! Exports to the client's disk (issue 6): `Directory.export` and `File.export` travel over
//! the session channel (`GET /sessions/<id>/events`), the CLI downloads the tar and writes it
//! relative to its own working directory, and the resolver answers with the absolute path.
//! Driven through `dagger query`, `dagger session` and the real Python and TypeScript SDKs.

use dagger_integration_tests::sdk::*;
use dagger_integration_tests::*;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;

/// `dagger query` with `document` on stdin, run in `cwd`.
fn query_in(engine: &Engine, cwd: &Path, document: &str, extra: &[&str]) -> Output {
    let mut args = vec!["query"];
    args.extend(extra);
    let host = engine.runner_host();
    dagger_cli_in(
        Some(cwd),
        &args,
        document,
        &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", host.as_str())],
    )
}

fn ok_json(out: &Output, engine: &Engine) -> serde_json::Value {
    assert!(
        out.status.success(),
        "dagger query failed: {}\nstdout: {}\nstderr: {}\nengine log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        engine.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const TREE: &str = r##"directory {
    withNewFile(path: "a.txt", contents: "alpha", permissions: 416) {
      withNewFile(path: "sub/run.sh", contents: "#!/bin/sh\necho hi\n", permissions: 493) {
        withSymlink(target: "a.txt", linkName: "link") {"##;

#[test]
fn dagger_query_exports_a_directory_relative_to_its_working_directory() {
    let engine = Engine::start(EngineOptions::default());
    let cwd = tempfile::tempdir().unwrap();
    let doc = format!(r#"{{ {TREE} export(path: "out/build") }} }} }} }} }}"#);
    let v = ok_json(&query_in(&engine, cwd.path(), &doc, &[]), &engine);
    let out = cwd.path().join("out/build");
    let answer = v["directory"]["withNewFile"]["withNewFile"]["withSymlink"]["export"].clone();
    assert_eq!(
        answer,
        serde_json::json!(out.to_string_lossy()),
        "export answers with the absolute path written on the client"
    );
    assert_eq!(names(&out), ["a.txt", "link", "sub"]);
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "alpha");
    assert_eq!(mode(&out.join("a.txt")), 0o640);
    assert_eq!(
        std::fs::read_to_string(out.join("sub/run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(mode(&out.join("sub/run.sh")), 0o755);
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("a.txt")
    );

    // Merge (the default) keeps what was there; wipe makes it match exactly.
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    std::fs::create_dir(out.join("stale-dir")).unwrap();
    let small = r#"{ directory { withNewFile(path: "a.txt", contents: "beta") { export(path: "out/build") } } }"#;
    ok_json(&query_in(&engine, cwd.path(), small, &[]), &engine);
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "beta");
    assert!(out.join("stale.txt").exists() && out.join("sub/run.sh").exists());
    let wiped = r#"{ directory { withNewFile(path: "a.txt", contents: "gamma") { export(path: "out/build", wipe: true) } } }"#;
    ok_json(&query_in(&engine, cwd.path(), wiped, &[]), &engine);
    assert_eq!(names(&out), ["a.txt"]);
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "gamma");
    // Nothing else appeared next to it (no temporary directories left behind).
    assert_eq!(names(&cwd.path().join("out")), ["build"]);
}

#[test]
fn file_export_writes_a_file_and_into_a_directory_only_when_allowed() {
    let engine = Engine::start(EngineOptions::default());
    let cwd = tempfile::tempdir().unwrap();
    let file = r#"directory { withNewFile(path: "dir/report.txt", contents: "data", permissions: 384) { file(path: "dir/report.txt") {"#;

    let v = ok_json(
        &query_in(
            &engine,
            cwd.path(),
            &format!(r#"{{ {file} export(path: "reports/r1.txt") }} }} }} }}"#),
            &[],
        ),
        &engine,
    );
    let r1 = cwd.path().join("reports/r1.txt");
    assert_eq!(
        v["directory"]["withNewFile"]["file"]["export"],
        serde_json::json!(r1.to_string_lossy())
    );
    assert_eq!(std::fs::read_to_string(&r1).unwrap(), "data");
    assert_eq!(mode(&r1), 0o600);

    // An existing directory as the path: an error, unless allowParentDirPath.
    let dest = cwd.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let out = query_in(
        &engine,
        cwd.path(),
        &format!(r#"{{ {file} export(path: "dest") }} }} }} }}"#),
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a directory") && err.contains("allowParentDirPath"),
        "{err}"
    );
    assert!(names(&dest).is_empty());

    let v = ok_json(
        &query_in(
            &engine,
            cwd.path(),
            &format!(r#"{{ {file} export(path: "dest", allowParentDirPath: true) }} }} }} }}"#),
            &[],
        ),
        &engine,
    );
    assert!(v["directory"]["withNewFile"]["file"]["export"]
        .as_str()
        .is_some_and(|p| p.starts_with('/')));
    assert_eq!(
        std::fs::read_to_string(dest.join("report.txt")).unwrap(),
        "data"
    );
}

#[test]
fn hostile_trees_are_refused_and_leave_the_destination_untouched() {
    let engine = Engine::start(EngineOptions::default());
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("mine.txt"), "keep").unwrap();
    for (what, target) in [
        ("absolute", "/etc/passwd"),
        ("climbing", "../../../etc/passwd"),
    ] {
        let doc = format!(
            r#"{{ directory {{ withNewFile(path: "ok.txt", contents: "x") {{ withSymlink(target: "{target}", linkName: "evil") {{ export(path: "out", wipe: true) }} }} }} }}"#
        );
        let res = query_in(&engine, cwd.path(), &doc, &[]);
        assert!(!res.status.success(), "{what} link accepted");
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(
            err.contains("points outside the exported tree"),
            "{what}: {err}"
        );
        assert_eq!(names(&out), ["mine.txt"], "{what}: the destination changed");
        assert_eq!(
            names(cwd.path()),
            ["out"],
            "{what}: something was left behind"
        );
    }
}

#[test]
fn export_without_a_client_session_fails_clearly() {
    let engine = Engine::start(EngineOptions::default());
    let v = engine.query(
        r#"{ directory { withNewFile(path: "a", contents: "x") { export(path: "/tmp/never") } } }"#,
    );
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("needs a client session") && msg.contains("dagger run"),
        "{v}"
    );
    assert!(!Path::new("/tmp/never").exists());
    let v = engine.query(
        r#"{ directory { withNewFile(path: "f", contents: "x") { file(path: "f") { export(path: "/tmp/never") } } } }"#,
    );
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("File.export") && msg.contains("client session"),
        "{v}"
    );

    // A session id nobody connected: a clear error too.
    let r = post_unix_with_session(
        &engine.socket,
        "not-connected-0123456789",
        r#"{ directory { export(path: "/tmp/never") } }"#,
    );
    assert!(r.contains("not connected to this engine"), "{r}");
}

/// POST /query with an `X-Dagger-Session-Id` header, by hand.
fn post_unix_with_session(socket: &Path, id: &str, query: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let body = gql(query);
    write!(
        s,
        "POST /query HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Dagger-Session-Id: {id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn a_session_exports_relative_to_the_sdk_working_directory() {
    let engine = Engine::start(EngineOptions::default());
    let cwd = tempfile::tempdir().unwrap();
    let mut s = SessionProcess::start_in(&engine, cwd.path(), &[]);
    let r = s.query(
        Some(&s.auth()),
        r#"{ directory { withNewFile(path: "hello.txt", contents: "from the engine") { export(path: "exported") } } }"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v.get("errors").is_none(), "{v}\n{}", engine.log());
    let written = cwd.path().join("exported/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from the engine"
    );
    let (status, stderr) = s.close_and_wait();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "", "a session stays quiet on stderr by default");
}

#[test]
fn the_real_sdks_export_a_directory_with_wipe_and_a_file() {
    let fx = SdkFixture::start();
    for (lang, launch, program) in [
        (Lang::Python, Launch::DaggerRun, "export.py"),
        (Lang::Node, Launch::CliBin, "export.mjs"),
    ] {
        let run = run_program(&fx, lang, launch, program);
        assert!(
            run.status.success() && run.stdout.contains("ALL OK"),
            "{program} ({launch:?}):\n{}\nengine log:\n{}",
            run.describe(),
            fx.engine.log()
        );
        for check in [
            "directory export returns the absolute path",
            "exported contents",
            "exported modes",
            "wipe removes stale files",
            "file export",
            "file export into a directory",
        ] {
            assert!(
                run.stdout.contains(&format!("ok: {check}")),
                "{program}: missing {check:?}\n{}",
                run.describe()
            );
        }
    }
}

#[test]
fn container_export_writes_an_oci_tarball_on_the_client() {
    let fx = SdkFixture::start();
    let cwd = tempfile::tempdir().unwrap();
    let doc = format!(
        r#"{{ container {{ from(address: "{}") {{ withEnvVariable(name: "OUT", value: "images") {{ export(path: "$OUT/busybox.tar", expand: true) }} }} }} }}"#,
        fx.image
    );
    let v = ok_json(&query_in(&fx.engine, cwd.path(), &doc, &[]), &fx.engine);
    let tarball = cwd.path().join("images/busybox.tar");
    assert_eq!(
        v["container"]["from"]["withEnvVariable"]["export"],
        serde_json::json!(tarball.to_string_lossy())
    );
    let bytes = std::fs::read(&tarball).unwrap();
    let mut entries: Vec<String> = tar::Archive::new(&bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert!(
        entries.iter().any(|n| n == "oci-layout") && entries.iter().any(|n| n == "index.json"),
        "not an OCI layout: {entries:?}"
    );
    assert!(
        entries.iter().any(|n| n.starts_with("blobs/sha256/")),
        "{entries:?}"
    );
    assert_eq!(names(cwd.path()), ["images"], "nothing else written");
}

#[test]
fn exports_travel_over_a_tcp_connection_to_the_engine() {
    // As with a remote engine: the CLI only reaches it over tcp, and the files land here.
    let engine = Engine::start(EngineOptions {
        tcp: true,
        ..Default::default()
    });
    let cwd = tempfile::tempdir().unwrap();
    let host = format!("tcp://127.0.0.1:{}", engine.tcp_port.unwrap());
    let out = dagger_cli_in(
        Some(cwd.path()),
        &["query", "--progress=plain"],
        r#"{ directory { withNewFile(path: "remote.txt", contents: "over tcp") { export(path: ".") } } }"#,
        &[("_EXPERIMENTAL_DAGGER_RUNNER_HOST", host.as_str())],
    );
    let v = ok_json(&out, &engine);
    assert_eq!(
        v["directory"]["withNewFile"]["export"],
        serde_json::json!(cwd.path().to_string_lossy())
    );
    assert_eq!(
        std::fs::read_to_string(cwd.path().join("remote.txt")).unwrap(),
        "over tcp"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Directory.export to .") && err.contains(" DONE "),
        "the export shows in progress: {err}"
    );
}
