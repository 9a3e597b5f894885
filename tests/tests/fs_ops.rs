//! Filesystem operations through GraphQL on the real engine (overlayfs and native snapshots):
//! `Query.file`, `Directory.with*/without*/diff/digest/name`, `File.withName/digest`, the
//! `Container` file fields, IDs as object arguments, what a later `withExec` sees (contents,
//! modes, owners), include/exclude, symlinks that must not let a write escape the snapshot,
//! and the persistent cache (no new snapshot for a re-run chain, even after a restart).

use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use dagger_integration_tests::*;
use serde_json::{json, Value};
use std::path::Path;

struct Fixture {
    _reg: TestRegistry,
    engine: Engine,
    image: String,
}

fn options(snapshotter: &str, root: Option<std::path::PathBuf>) -> EngineOptions {
    EngineOptions {
        config: Some(format!("[worker.oci]\nsnapshotter = \"{snapshotter}\"\n")),
        root,
        ..Default::default()
    }
}

fn fixture(snapshotter: &str) -> Fixture {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "busybox:1", Format::Oci, None);
    let engine = Engine::start(options(snapshotter, None));
    let image = format!("{}/busybox:1", reg.addr);
    Fixture {
        _reg: reg,
        engine,
        image,
    }
}

impl Fixture {
    /// `{ container { from(address: IMAGE) { <chain> } } }`, returning the `from` object.
    fn ctr(&self, chain: &str) -> Value {
        self.engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{}") {{ {chain} }} }} }}"#,
            self.image
        ))["container"]["from"]
            .clone()
    }

    fn ctr_err(&self, chain: &str) -> String {
        let v = self.engine.query(&format!(
            r#"{{ container {{ from(address: "{}") {{ {chain} }} }} }}"#,
            self.image
        ));
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error: {v}"))
            .to_string()
    }

    /// The `id` at the end of `path` in the answer to `query`.
    fn id(&self, query: &str, path: &[&str]) -> String {
        let mut v = self.engine.query_ok(query);
        for p in path {
            v = v[*p].clone();
        }
        v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id at {path:?} in {v}"))
            .to_string()
    }
}

/// Follows `path` (object keys) into `v`.
fn at<'a>(mut v: &'a Value, path: &str) -> &'a Value {
    for k in path.split('.') {
        v = &v[k];
    }
    v
}

fn stdout(v: &Value, path: &str) -> String {
    at(v, path)["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("no stdout at {path}: {v}"))
        .to_string()
}

fn directory_ops(snapshotter: &str) {
    let f = fixture(snapshotter);
    // Sources made in one query, used by ID in the next ones.
    let src = f.id(
        r#"{ directory {
             withNewFile(path: "app/main.go", contents: "package main\n") {
             withNewFile(path: "app/tmp/cache.bin", contents: "junk") {
             withNewFile(path: "README.md", contents: "readme\n", permissions: 384) {
             withNewDirectory(path: "empty/sub", permissions: 448) {
             withSymlink(target: "../README.md", linkName: "docs/link") { id } } } } } } }"#,
        &[
            "directory",
            "withNewFile",
            "withNewFile",
            "withNewFile",
            "withNewDirectory",
            "withSymlink",
        ],
    );
    let file = f.id(
        r##"{ file(name: "tool.sh", contents: "#!/bin/sh\necho tool\n", permissions: 493) { id } }"##,
        &["file"],
    );
    let other = f.id(
        r#"{ file(name: "other.txt", contents: "other\n") { withName(name: "renamed.txt") { id } } }"#,
        &["file", "withName"],
    );

    let v = f.engine.query_ok(&format!(
        r#"{{ loadDirectoryFromID(id: "{src}") {{
             name digest entries glob(pattern: "**")
             docs: directory(path: "docs") {{ name }}
             readme: file(path: "docs/link") {{ contents }}
             withoutFile(path: "README.md") {{ entries }}
             withoutFiles(paths: ["app/main.go", "app/tmp/*.bin"]) {{ app: entries(path: "app") tmp: entries(path: "app/tmp") }}
             withoutDirectory(path: "app") {{ entries }}
             filtered: withDirectory(path: "copy", source: "{src}", exclude: ["**/tmp"], include: ["app", "README.md"]) {{
               directory(path: "copy") {{ glob(pattern: "**") }} }}
             withFile(path: "bin/tool", source: "{file}") {{ file(path: "bin/tool") {{ contents name }} }}
             withFiles(path: "many", sources: ["{file}", "{other}"]) {{ entries(path: "many") }}
           }}
           f: loadFileFromID(id: "{other}") {{ name contents plain: digest(excludeMetadata: true) digest }}
        }}"#
    ));
    let d = &v["loadDirectoryFromID"];
    assert_eq!(d["name"], "/");
    assert!(d["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        d["entries"],
        json!(["README.md", "app/", "docs/", "empty/"])
    );
    assert_eq!(d["docs"]["name"], "docs/");
    assert_eq!(d["readme"]["contents"], "readme\n");
    assert_eq!(
        d["withoutFile"]["entries"],
        json!(["app/", "docs/", "empty/"])
    );
    assert_eq!(d["withoutFiles"]["app"], json!(["tmp/"]));
    assert_eq!(d["withoutFiles"]["tmp"], json!([]));
    assert_eq!(
        d["withoutDirectory"]["entries"],
        json!(["README.md", "docs/", "empty/"])
    );
    assert_eq!(
        d["filtered"]["directory"]["glob"],
        json!(["README.md", "app", "app/main.go"])
    );
    assert_eq!(
        d["withFile"]["file"],
        json!({"contents": "#!/bin/sh\necho tool\n", "name": "tool"})
    );
    assert_eq!(d["withFiles"]["entries"], json!(["renamed.txt", "tool.sh"]));
    assert_eq!(v["f"]["name"], "renamed.txt");
    assert_eq!(v["f"]["contents"], "other\n");
    assert_eq!(
        v["f"]["plain"],
        format!(
            "sha256:{}",
            dagger_engine::oci::Digest::of(b"other\n").hex()
        )
    );
    assert_ne!(v["f"]["digest"], v["f"]["plain"]);

    // The same tree built in another order has the same digest; a different mode does not.
    let v = f.engine.query_ok(
        r#"{ a: directory { withNewFile(path: "x/1", contents: "1") { withNewFile(path: "y", contents: "2") { digest } } }
             b: directory { withNewFile(path: "y", contents: "2") { withNewFile(path: "x/1", contents: "1") { digest } } }
             c: directory { withNewFile(path: "y", contents: "2", permissions: 511) { withNewFile(path: "x/1", contents: "1") { digest } } } }"#,
    );
    let dig = |k: &str| v[k]["withNewFile"]["withNewFile"]["digest"].clone();
    assert_eq!(dig("a"), dig("b"));
    assert_ne!(dig("a"), dig("c"));

    // diff: what the other directory adds or changes.
    let upper = f.id(
        &format!(
            r#"{{ loadDirectoryFromID(id: "{src}") {{ withNewFile(path: "app/main.go", contents: "changed\n") {{
                 withNewFile(path: "new/file", contents: "n") {{ id }} }} }} }}"#
        ),
        &["loadDirectoryFromID", "withNewFile", "withNewFile"],
    );
    let v = f.engine.query_ok(&format!(
        r#"{{ loadDirectoryFromID(id: "{src}") {{ diff(other: "{upper}") {{ glob(pattern: "**") }} }} }}"#
    ));
    assert_eq!(
        v["loadDirectoryFromID"]["diff"]["glob"],
        json!(["app", "app/main.go", "new", "new/file"])
    );

    // Everything above, seen by a process: contents, modes, owners, links.
    let v = f.ctr(&format!(
        r#"withDirectory(path: "/src", source: "{src}") {{
             withFile(path: "/usr/local/bin/tool", source: "{file}") {{
               withExec(args: ["sh", "-c", "cat /src/README.md /src/app/main.go; stat -c '%a %u %g %n' /src/README.md /src/empty /src/empty/sub /usr/local/bin/tool; readlink /src/docs/link; /usr/local/bin/tool"]) {{ stdout }} }} }}"#
    ));
    assert_eq!(
        stdout(&v, "withDirectory.withFile.withExec"),
        "readme\npackage main\n600 0 0 /src/README.md\n700 0 0 /src/empty\n700 0 0 /src/empty/sub\n755 0 0 /usr/local/bin/tool\n../README.md\ntool\n"
    );
}

#[test]
fn directory_operations_overlayfs() {
    directory_ops("overlayfs");
}

#[test]
fn directory_operations_native() {
    directory_ops("native");
}

#[test]
fn container_operations_are_seen_by_execs() {
    let f = fixture("overlayfs");
    // Accounts in the target rootfs, for owner names.
    let accounts = r#"withNewFile(path: "/etc/passwd", contents: "root:x:0:0:root:/root:/bin/sh\napp:x:1234:4321::/home/app:/bin/sh\n") {
                      withNewFile(path: "/etc/group", contents: "root:x:0:\nstaff:x:50:app\n") {"#;
    let v = f.ctr(&format!(
        r#"{accounts}
           withWorkdir(path: "/work") {{ withEnvVariable(name: "SUB", value: "sub") {{
             withNewFile(path: "$SUB/a.txt", contents: "a\n", permissions: 416, owner: "1000:2000", expand: true) {{
             withNewFile(path: "named", contents: "n", owner: "app") {{
             withNewFile(path: "/abs/both", contents: "b", owner: "app:staff") {{
             withSymlink(target: "$SUB/a.txt", linkName: "link", expand: true) {{
               withExec(args: ["sh", "-c", "cat /work/sub/a.txt; stat -c '%a %u %g %n' /work/sub/a.txt named /abs/both; readlink link; ls -ln /work/named | awk '{{print $3, $4}}'"]) {{ stdout }}
               rm: withoutFiles(paths: ["named", "/abs/both"]) {{ withoutDirectory(path: "$SUB", expand: true) {{
                 withExec(args: ["sh", "-c", "ls -A /work; ls -A /abs"]) {{ stdout }} }} }}
               rmfile: withoutFile(path: "link") {{ withExec(args: ["ls", "/work"]) {{ stdout }} }}
             }} }} }} }} }} }} }} }}"#
    ));
    let c = at(
        &v,
        "withNewFile.withNewFile.withWorkdir.withEnvVariable.withNewFile.withNewFile.withNewFile.withSymlink",
    );
    assert_eq!(
        stdout(c, "withExec"),
        "a\n640 1000 2000 /work/sub/a.txt\n644 1234 1234 named\n644 1234 50 /abs/both\nsub/a.txt\n1234 1234\n"
    );
    assert_eq!(stdout(c, "rm.withoutDirectory.withExec"), "link\n");
    assert_eq!(stdout(c, "rmfile.withExec"), "named\nsub\n");

    // Directories and files from other objects, with owner and permission overrides.
    let dir = f.id(
        r#"{ directory { withNewFile(path: "keep/x.txt", contents: "x") { withNewFile(path: "skip/y.txt", contents: "y") {
             withNewFile(path: "keep/z.log", contents: "z") { id } } } } }"#,
        &["directory", "withNewFile", "withNewFile", "withNewFile"],
    );
    let file = f.id(
        r#"{ file(name: "f.txt", contents: "f") { id } }"#,
        &["file"],
    );
    let v = f.ctr(&format!(
        r#"{accounts}
           withDirectory(path: "/dst", source: "{dir}", include: ["keep"], exclude: ["*/*.log"], owner: "app", permissions: 448) {{
           withFiles(path: "/files", sources: ["{file}"], owner: "0:50", permissions: 256) {{
           withFile(path: "/files/copy", source: "{file}") {{
             withExec(args: ["sh", "-c", "find /dst | sort; stat -c '%a %u %g %n' /dst/keep /dst/keep/x.txt /files/f.txt /files/copy"]) {{ stdout }}
           }} }} }} }} }}"#
    ));
    assert_eq!(
        stdout(&v, "withNewFile.withNewFile.withDirectory.withFiles.withFile.withExec"),
        "/dst\n/dst/keep\n/dst/keep/x.txt\n700 1234 1234 /dst/keep\n700 1234 1234 /dst/keep/x.txt\n400 0 50 /files/f.txt\n644 0 0 /files/copy\n"
    );

    // withRootfs: a whole snapshot, and a subdirectory moved to the root.
    let rootfs = f.id(
        &format!(
            r#"{{ container {{ from(address: "{}") {{ rootfs {{ withNewFile(path: "/marker", contents: "root\n") {{ id }} }} }} }} }}"#,
            f.image
        ),
        &["container", "from", "rootfs", "withNewFile"],
    );
    let nested = f.id(
        &format!(
            r#"{{ directory {{ withDirectory(path: "nested/fs", source: "{rootfs}") {{ directory(path: "nested/fs") {{ id }} }} }} }}"#
        ),
        &["directory", "withDirectory", "directory"],
    );
    let v = f.engine.query_ok(&format!(
        r#"{{ a: container {{ withRootfs(directory: "{rootfs}") {{ withExec(args: ["/bin/cat", "/marker"]) {{ stdout }} }} }}
             b: container {{ withRootfs(directory: "{nested}") {{ withExec(args: ["/bin/cat", "/marker"]) {{ stdout }} }} }} }}"#
    ));
    assert_eq!(v["a"]["withRootfs"]["withExec"]["stdout"], "root\n");
    assert_eq!(v["b"]["withRootfs"]["withExec"]["stdout"], "root\n");

    // Errors say what is wrong.
    let m = f.ctr_err(r#"withNewFile(path: "x", contents: "", owner: "nobody") { sync }"#);
    assert!(m.contains("nobody"), "{m}");
    let m = f.ctr_err(
        r#"withMountedTemp(path: "/mnt") { withNewFile(path: "/mnt/x", contents: "") { sync } }"#,
    );
    assert!(m.contains("mount"), "{m}");
    let m = f.ctr_err(r#"withNewFile(path: "/bin", contents: "") { sync }"#);
    assert!(m.contains("is a directory"), "{m}");
}

#[test]
fn symlinks_never_let_a_write_escape_the_snapshot() {
    let f = fixture("overlayfs");
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, "host").unwrap();
    let hostdir = host.path().display().to_string();
    let unique = format!("escape-probe-{}", std::process::id());
    let up = format!("../../../../../../../..{hostdir}");
    let links = format!(
        r#"withExec(args: ["sh", "-c", "ln -s {hostdir} /abs && ln -s {up} /up && ln -s / /etc/root && mkdir -p /real"]) {{"#
    );
    for (path, lands) in [
        ("/etc/root/{unique}", Some("/{unique}")),
        ("/abs/victim", None),
        ("/up/victim", None),
        ("/abs/{unique}/x", None),
    ] {
        let path = path.replace("{unique}", &unique);
        let q = format!(
            r#"{links} withNewFile(path: "{path}", contents: "pwned") {{
                 withExec(args: ["sh", "-c", "cat {} 2>/dev/null; true"]) {{ stdout }} }} }}"#,
            lands
                .map(|l| l.replace("{unique}", &unique))
                .unwrap_or_default()
        );
        let v = f.engine.query(&format!(
            r#"{{ container {{ from(address: "{}") {{ {q} }} }} }}"#,
            f.image
        ));
        if let Some(l) = lands {
            assert!(v.get("errors").is_none(), "{path}: {v}");
            assert_eq!(
                v["data"]["container"]["from"]["withExec"]["withNewFile"]["withExec"]["stdout"],
                "pwned",
                "{path} lands at {l} inside the rootfs: {v}"
            );
        } else {
            // The link names a path inside the rootfs that does not exist: nothing to write
            // into, and nothing is created through a dangling link.
            let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(msg.contains("no such file"), "{path}: {v}");
        }
        for dir in [f.engine.root.as_path(), Path::new("/")] {
            assert!(!dir.join(&unique).exists(), "{path}: escaped to {dir:?}");
        }
    }
    // Directory copies and removals go through the same checks.
    let src = f.id(
        r#"{ directory { withNewFile(path: "victim", contents: "pwned") { id } } }"#,
        &["directory", "withNewFile"],
    );
    for chain in [
        format!(r#"withDirectory(path: "/abs", source: "{src}") {{ sync }}"#),
        format!(r#"withDirectory(path: "/up", source: "{src}") {{ sync }}"#),
        r#"withoutFile(path: "/abs/victim") { sync }"#.to_string(),
        r#"withoutDirectory(path: "/up") { withoutFiles(paths: ["/abs/*"]) { sync } }"#.to_string(),
    ] {
        let _ = f.engine.query(&format!(
            r#"{{ container {{ from(address: "{}") {{ {links} {chain} }} }} }} }}"#,
            f.image
        ));
    }
    // A Directory's own symlinks too.
    let _ = f.engine.query(&format!(
        r#"{{ directory {{ withSymlink(target: "{hostdir}", linkName: "l") {{
             withSymlink(target: "{up}", linkName: "u") {{
               a: withNewFile(path: "l/victim", contents: "pwned") {{ sync }}
               b: withNewFile(path: "u/victim", contents: "pwned") {{ sync }}
               c: withDirectory(path: "u", source: "{src}") {{ sync }} }} }} }} }}"#
    ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host");
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
}

/// Committed snapshots (not ones being built).
fn snapshot_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with("new-"))
        .count()
}

#[test]
fn a_rerun_chain_writes_no_new_snapshot_even_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("state");
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "busybox:1", Format::Oci, None);
    let image = format!("{}/busybox:1", reg.addr);
    let mut engine = Engine::start(options("overlayfs", Some(root.clone())));
    // Sent the way an SDK sends it: the argument objects' IDs first, then the chain.
    let q = |engine: &Engine| -> Value {
        let file = engine.query_ok(r#"{ file(name: "in.txt", contents: "input\n") { id } }"#)
            ["file"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let dir = engine.query_ok(
            r#"{ directory { withNewFile(path: "d/x", contents: "x\n") { withNewDirectory(path: "e") { id } } } }"#,
        )["directory"]["withNewFile"]["withNewDirectory"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        engine.query_ok(&format!(
            r#"{{ container {{ from(address: "{image}") {{
                 withNewFile(path: "/a", contents: "a\n") {{
                 withFile(path: "/b", source: "{file}") {{
                 withDirectory(path: "/c", source: "{dir}", exclude: ["e"]) {{
                 withExec(args: ["sh", "-c", "cat /a /b /c/d/x; ls /c"]) {{ stdout }} }} }} }} }} }} }}"#
        ))
    };
    let first = q(&engine);
    assert_eq!(
        at(
            &first,
            "container.from.withNewFile.withFile.withDirectory.withExec"
        )["stdout"],
        "a\ninput\nx\nd\n"
    );
    let count = snapshot_count(&root);
    assert!(
        count >= 5,
        "image layer, three changes and an exec: {count}"
    );
    assert_eq!(q(&engine), first);
    assert_eq!(snapshot_count(&root), count, "same engine: memoised");
    assert!(engine.terminate().success());

    let engine = Engine::start(options("overlayfs", Some(root.clone())));
    assert_eq!(q(&engine), first);
    assert_eq!(
        snapshot_count(&root),
        count,
        "after a restart: from the persistent cache"
    );
}
