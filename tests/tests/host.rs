//! Host access through `dagger session` (issue 6): the session proxy reads host paths, packs
//! them into a tar, uploads it to the engine (`POST /upload`, skipped when `GET /upload/<digest>`
//! says the engine already has it) and answers `{ host { directory/file(...) { id } } }` itself.

use dagger_integration_tests::sdk::*;
use dagger_integration_tests::*;
use serde_json::Value;
use std::path::Path;

fn host_id(s: &SessionProcess, query: &str) -> Value {
    let r = s.query(Some(&s.auth()), query);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn uploads(engine: &Engine) -> usize {
    engine.log().matches("upload unpacked").count()
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deep")).unwrap();
    std::fs::create_dir_all(dir.join("skip")).unwrap();
    std::fs::write(dir.join("a.txt"), "alpha").unwrap();
    std::fs::write(dir.join("b.log"), "log").unwrap();
    std::fs::write(dir.join("sub/deep/c.txt"), "gamma").unwrap();
    std::fs::write(dir.join("skip/d.txt"), "delta").unwrap();
    // Points outside the directory: uploaded as a link, never followed.
    std::os::unix::fs::symlink("/etc/hostname", dir.join("link.txt")).unwrap();
}

#[test]
fn host_directory_with_include_exclude_keeps_symlinks() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let path = tmp.path().display().to_string();

    let v = host_id(
        &s,
        &format!(
            r#"{{ h: host {{ d: directory(path: {path:?}, include: ["**/*.txt"], exclude: ["skip"]) {{ i: id }} }} }}"#
        ),
    );
    let id = v["data"]["h"]["d"]["i"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    let data = engine.query_ok(&format!(
        r#"{{ loadDirectoryFromID(id: "{id}") {{ glob(pattern: "**") c: file(path: "sub/deep/c.txt") {{ contents }} a: file(path: "a.txt") {{ contents }} }} }}"#
    ));
    let d = &data["loadDirectoryFromID"];
    let mut names: Vec<&str> = d["glob"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().trim_end_matches('/'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a.txt", "link.txt", "sub", "sub/deep", "sub/deep/c.txt"],
        "{data}"
    );
    assert_eq!(d["c"]["contents"], "gamma");
    assert_eq!(d["a"]["contents"], "alpha");

    // The link was not followed on the host: inside the snapshot it resolves to the
    // snapshot's own /etc/hostname, which does not exist.
    let r = engine.query(&format!(
        r#"{{ loadDirectoryFromID(id: "{id}") {{ file(path: "link.txt") {{ contents }} }} }}"#
    ));
    assert!(r.get("errors").is_some(), "{r}");

    // The SDKs' exact shapes.
    let py = host_id(
        &s,
        &format!("{{\n  host {{\n    directory: directory(path: {path:?}) {{\n      id: id\n    }}\n  }}\n}}"),
    );
    assert!(py["data"]["host"]["directory"]["id"].is_string(), "{py}");
    let ts = host_id(
        &s,
        &format!("\n      {{ host  {{ directory (path: {path:?}) {{ id  }} }} }}\n    "),
    );
    assert_eq!(ts, py);
    let (status, stderr) = {
        let mut s = s;
        s.close_and_wait()
    };
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn unchanged_directory_is_not_uploaded_again() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let q = format!(
        r#"{{ host {{ directory(path: {:?}) {{ id }} }} }}"#,
        tmp.path().display().to_string()
    );
    let first = host_id(&s, &q);
    assert_eq!(uploads(&engine), 1, "{first}\n{}", engine.log());
    let second = host_id(&s, &q);
    assert_eq!(first, second);
    assert_eq!(uploads(&engine), 1, "an unchanged tree is not sent again");
    // A second session (another CLI process) gets the same answer without uploading.
    let other = SessionProcess::start(&engine, &[]);
    assert_eq!(host_id(&other, &q), first);
    assert_eq!(uploads(&engine), 1);

    std::fs::write(tmp.path().join("a.txt"), "changed!").unwrap();
    let third = host_id(&s, &q);
    assert_ne!(third, first);
    assert_eq!(uploads(&engine), 2);
    let id = third["data"]["host"]["directory"]["id"].as_str().unwrap();
    let data = engine.query_ok(&format!(
        r#"{{ loadDirectoryFromID(id: "{id}") {{ file(path: "a.txt") {{ contents }} }} }}"#
    ));
    assert_eq!(data["loadDirectoryFromID"]["file"]["contents"], "changed!");
}

#[test]
fn host_file_and_unserved_host_fields() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.md"), "# hi\n").unwrap();
    let v = host_id(
        &s,
        &format!(
            r#"{{ host {{ file(path: {:?}) {{ id }} }} }}"#,
            tmp.path().join("notes.md").display().to_string()
        ),
    );
    let id = v["data"]["host"]["file"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    let data = engine.query_ok(&format!(
        r#"{{ loadFileFromID(id: "{id}") {{ name contents }} }}"#
    ));
    assert_eq!(data["loadFileFromID"]["name"], "notes.md");
    assert_eq!(data["loadFileFromID"]["contents"], "# hi\n");

    // A missing path is a GraphQL error, not a crash.
    let v = host_id(
        &s,
        r#"{ host { directory(path: "/definitely/not/here") { id } } }"#,
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/definitely/not/here"),
        "{v}"
    );
    // A unix socket that is not one: a clear error naming the path.
    let v = host_id(
        &s,
        &format!(
            r#"{{ host {{ unixSocket(path: {:?}) {{ id }} }} }}"#,
            tmp.path().join("notes.md").display().to_string()
        ),
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is not a unix socket"),
        "{v}"
    );
    // Anything else under host gets a clear error.
    let v = host_id(&s, r#"{ host { findUp(name: "x") } }"#);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Host.findUp"),
        "{v}"
    );
    // Other queries still go to the engine.
    let v = host_id(&s, "{ version }");
    assert!(v["data"]["version"].is_string(), "{v}");

    // The upload endpoints through the proxy (it forwards every path with the token).
    let auth = s.auth();
    let r = http(
        s.port,
        "GET",
        &format!("/upload/sha256:{}", "0".repeat(64)),
        &[("Authorization", auth.as_str())],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(
        s.port,
        "POST",
        "/upload",
        &[("Authorization", auth.as_str())],
        "not a tar at all, but long enough to be read as one............................",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["errors"][0]["message"].is_string(), "{}", r.body);
}

#[test]
fn host_chains_beyond_id_run_on_the_upload() {
    let engine = Engine::start(EngineOptions::default());
    let s = SessionProcess::start(&engine, &[]);
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let path = tmp.path().display().to_string();
    let v = host_id(
        &s,
        &format!(
            r#"{{ h: host {{ d: directory(path: {path:?}, exclude: ["skip", "*.log"]) {{ e: entries c: file(path: "sub/deep/c.txt") {{ contents }} }} }} }}"#
        ),
    );
    let d = &v["data"]["h"]["d"];
    let mut e: Vec<&str> = d["e"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x.as_str().unwrap().trim_end_matches('/'))
        .collect();
    e.sort();
    assert_eq!(e, ["a.txt", "link.txt", "sub"], "{v}");
    assert_eq!(d["c"]["contents"], "gamma", "{v}");
    // Engine errors come back with the client's path.
    let v = host_id(
        &s,
        &format!(
            r#"{{ host {{ directory(path: {path:?}) {{ file(path: "nope") {{ contents }} }} }} }}"#
        ),
    );
    let err = &v["errors"][0];
    assert_eq!(err["path"][0], "host", "{v}");
    assert_eq!(err["path"][1], "directory", "{v}");
}

#[test]
fn python_sdk_reads_host_directory_and_file() {
    let py = python();
    let engine = Engine::start(EngineOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    tree(tmp.path());
    let script = r#"
import anyio, dagger
from dagger import dag

async def main():
    async with dagger.connection(dagger.Config(log_output=None)):
        d = dag.host().directory(".", include=["**/*.txt"], exclude=["skip"])
        print("ENTRIES=" + ",".join(sorted(await d.entries())))
        print("C=" + await d.file("sub/deep/c.txt").contents())
        print("F=" + await dag.host().file("a.txt").contents())
        n = await dag.directory().with_directory("/in", d).file("/in/a.txt").contents()
        print("N=" + n)

anyio.run(main)
"#;
    let out = std::process::Command::new(bin("dagger"))
        .arg("run")
        .arg(&py)
        .arg("-c")
        .arg(script)
        .current_dir(tmp.path())
        .env("_EXPERIMENTAL_DAGGER_RUNNER_HOST", engine.runner_host())
        .env(
            "_EXPERIMENTAL_DAGGER_CLI_BIN",
            "/nonexistent/dagger-must-not-run",
        )
        .env_remove("DAGGER_SESSION_PORT")
        .env_remove("DAGGER_SESSION_TOKEN")
        .output()
        .unwrap();
    let so = sdk::stdout_of_success(&out, &engine);
    assert!(so.contains("C=gamma"), "{so}");
    assert!(so.contains("F=alpha"), "{so}");
    assert!(so.contains("N=alpha"), "{so}");
    let entries = so
        .lines()
        .find_map(|l| l.strip_prefix("ENTRIES="))
        .unwrap_or_else(|| panic!("{so}"));
    assert!(entries.contains("a.txt") && entries.contains("sub"), "{so}");
    assert!(
        !entries.contains("b.log") && !entries.contains("skip"),
        "{so}"
    );
}
