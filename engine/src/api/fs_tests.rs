//! Filesystem operations through the API on scratch trees (native snapshotter, no images).

use super::tests::api;
use super::Api;
use async_graphql::Request;
use serde_json::Value;

async fn q(api: &Api, query: &str) -> Value {
    let v = serde_json::to_value(api.execute(|| Request::new(query)).await).unwrap();
    assert!(v.get("errors").is_none(), "{query}\n{v}");
    v["data"].clone()
}

async fn q_err(api: &Api, query: &str) -> String {
    let v = serde_json::to_value(api.execute(|| Request::new(query)).await).unwrap();
    v["errors"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error: {v}"))
        .to_string()
}

#[tokio::test]
async fn new_files_directories_and_removal() {
    let api = api();
    let d = q(
        &api,
        r#"{ directory {
             withNewFile(path: "a/b/c.txt", contents: "hello") {
               withNewDirectory(path: "empty") {
                 entries
                 sub: entries(path: "a/b")
                 file(path: "a/b/c.txt") { contents size name }
                 withoutFile(path: "a/b/c.txt") { entries(path: "a/b") }
                 withoutDirectory(path: "a") { entries }
                 withoutFiles(paths: ["a/b/*.txt", "missing"]) { entries(path: "a/b") }
                 directory(path: "a") { name withoutDirectory(path: ".") { entries } }
                 inside: directory(path: "a") { withNewFile(path: "/z", contents: "z") { entries } }
               } } } }"#,
    )
    .await;
    let d = &d["directory"]["withNewFile"]["withNewDirectory"];
    assert_eq!(d["entries"], serde_json::json!(["a/", "empty/"]));
    assert_eq!(d["sub"], serde_json::json!(["c.txt"]));
    assert_eq!(d["file"]["contents"], "hello");
    assert_eq!(d["file"]["size"], 5);
    assert_eq!(d["file"]["name"], "c.txt");
    assert_eq!(d["withoutFile"]["entries"], serde_json::json!([]));
    assert_eq!(
        d["withoutDirectory"]["entries"],
        serde_json::json!(["empty/"])
    );
    assert_eq!(d["withoutFiles"]["entries"], serde_json::json!([]));
    assert_eq!(d["directory"]["name"], "a/");
    assert_eq!(
        d["inside"]["withNewFile"]["entries"],
        serde_json::json!(["b/", "z"]),
        "a subdirectory is its own root"
    );
    assert_eq!(
        d["directory"]["withoutDirectory"]["entries"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn ids_round_trip_as_sources() {
    let api = api();
    let src = q(
        &api,
        r#"{ directory { withNewFile(path: "src/main.rs", contents: "fn main() {}") {
             withNewFile(path: "src/skip.tmp", contents: "x") {
               withNewFile(path: "README.md", contents: "readme") { id } } } } }"#,
    )
    .await;
    let src_id = src["directory"]["withNewFile"]["withNewFile"]["withNewFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = q(
        &api,
        r#"{ file(name: "notes.txt", contents: "n") { id name } }"#,
    )
    .await;
    assert_eq!(file["file"]["name"], "notes.txt");
    let file_id = file["file"]["id"].as_str().unwrap().to_string();

    let d = q(
        &api,
        &format!(
            r#"{{ directory {{
                 withDirectory(path: "/out", source: "{src_id}", exclude: ["**/*.tmp"]) {{
                   all: glob(pattern: "**")
                 }}
                 only: withDirectory(path: "x", source: "{src_id}", include: ["src"]) {{
                   glob(pattern: "**")
                 }}
                 withFile(path: "f/renamed.txt", source: "{file_id}") {{
                   file(path: "f/renamed.txt") {{ contents }}
                   withFile(path: "f", source: "{file_id}") {{ entries(path: "f") }}
                 }}
                 withFiles(path: "many", sources: ["{file_id}"]) {{ entries(path: "many") }}
               }} }}"#
        ),
    )
    .await;
    let d = &d["directory"];
    assert_eq!(
        d["withDirectory"]["all"],
        serde_json::json!(["out", "out/README.md", "out/src", "out/src/main.rs"])
    );
    assert_eq!(
        d["only"]["glob"],
        serde_json::json!(["x", "x/src", "x/src/main.rs", "x/src/skip.tmp"])
    );
    assert_eq!(d["withFile"]["file"]["contents"], "n");
    assert_eq!(
        d["withFile"]["withFile"]["entries"],
        serde_json::json!(["notes.txt", "renamed.txt"])
    );
    assert_eq!(d["withFiles"]["entries"], serde_json::json!(["notes.txt"]));

    let renamed = q(
        &api,
        &format!(
            r#"{{ loadFileFromID(id: "{file_id}") {{ withName(name: "other.md") {{ name contents }} }} }}"#
        ),
    )
    .await;
    assert_eq!(renamed["loadFileFromID"]["withName"]["name"], "other.md");
    assert_eq!(renamed["loadFileFromID"]["withName"]["contents"], "n");
}

#[tokio::test]
async fn digests_and_diff() {
    let api = api();
    let d = q(
        &api,
        r#"{
          a: directory { withNewFile(path: "x", contents: "1") { withNewFile(path: "y", contents: "2") { digest } } }
          b: directory { withNewFile(path: "y", contents: "2") { withNewFile(path: "x", contents: "1") { digest } } }
          c: directory { withNewFile(path: "x", contents: "1", permissions: 384) { withNewFile(path: "y", contents: "2") { digest } } }
          f: file(name: "f", contents: "hello world") {
            plain: digest(excludeMetadata: true)
            full: digest
          }
        }"#,
    )
    .await;
    let dig = |k: &str| d[k]["withNewFile"]["withNewFile"]["digest"].clone();
    assert_eq!(dig("a"), dig("b"), "order and times do not count");
    assert_ne!(dig("a"), dig("c"), "modes count");
    assert_eq!(
        d["f"]["plain"],
        "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    );
    assert_ne!(d["f"]["full"], d["f"]["plain"]);

    let lower = q(
        &api,
        r#"{ directory { withNewFile(path: "same", contents: "s") { withNewFile(path: "d/changed", contents: "old") { id } } } }"#,
    )
    .await;
    let lower_id = lower["directory"]["withNewFile"]["withNewFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let diff = q(
        &api,
        &format!(
            r#"{{ loadDirectoryFromID(id: "{lower_id}") {{
                 withNewFile(path: "d/changed", contents: "new") {{
                   withNewFile(path: "added/file", contents: "a") {{ id }} }} }} }}"#
        ),
    )
    .await;
    let upper_id = diff["loadDirectoryFromID"]["withNewFile"]["withNewFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = q(
        &api,
        &format!(
            r#"{{ loadDirectoryFromID(id: "{lower_id}") {{ diff(other: "{upper_id}") {{ glob(pattern: "**") }} }} }}"#
        ),
    )
    .await;
    assert_eq!(
        out["loadDirectoryFromID"]["diff"]["glob"],
        serde_json::json!(["added", "added/file", "d", "d/changed"])
    );
}

#[tokio::test]
async fn bad_arguments_are_reported() {
    let api = api();
    let m = q_err(
        &api,
        r#"{ directory { withNewFile(path: "x", contents: "", permissions: 70000) { entries } } }"#,
    )
    .await;
    assert!(m.contains("permissions"), "{m}");
    let m = q_err(&api, r#"{ file(name: "a/b", contents: "") { contents } }"#).await;
    assert!(m.contains("invalid file name"), "{m}");
    let m = q_err(
        &api,
        r#"{ directory { withNewDirectory(path: "d") { withNewFile(path: "d", contents: "") { entries } } } }"#,
    )
    .await;
    assert!(m.contains("is a directory"), "{m}");
    let m = q_err(
        &api,
        r#"{ directory { withFile(path: "x", source: "Directory:AAAA") { entries } } }"#,
    )
    .await;
    assert!(m.contains("File"), "{m}");
    let m = q_err(
        &api,
        r#"{ directory { withNewFile(path: "x", contents: "", permissions: 420) { withDirectory(path: "y", source: "Directory:xx", include: ["[a"]) { entries } } } }"#,
    )
    .await;
    assert!(!m.is_empty());
    let m = q_err(
        &api,
        r#"{ directory { withNewFile(path: "x", contents: "") { withSymlink(target: "/t", linkName: "x") { entries } } } }"#,
    )
    .await;
    assert!(m.contains("already exists"), "{m}");
}
