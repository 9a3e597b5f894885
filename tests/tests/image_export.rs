//! Images out of and into the engine: `Container.asTarball` (OCI layout tar plus a Docker
//! `manifest.json`) checked from inside a container with busybox tools (digests with
//! `sha256sum`, layer listings with `tar`), `Container.import` of our own tarballs (round trip
//! of files and config, byte-identical re-export), of gzip, zstd and uncompressed layers, of
//! Docker media types, of a `docker save` tarball built here, and of hostile tarballs. On
//! overlayfs and native snapshots.

use dagger_engine::oci::Digest;
use dagger_integration_tests::fixtures::{busybox_engine, index_platforms, PodmanStore};
use dagger_integration_tests::oci_build::{tar_of, FileSpec};
use dagger_integration_tests::registry::TestRegistry;
use dagger_integration_tests::*;
use serde_json::{json, Value};

struct Fixture {
    _reg: TestRegistry,
    engine: Engine,
    image: String,
}

fn fixture(snapshotter: &str) -> Fixture {
    let (reg, engine, image) =
        busybox_engine(&format!("[worker.oci]\nsnapshotter = \"{snapshotter}\"\n"));
    Fixture {
        _reg: reg,
        engine,
        image,
    }
}

/// A GraphQL string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The container every test exports: a pulled base, two execs (the second removes a file the
/// first made: a whiteout), a new file, and config.
const BUILD: &str = r#"withExec(args: ["sh", "-c", "mkdir -p /data/gone-dir && echo old > /data/old && echo x > /data/gone-dir/x"]) {
    withExec(args: ["sh", "-c", "rm -r /data/old /data/gone-dir && echo new > /data/new && ln /data/new /data/new-link"]) {
    withNewFile(path: "/data/note", contents: "a note", permissions: 384) {
    withEnvVariable(name: "FOO", value: "bar") {
    withEntrypoint(args: ["/bin/sh", "-c"]) {
    withDefaultArgs(args: ["cat /data/note"]) {
    withLabel(name: "org.example", value: "yes") {
    withWorkdir(path: "/data") {
    withExposedPort(port: 8080) {
    id } } } } } } } } }"#;

/// Follows `path` of single-key objects down from `v`.
fn dig(mut v: &Value, path: &[&str]) -> Value {
    for p in path {
        v = &v[*p];
    }
    v.clone()
}

impl Fixture {
    fn built_id(&self) -> String {
        let v = self.engine.query_ok(&format!(
            "{{ container {{ from(address: {}) {{ {BUILD} }} }} }}",
            lit(&self.image)
        ));
        let mut c = &v["container"]["from"];
        for k in [
            "withExec",
            "withExec",
            "withNewFile",
            "withEnvVariable",
            "withEntrypoint",
            "withDefaultArgs",
            "withLabel",
            "withWorkdir",
            "withExposedPort",
        ] {
            c = &c[k];
        }
        c["id"].as_str().expect("container id").to_string()
    }

    fn tarball_id(&self, container: &str, args: &str) -> String {
        let args = if args.is_empty() {
            String::new()
        } else {
            format!("({args})")
        };
        let v = self.engine.query_ok(&format!(
            "{{ loadContainerFromID(id: {}) {{ asTarball{args} {{ id }} }} }}",
            lit(container)
        ));
        v["loadContainerFromID"]["asTarball"]["id"]
            .as_str()
            .expect("file id")
            .to_string()
    }

    fn file_digest(&self, file: &str) -> String {
        let v = self.engine.query_ok(&format!(
            "{{ loadFileFromID(id: {}) {{ digest(excludeMetadata: true) }} }}",
            lit(file)
        ));
        v["loadFileFromID"]["digest"].as_str().unwrap().to_string()
    }

    /// A busybox container with the tarball unpacked at /x, and what `script` printed there.
    fn inspect(&self, file: &str, script: &str) -> String {
        let v = self.engine.query_ok(&format!(
            r#"{{ container {{ from(address: {}) {{ withMountedFile(path: "/t/img.tar", source: {}) {{
                withExec(args: ["sh", "-c", {}]) {{ stdout }} }} }} }} }}"#,
            lit(&self.image),
            lit(file),
            lit(&format!(
                "set -e; mkdir /x; tar -xf /t/img.tar -C /x; cd /x; {script}"
            ))
        ));
        dig(
            &v,
            &["container", "from", "withMountedFile", "withExec", "stdout"],
        )
        .as_str()
        .unwrap()
        .to_string()
    }

    fn cat(&self, file: &str, path: &str) -> Value {
        let out = self.inspect(file, &format!("cat {path}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    }

    /// `{ <field> }` on the container imported from `file`.
    fn imported(&self, file: &str, tag: &str, fields: &str) -> Value {
        let v = self.engine.query_ok(&format!(
            "{{ container {{ import(source: {}, tag: {}) {{ {fields} }} }} }}",
            lit(file),
            lit(tag)
        ));
        v["container"]["import"].clone()
    }

    fn import_error(&self, file: &str) -> String {
        let v = self.engine.query(&format!(
            "{{ container {{ import(source: {}) {{ rootfs {{ entries }} }} }} }}",
            lit(file)
        ));
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error: {v}"))
            .to_string()
    }

    /// A file made from text (tars of ASCII files are text).
    fn text_file(&self, name: &str, contents: &[u8]) -> String {
        let text = std::str::from_utf8(contents).expect("an ASCII tarball");
        let v = self.engine.query_ok(&format!(
            "{{ file(name: {}, contents: {}) {{ id }} }}",
            lit(name),
            lit(text)
        ));
        v["file"]["id"].as_str().unwrap().to_string()
    }
}

fn blob_path(d: &str) -> String {
    format!("blobs/sha256/{}", d.strip_prefix("sha256:").unwrap())
}

/// Everything a loader relies on: layout files, digests, media types, config, diff ids,
/// whiteouts in the right layer, `manifest.json`.
fn check_structure(f: &Fixture, file: &str, layer_type: &str) -> Value {
    let layout = f.cat(file, "oci-layout");
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index = f.cat(file, "index.json");
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let mdesc = &manifests[0];
    assert_eq!(
        mdesc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    // Every blob's name is its sha256.
    let sums = f.inspect(
        file,
        "cd blobs/sha256; for b in *; do echo \"$b $(sha256sum $b | cut -d' ' -f1)\"; done",
    );
    let mut blobs = 0;
    for line in sums.lines() {
        let (name, sum) = line.split_once(' ').unwrap();
        assert_eq!(name, sum, "blob {name} has the wrong name");
        blobs += 1;
    }
    let manifest = f.cat(file, &blob_path(mdesc["digest"].as_str().unwrap()));
    assert_eq!(manifest["schemaVersion"], 2);
    let layers = manifest["layers"].as_array().unwrap();
    // busybox's layer, two execs, one new file.
    assert_eq!(layers.len(), 4, "{manifest}");
    assert_eq!(
        blobs,
        layers.len() + 2,
        "layers, config and manifest: {sums}"
    );
    for l in &layers[1..] {
        assert_eq!(l["mediaType"], layer_type, "{manifest}");
    }
    let config = f.cat(
        file,
        &blob_path(manifest["config"]["digest"].as_str().unwrap()),
    );
    let c = &config["config"];
    assert!(
        c["Env"].as_array().unwrap().contains(&json!("FOO=bar")),
        "{config}"
    );
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], json!(["cat /data/note"]));
    assert_eq!(c["WorkingDir"], "/data");
    assert_eq!(c["Labels"]["org.example"], "yes");
    assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(config["os"], "linux");
    assert!(config.get("created").is_none(), "no wall-clock time");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    assert_eq!(config["history"].as_array().unwrap().len(), layers.len());
    // Each layer uncompresses to its diff id.
    let decompress = match layer_type {
        t if t.ends_with("gzip") => "gunzip -c",
        t if t.ends_with("zstd") => "",
        _ => "cat",
    };
    if !decompress.is_empty() {
        for (l, d) in layers.iter().zip(diff_ids) {
            let out = f.inspect(
                file,
                &format!(
                    "{decompress} {} | sha256sum | cut -d' ' -f1",
                    blob_path(l["digest"].as_str().unwrap())
                ),
            );
            assert_eq!(
                format!("sha256:{}", out.trim()),
                d.as_str().unwrap(),
                "layer {l}"
            );
        }
        // The second exec's layer: whiteouts for what it removed, the new file and its link.
        let listing = f.inspect(
            file,
            &format!(
                "{decompress} {} | tar -tvf -",
                blob_path(layers[2]["digest"].as_str().unwrap())
            ),
        );
        for want in [
            "data/.wh.old",
            "data/.wh.gone-dir",
            "data/new",
            "data/new-link",
        ] {
            assert!(
                listing
                    .lines()
                    .any(|l| l.ends_with(want) || l.contains(&format!("{want} "))),
                "{want} missing from the layer: {listing}"
            );
        }
        assert!(
            listing.contains("data/new-link -> data/new")
                || listing.contains("data/new-link link to data/new")
                || listing.lines().any(|l| l.starts_with('h')),
            "the hard link is a link entry: {listing}"
        );
    }
    // docker load's view.
    let docker = f.cat(file, "manifest.json");
    let entry = &docker[0];
    assert_eq!(
        entry["Config"],
        blob_path(manifest["config"]["digest"].as_str().unwrap())
    );
    let docker_layers: Vec<String> = layers
        .iter()
        .map(|l| blob_path(l["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(entry["Layers"], json!(docker_layers));
    manifest
}

fn round_trip(snapshotter: &str) {
    require_root();
    let f = fixture(snapshotter);
    let ctr = f.built_id();
    let tar = f.tarball_id(&ctr, "");
    check_structure(&f, &tar, "application/vnd.oci.image.layer.v1.tar+gzip");

    // Import gives the same files and config.
    let v = f.imported(
        &tar,
        "",
        r#"envVariable(name: "FOO") entrypoint defaultArgs workdir
           withExec(args: ["sh", "-c", "cat /data/new /data/note; echo; ls /data; stat -c %a /data/note; stat -c %h /data/new"], useEntrypoint: false) { stdout }"#,
    );
    assert_eq!(v["envVariable"], "bar");
    assert_eq!(v["entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(v["defaultArgs"], json!(["cat /data/note"]));
    assert_eq!(v["workdir"], "/data");
    assert_eq!(
        v["withExec"]["stdout"],
        "new\na note\nnew\nnew-link\nnote\n600\n2\n"
    );

    // Exporting the imported container again gives the very same bytes: layers are reused as
    // imported, and the config and tar are deterministic.
    let again = f.imported(&tar, "", "id");
    let tar2 = f.tarball_id(again["id"].as_str().unwrap(), "");
    assert_eq!(f.file_digest(&tar), f.file_digest(&tar2));
}

#[test]
fn as_tarball_and_import_round_trip_overlay() {
    round_trip("overlayfs");
}

#[test]
fn as_tarball_and_import_round_trip_native() {
    round_trip("native");
}

#[test]
fn zstd_uncompressed_and_docker_media_types() {
    require_root();
    let f = fixture("overlayfs");
    let ctr = f.built_id();
    // Docker media types, with the layers not compressed before: gzip.
    let docker = f.tarball_id(&ctr, "mediaTypes: DockerMediaTypes");
    let index = f.cat(&docker, "index.json");
    let md = &index["manifests"][0];
    assert_eq!(
        md["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let manifest = f.cat(&docker, &blob_path(md["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        manifest["layers"][3]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let zstd = f.tarball_id(&ctr, "forcedCompression: Zstd");
    let m = check_structure(&f, &zstd, "application/vnd.oci.image.layer.v1.tar+zstd");
    // Even the pulled gzip layer was recompressed.
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let plain = f.tarball_id(&ctr, "forcedCompression: Uncompressed");
    let m = check_structure(&f, &plain, "application/vnd.oci.image.layer.v1.tar");
    // An uncompressed layer's digest is its diff id.
    let config = f.cat(&plain, &blob_path(m["config"]["digest"].as_str().unwrap()));
    for (l, d) in m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        assert_eq!(l["digest"], *d);
    }
    // Layers are made once per snapshot and compression: images of the same snapshots with
    // another config make none (the engine logs each layer it makes).
    let made = |f: &Fixture| f.engine.log().matches("layer made").count();
    let before = made(&f);
    assert!(
        before >= 3,
        "the execs' and the new file's layers were made"
    );
    let v = f.engine.query_ok(&format!(
        r#"{{ loadContainerFromID(id: {}) {{ withLabel(name: "again", value: "1") {{ id }} }} }}"#,
        lit(&ctr)
    ));
    let relabeled = v["loadContainerFromID"]["withLabel"]["id"]
        .as_str()
        .unwrap();
    for args in [
        "",
        "forcedCompression: Zstd",
        "forcedCompression: Uncompressed",
        "forcedCompression: Gzip, mediaTypes: DockerMediaTypes",
    ] {
        let t = f.tarball_id(relabeled, args);
        f.file_digest(&t);
    }
    assert_eq!(made(&f), before, "no layer was made twice");
    // The enum aliases mean the same.
    let aliased = f.tarball_id(&ctr, "forcedCompression: ZSTD, mediaTypes: OCI");
    assert_eq!(f.file_digest(&aliased), f.file_digest(&zstd));

    // Every flavour imports back (the importer verifies digests and diff ids).
    for t in [&zstd, &plain, &docker] {
        let v = f.imported(
            t,
            "",
            r#"withExec(args: ["cat", "/data/new"], useEntrypoint: false) { stdout }"#,
        );
        assert_eq!(v["withExec"]["stdout"], "new\n");
    }
}

/// A tar of `(name, bytes)` files.
fn tar_files(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let specs: Vec<FileSpec> = files
        .iter()
        .map(|(n, b)| FileSpec::new(n, b.clone()))
        .collect();
    tar_of(&specs)
}

fn docker_save(manifest: Value, layers: &[(&str, Vec<u8>)], config: &[u8]) -> Vec<u8> {
    let mut files = vec![
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("cfg.json", config.to_vec()),
    ];
    files.extend(layers.iter().cloned());
    tar_files(&files)
}

#[test]
fn import_docker_save_tarball() {
    require_root();
    let f = fixture("overlayfs");
    let l1 = tar_of(&[
        FileSpec::new("bin/hello", "hello from layer one\n"),
        FileSpec::new("etc/removed", "r"),
    ]);
    let l2 = tar_of(&[
        FileSpec::new("etc/.wh.removed", ""),
        FileSpec::new("etc/added", "two\n"),
    ]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "SAVED=yes"], "Cmd": ["/bin/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&l1).to_string(), Digest::of(&l2).to_string()]},
    }))
    .unwrap();
    let save = docker_save(
        json!([{"Config": "cfg.json", "RepoTags": ["example.com/app:v1"],
                "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]),
        &[("aaa/layer.tar", l1.clone()), ("bbb/layer.tar", l2.clone())],
        &config,
    );
    let file = f.text_file("save.tar", &save);
    // Read the files through a directory: the image has no shell.
    let v = f.imported(
        &file,
        "example.com/app:v1",
        r#"envVariable(name: "SAVED") defaultArgs
           rootfs { entries(path: "/etc") file(path: "/bin/hello") { contents } }"#,
    );
    assert_eq!(v["envVariable"], "yes");
    assert_eq!(v["defaultArgs"], json!(["/bin/hello"]));
    assert_eq!(v["rootfs"]["entries"], json!(["added"]));
    assert_eq!(v["rootfs"]["file"]["contents"], "hello from layer one\n");

    // A tag that is not in the tarball.
    let err = f.engine.query(&format!(
        "{{ container {{ import(source: {}, tag: \"other:v2\") {{ id rootfs {{ entries }} }} }} }}",
        lit(&file)
    ));
    let msg = err["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("other:v2"), "{err}");
}

#[test]
fn hostile_tarballs_are_refused() {
    require_root();
    let f = fixture("overlayfs");
    let layer = tar_of(&[FileSpec::new("f", "x")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]},
    }))
    .unwrap();

    // A layout blob whose bytes are not its name.
    let layer_digest = Digest::of(&layer);
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    let index = |extra: &str| {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{}}}]}}{extra}"#,
            manifest.len()
        )
        .into_bytes()
    };
    let mut evil = layer.clone();
    let last = evil.len() - 2000;
    evil[last] = b'Z'; // inside the zero padding: same size, other bytes
    let layout = |layer_bytes: Vec<u8>, with_layer: bool, index_bytes: Vec<u8>| {
        let mut files = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", index_bytes),
        ];
        let mpath = blob_path(&manifest_digest.to_string());
        let cpath = blob_path(&config_digest.to_string());
        let lpath = blob_path(&layer_digest.to_string());
        let mut owned = vec![(mpath, manifest.clone()), (cpath, config.clone())];
        if with_layer {
            owned.push((lpath, layer_bytes));
        }
        let owned_refs: Vec<(&str, Vec<u8>)> =
            owned.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
        files.extend(owned_refs);
        tar_files(&files)
    };

    let bad = f.text_file("bad.tar", &layout(evil, true, index("")));
    let msg = f.import_error(&bad);
    assert!(msg.contains("does not match its digest"), "{msg}");

    let missing = f.text_file("missing.tar", &layout(layer.clone(), false, index("")));
    let msg = f.import_error(&missing);
    assert!(msg.contains("missing"), "{msg}");

    // A layer path that climbs out of the tarball (docker save format).
    let climb = docker_save(
        json!([{"Config": "cfg.json", "Layers": ["../../etc/passwd"]}]),
        &[],
        &config,
    );
    let climb = f.text_file("climb.tar", &climb);
    let msg = f.import_error(&climb);
    assert!(msg.contains("leaves the tarball"), "{msg}");

    // A huge index.json.
    let huge = index(&" ".repeat(5 << 20));
    let huge = f.text_file("huge.tar", &layout(layer.clone(), true, huge));
    let msg = f.import_error(&huge);
    assert!(msg.contains("more than"), "{msg}");

    // Not an image at all.
    let junk = f.text_file("junk.tar", &tar_files(&[("hello.txt", b"hi".to_vec())]));
    let msg = f.import_error(&junk);
    assert!(msg.contains("not an image tarball"), "{msg}");

    // After all that, the well-formed tarball imports: nothing half-written is in the way.
    let good = f.text_file("good.tar", &layout(layer.clone(), true, index("")));
    let v = f.imported(&good, "", r#"rootfs { file(path: "f") { contents } }"#);
    assert_eq!(v["rootfs"]["file"]["contents"], "x");
}

/// The one `container.tar` the engine wrote under its state directory (tests read the state
/// directory of their private engine; clients get the file through `File`).
fn tarball_on_disk(engine: &Engine) -> std::path::PathBuf {
    let mut found = Vec::new();
    for e in std::fs::read_dir(engine.root.join("snapshots")).unwrap() {
        let p = e.unwrap().path().join("fs/container.tar");
        if p.is_file() {
            found.push(p);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[test]
fn skopeo_and_podman_read_the_tarball() {
    require_root();
    let skopeo = dagger_integration_tests::registry::require_binary("skopeo", "skopeo");
    let podman = dagger_integration_tests::registry::require_binary("podman", "podman");
    let f = fixture("overlayfs");
    let ctr = f.built_id();
    let tar = f.tarball_id(&ctr, "");
    f.file_digest(&tar); // evaluates it
    let path = tarball_on_disk(&f.engine);

    // A private podman store; its empty registries.conf serves skopeo too.
    let store = PodmanStore::new(&podman);
    let d = store.dir.path();
    let out = dagger_integration_tests::registry::run(
        std::process::Command::new(&skopeo)
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", path.display())),
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("FOO=bar")),
        "{config}"
    );
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);

    // podman load (it reads manifest.json or the layout) and run, in the private store.
    let podman_cmd = |args: &[&str]| store.command(args);
    let loaded = dagger_integration_tests::registry::run(&mut podman_cmd(&[
        "load",
        "--quiet",
        "-i",
        path.to_str().unwrap(),
    ]));
    let loaded = String::from_utf8_lossy(&loaded.stdout);
    let image = loaded
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let out = dagger_integration_tests::registry::run(&mut podman_cmd(&[
        "run",
        "--rm",
        "--network=none",
        &image,
        "cat /data/new /data/note; echo; echo $FOO; pwd",
    ]));
    let _ = dagger_integration_tests::registry::run(&mut podman_cmd(&["rmi", "--all", "--force"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "new\na note\nbar\n/data\n",
        "podman ran the image with its entrypoint, env and workdir"
    );
}

#[test]
fn multi_platform_tarball_imports_per_platform() {
    require_root();
    let f = fixture("overlayfs");
    let ctr = f.built_id();
    let v = f.engine.query_ok(
        r#"{ container(platform: "linux/arm64") { withNewFile(path: "/arch", contents: "arm64") { id } } }"#,
    );
    let arm = v["container"]["withNewFile"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tar = f.tarball_id(&ctr, &format!("platformVariants: [{}]", lit(&arm)));
    let index = f.cat(&tar, "index.json");
    let root = &index["manifests"][0];
    assert_eq!(root["mediaType"], "application/vnd.oci.image.index.v1+json");
    let inner = f.cat(&tar, &blob_path(root["digest"].as_str().unwrap()));
    let platforms = index_platforms(&inner);
    assert_eq!(platforms.len(), 2);
    assert!(
        platforms.contains(&"linux/arm64".to_string()),
        "{platforms:?}"
    );

    // The container's platform picks the image.
    let v = f.engine.query_ok(&format!(
        r#"{{ container(platform: "linux/arm64") {{ import(source: {}) {{ platform rootfs {{ file(path: "/arch") {{ contents }} }} }} }} }}"#,
        lit(&tar)
    ));
    assert_eq!(
        v["container"]["import"]["rootfs"]["file"]["contents"],
        "arm64"
    );
    let v = f.imported(&tar, "", r#"rootfs { entries(path: "/data") }"#);
    assert_eq!(v["rootfs"]["entries"], json!(["new", "new-link", "note"]));
    let v = f.engine.query(&format!(
        r#"{{ container(platform: "linux/s390x") {{ import(source: {}) {{ rootfs {{ entries }} }} }} }}"#,
        lit(&tar)
    ));
    let msg = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("no image for platform linux/s390x"), "{v}");
}

#[test]
fn layer_blobs_belong_to_their_snapshots_for_gc() {
    require_root();
    let f = fixture("overlayfs");
    let ctr = f.built_id();
    let tar = f.tarball_id(&ctr, "forcedCompression: Zstd");
    let index = f.cat(&tar, "index.json");
    let manifest = f.cat(
        &tar,
        &blob_path(index["manifests"][0]["digest"].as_str().unwrap()),
    );
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let blob_file = |d: &str| {
        f.engine
            .root
            .join("content/blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    for l in &layers {
        assert!(blob_file(l).is_file(), "layer {l} is in the content store");
    }
    // While their snapshots exist, the layer blobs are not entries of their own.
    let set = f
        .engine
        .query_ok("{ engine { localCache { entrySet { entries { description } } } } }");
    let text = set.to_string();
    for l in &layers {
        assert!(
            !text.contains(&format!("blob {l}")),
            "{l} is attached: {text}"
        );
    }
    // Pruning everything removes the snapshots and their layer blobs.
    f.engine.query_ok("{ engine { localCache { prune } } }");
    for l in &layers {
        assert!(
            !blob_file(l).exists(),
            "layer {l} was removed with its snapshot"
        );
    }
}

#[test]
fn import_a_docker_save_tarball_made_by_busybox_tar() {
    require_root();
    let f = fixture("overlayfs");
    // A docker save tarball made with busybox's tar and gzip: a binary layer (busybox itself)
    // and a gzip-compressed one, legacy `<id>/layer.tar` paths.
    let script = r#"set -e
mkdir -p /src1/bin /src2 /out/aaa /out/bbb
cp /bin/busybox /src1/bin/busybox
echo two > /src2/two
cd /src1 && tar -cf /out/aaa/layer.tar bin
cd /src2 && tar -cf /tmp/l2.tar two && gzip -c /tmp/l2.tar > /out/bbb/layer.tar.gz
d1=$(sha256sum /out/aaa/layer.tar | cut -d' ' -f1)
d2=$(sha256sum /tmp/l2.tar | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","MADE=busybox"],"Cmd":["/bin/busybox","cat","/two"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]}}' $d1 $d2 > /out/cfg.json
printf '[{"Config":"cfg.json","RepoTags":["local/busy:1"],"Layers":["aaa/layer.tar","bbb/layer.tar.gz"]}]' > /out/manifest.json
cd /out && tar -cf /save.tar manifest.json cfg.json aaa bbb"#;
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: {}) {{ withExec(args: ["sh", "-c", {}]) {{ file(path: "/save.tar") {{ id }} }} }} }} }}"#,
        lit(&f.image),
        lit(script)
    ));
    let file = dig(&v, &["container", "from", "withExec", "file", "id"]);
    let v = f.imported(
        file.as_str().unwrap(),
        "local/busy:1",
        r#"envVariable(name: "MADE") withExec(args: ["/bin/busybox", "cat", "/two"]) { stdout }"#,
    );
    assert_eq!(v["envVariable"], "busybox");
    assert_eq!(v["withExec"]["stdout"], "two\n");
}
