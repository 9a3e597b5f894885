//! The solver through GraphQL: lazy evaluation, caching across queries and restarts,
//! deduplication of concurrent work, IDs, cache volumes and secrets.

use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use dagger_integration_tests::*;
use std::sync::Arc;

struct Fixture {
    _reg: TestRegistry,
    engine: Engine,
    image: String,
}

fn fixture(root: Option<std::path::PathBuf>) -> (TestRegistry, String, EngineOptions) {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "busybox:1", Format::Oci, None);
    let image = format!("{}/busybox:1", reg.addr);
    (
        reg,
        image,
        EngineOptions {
            root,
            ..Default::default()
        },
    )
}

fn start() -> Fixture {
    let (reg, image, opts) = fixture(None);
    Fixture {
        _reg: reg,
        engine: Engine::start(opts),
        image,
    }
}

/// A chain that appends one line to a cache volume, then reads the volume with a different
/// exec (so the read itself is never cached).
fn append_and_count(image: &str, volume: &str, tag: &str, nonce: u32) -> String {
    format!(
        r#"{{ container {{ from(address: "{image}") {{
            withMountedCache(path: "/cache", cache: "{volume}") {{
              withExec(args: ["sh", "-c", "echo {tag} >> /cache/log"]) {{
                withExec(args: ["sh", "-c", "grep -c {tag} /cache/log; echo {nonce} > /dev/null"]) {{ stdout }} }} }} }} }} }}"#
    )
}

fn volume_id(engine: &Engine, key: &str) -> String {
    engine.query_ok(&format!(r#"{{ cacheVolume(key: "{key}") {{ id }} }}"#))["cacheVolume"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn count(v: &serde_json::Value) -> u32 {
    v["container"]["from"]["withMountedCache"]["withExec"]["withExec"]["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_chain_sent_three_times_runs_its_exec_once() {
    let f = start();
    let vol = volume_id(&f.engine, "thrice");
    for nonce in 0..3 {
        let v = f
            .engine
            .query_ok(&append_and_count(&f.image, &vol, "once", nonce));
        assert_eq!(count(&v), 1, "run {nonce}");
    }
}

#[test]
fn sixty_four_identical_concurrent_queries_run_the_exec_once() {
    let f = Arc::new(start());
    let vol = volume_id(&f.engine, "concurrent");
    // Warm the image so the race is about the exec.
    f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ rootfs {{ entries }} }} }} }}"#,
        f.image
    ));
    let q = format!(
        r#"{{ container {{ from(address: "{}") {{ withMountedCache(path: "/cache", cache: "{vol}") {{
            withExec(args: ["sh", "-c", "echo hit >> /cache/log; sleep 0.3; echo done"]) {{ stdout }} }} }} }} }}"#,
        f.image
    );
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (f, q) = (f.clone(), q.clone());
            std::thread::spawn(move || f.engine.query_ok(&q))
        })
        .collect();
    for t in threads {
        let v = t.join().unwrap();
        assert_eq!(
            v["container"]["from"]["withMountedCache"]["withExec"]["stdout"],
            "done\n"
        );
    }
    let v = f
        .engine
        .query_ok(&append_and_count(&f.image, &vol, "hit", 99));
    // One line from the 64 identical queries, one from this check's own append.
    assert_eq!(count(&v), 2);
}

#[test]
fn ids_are_stable_and_survive_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("state");
    let (_reg, image, opts) = fixture(Some(root.clone()));
    let mut engine = Engine::start(opts);
    let vol = volume_id(&engine, "restart");
    let chain = format!(
        r#"container {{ from(address: "{image}") {{ withMountedCache(path: "/cache", cache: "{vol}") {{
            withExec(args: ["sh", "-c", "echo run >> /cache/log; echo out"]) {{ id }} }} }} }}"#
    );
    let id1 = engine.query_ok(&format!("{{ {chain} }}"))["container"]["from"]["withMountedCache"]
        ["withExec"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id2 = engine.query_ok(&format!("{{ {chain} }}"))["container"]["from"]["withMountedCache"]
        ["withExec"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id1, id2, "same pipeline, same ID");
    assert!(id1.parse::<i64>().is_err());
    // Asking for an id runs nothing: the volume is still empty.
    let v = engine.query_ok(&format!(
        r#"{{ loadContainerFromID(id: "{id1}") {{ withExec(args: ["sh", "-c", "cat /cache/log 2>/dev/null | wc -l"]) {{ stdout }} }} }}"#
    ));
    assert_eq!(
        v["loadContainerFromID"]["withExec"]["stdout"]
            .as_str()
            .unwrap()
            .trim(),
        "1"
    );
    assert!(engine.terminate().success());

    let engine = Engine::start(EngineOptions {
        root: Some(root),
        ..Default::default()
    });
    let v = engine.query_ok(&format!(
        r#"{{ loadContainerFromID(id: "{id1}") {{ stdout }}
             node(id: "{id1}") {{ ... on Container {{ exitCode }} }} }}"#
    ));
    assert_eq!(v["loadContainerFromID"]["stdout"], "out\n");
    assert_eq!(v["node"]["exitCode"], 0);
    let v = engine.query_ok(&format!(
        r#"{{ loadContainerFromID(id: "{id1}") {{ withExec(args: ["sh", "-c", "wc -l < /cache/log"]) {{ stdout }} }} }}"#
    ));
    assert_eq!(
        v["loadContainerFromID"]["withExec"]["stdout"]
            .as_str()
            .unwrap()
            .trim(),
        "1",
        "the cached exec did not run again after the restart"
    );
}

#[test]
fn sync_node_and_value_ids() {
    let f = start();
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ withEnvVariable(name: "A", value: "1") {{
            sync envVariables {{ id name value }} }} }} }} }}"#,
        f.image
    ));
    let c = &v["container"]["from"]["withEnvVariable"];
    let id = c["sync"].as_str().unwrap();
    let env_id = c["envVariables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "A")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = f.engine.query_ok(&format!(
        r#"{{ a: node(id: "{id}") {{ ... on Container {{ envVariable(name: "A") }} }}
             b: node(id: "{env_id}") {{ ... on EnvVariable {{ name value }} }} }}"#
    ));
    assert_eq!(v["a"]["envVariable"], "1");
    assert_eq!(v["b"]["value"], "1");
    let v = f.engine.query(r#"{ node(id: "Container:!!") { id } }"#);
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "INVALID_ARGUMENT",
        "{v}"
    );
    // A failing exec fails at the leaf, not when its ID is taken (evaluation is lazy).
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ withExec(args: ["false"]) {{ id }} }} }} }}"#,
        f.image
    ));
    assert!(v["container"]["from"]["withExec"]["id"].is_string());
}

fn sharing_run(f: &Arc<Fixture>, vol: &str, mode: &str, script: &str, n: usize) -> Vec<String> {
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            let q = format!(
                r#"{{ container {{ from(address: "{}") {{ withMountedCache(path: "/cache", cache: "{vol}", sharing: {mode}) {{
                    withExec(args: ["sh", "-c", "{script}", "{i}"]) {{ stdout }} }} }} }} }}"#,
                f.image
            );
            std::thread::spawn(move || {
                f.engine.query_ok(&q)["container"]["from"]["withMountedCache"]["withExec"]["stdout"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn cache_volume_sharing_modes() {
    let f = Arc::new(start());
    f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ rootfs {{ entries }} }} }} }}"#,
        f.image
    ));
    // SHARED: concurrent execs see each other's files.
    let vol = volume_id(&f.engine, "shared");
    let out = sharing_run(
        &f,
        &vol,
        "SHARED",
        "touch /cache/m$0; sleep 1; ls /cache | wc -l",
        2,
    );
    assert!(out.iter().all(|o| o.trim() == "2"), "{out:?}");
    // PRIVATE: concurrent execs each get their own directory.
    let vol = volume_id(&f.engine, "private");
    let out = sharing_run(
        &f,
        &vol,
        "PRIVATE",
        "touch /cache/m$0; sleep 1; ls /cache | wc -l",
        2,
    );
    assert!(out.iter().all(|o| o.trim() == "1"), "{out:?}");
    // LOCKED: execs take turns: no interleaving of start/end.
    let vol = volume_id(&f.engine, "locked");
    sharing_run(
        &f,
        &vol,
        "LOCKED",
        "echo start$0 >> /cache/log; sleep 0.5; echo end$0 >> /cache/log",
        3,
    );
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ withMountedCache(path: "/cache", cache: "{vol}") {{
            withExec(args: ["cat", "/cache/log"]) {{ stdout }} }} }} }} }}"#,
        f.image
    ));
    let log: Vec<String> = v["container"]["from"]["withMountedCache"]["withExec"]["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(log.len(), 6, "{log:?}");
    for pair in log.chunks(2) {
        assert_eq!(
            pair[0].replace("start", ""),
            pair[1].replace("end", ""),
            "{log:?}"
        );
    }
}

#[test]
fn secrets_never_leak() {
    let f = start();
    let secret = "s3cr3t-Value-91827";
    let sid = f.engine.query_ok(&format!(
        r#"{{ setSecret(name: "token", plaintext: "{secret}") {{ id }} }}"#
    ))["setSecret"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!sid.contains(secret));
    let decoded: serde_json::Value = dagger_engine::solver::id::decode("Secret", &sid).unwrap();
    assert!(!decoded.to_string().contains(secret), "{decoded}");
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{
            withSecretVariable(name: "TOKEN", secret: "{sid}") {{
              withMountedSecret(path: "/run/secret", source: "{sid}") {{
                check: withExec(args: ["sh", "-c", "test \"$TOKEN\" = {secret} && test \"$(cat /run/secret)\" = {secret} && echo match"]) {{ stdout }}
                echo: withExec(args: ["sh", "-c", "echo $TOKEN; cat /run/secret"]) {{ stdout id }}
                mode: withExec(args: ["stat", "-c", "%a", "/run/secret"]) {{ stdout }}
                envVariables {{ name }} }} }} }} }} }}"#,
        f.image
    ));
    let c = &v["container"]["from"]["withSecretVariable"]["withMountedSecret"];
    assert_eq!(c["check"]["stdout"], "match\n");
    assert_eq!(c["echo"]["stdout"], "***\n***");
    assert_eq!(c["mode"]["stdout"], "400\n");
    assert!(
        !c["envVariables"].to_string().contains("TOKEN"),
        "secret env is not image env"
    );
    let exec_id = c["echo"]["id"].as_str().unwrap();
    let decoded: serde_json::Value =
        dagger_engine::solver::id::decode("Container", exec_id).unwrap();
    assert!(!decoded.to_string().contains(secret));
    let v = f.engine.query(&format!(
        r#"{{ container {{ from(address: "{}") {{ withSecretVariable(name: "TOKEN", secret: "{sid}") {{
            withExec(args: ["sh", "-c", "echo $TOKEN; echo $TOKEN >&2; exit 1"]) {{ stdout }} }} }} }} }}"#,
        f.image
    ));
    let err = v["errors"][0].to_string();
    assert!(err.contains("EXEC_ERROR") && !err.contains(secret), "{err}");
    let log = f.engine.log();
    assert!(!log.contains(secret), "secret in the engine log");
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", secret])
        .arg(&f.engine.root)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "secret found in state files: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn mounted_directories_files_and_temp() {
    let f = start();
    let dir_id = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ directory(path: "/etc") {{ id }} }} }} }}"#,
        f.image
    ))["container"]["from"]["directory"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file_id = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{ file(path: "/etc/passwd") {{ id }} }} }} }}"#,
        f.image
    ))["container"]["from"]["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = f.engine.query_ok(&format!(
        r#"{{ container {{ from(address: "{}") {{
            withMountedDirectory(path: "/mnt/etc", source: "{dir_id}") {{
              withMountedFile(path: "/mnt/passwd", source: "{file_id}") {{
                withMountedTemp(path: "/scratch") {{
                  mounts
                  withExec(args: ["sh", "-c", "cat /mnt/etc/passwd /mnt/passwd; touch /mnt/etc/new /scratch/t; grep -c ' /scratch ' /proc/mounts"]) {{
                    after: withExec(args: ["sh", "-c", "ls /mnt/etc/new /scratch/t 2>&1 | wc -l"]) {{ stdout }}
                    stdout
                    withoutMount(path: "/scratch") {{ mounts }} }} }} }} }} }} }} }}"#,
        f.image
    ));
    let c = &v["container"]["from"]["withMountedDirectory"]["withMountedFile"]["withMountedTemp"];
    assert_eq!(
        c["mounts"],
        serde_json::json!(["/mnt/etc", "/mnt/passwd", "/scratch"])
    );
    let out = c["withExec"]["stdout"].as_str().unwrap();
    assert_eq!(out.matches("root:x:0:0").count(), 2, "{out}");
    assert!(out.trim_end().ends_with('1'), "tmpfs at /scratch: {out}");
    assert_eq!(
        c["withExec"]["withoutMount"]["mounts"],
        serde_json::json!(["/mnt/etc", "/mnt/passwd"])
    );
}

/// SDKs send a pipeline as one nested selection per call; a long chain must not exhaust the
/// engine's stack (each level is a resolver future inside the previous one).
#[test]
fn deeply_nested_queries_resolve() {
    let engine = Engine::start(EngineOptions::default());
    // Close to the parser's fixed ceiling of 64 nested fields (async-graphql's schema default
    // of 32 levels would refuse this).
    let depth = 58;
    let mut query = String::from("{ container ");
    for i in 0..depth {
        query.push_str(&format!(
            "{{ withEnvVariable(name: \"V{i}\", value: \"{i}\") "
        ));
    }
    query.push_str(&format!(
        "{{ withNewFile(path: \"/x\", contents: \"deep\") {{ file(path: \"/x\") {{ contents }} envVariable(name: \"V{}\") }}",
        depth - 1
    ));
    query.push_str(&"}".repeat(depth + 2));
    let v = engine.query_ok(&query);
    let mut cur = &v["container"];
    for _ in 0..depth {
        cur = &cur["withEnvVariable"];
    }
    assert_eq!(cur["withNewFile"]["file"]["contents"], "deep");
    assert_eq!(cur["withNewFile"]["envVariable"], format!("{}", depth - 1));
}
