//! Local cache management on the real engine: `engine.localCache` entries and `prune`, the
//! space policies, and that nothing in use is ever collected (anchors L4, C.3).

use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use dagger_integration_tests::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const ENTRY_SET: &str = r#"{ engine { localCache { entrySet {
    entryCount diskSpaceBytes
    entries { description diskSpaceBytes activelyUsed recordType createdTimeUnixNano mostRecentUseTimeUnixNano } } } } }"#;

fn registry() -> (TestRegistry, String) {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::BUSYBOX, &reg, "busybox:1", Format::Oci, None);
    let image = format!("{}/busybox:1", reg.addr);
    (reg, image)
}

/// An exec that writes ~3 MB into its rootfs and prints a fresh UUID: the same output twice
/// means the result came from the cache, a different one that it was computed again.
fn big_exec(image: &str, tag: &str) -> String {
    format!(
        r#"{{ container {{ from(address: "{image}") {{ withExec(args: ["sh", "-c", "head -c 3000000 /dev/urandom > /big-{tag}; cat /proc/sys/kernel/random/uuid"]) {{ stdout }} }} }} }}"#
    )
}

fn stdout(v: &Value) -> String {
    v["container"]["from"]["withExec"]["stdout"]
        .as_str()
        .unwrap_or_else(|| panic!("no stdout in {v}"))
        .to_string()
}

fn entry_set(engine: &Engine) -> Value {
    engine.query_ok(ENTRY_SET)["engine"]["localCache"]["entrySet"].clone()
}

fn entries(set: &Value) -> Vec<Value> {
    set["entries"].as_array().unwrap().clone()
}

fn described(set: &Value, needle: &str) -> Option<Value> {
    entries(set)
        .into_iter()
        .find(|e| e["description"].as_str().unwrap().contains(needle))
}

/// Bytes allocated under `root` (each inode once, like `du -x`), leaving out `metadata/`:
/// SQLite's write-ahead log grows and shrinks on its own schedule.
fn disk_usage(root: &Path) -> u64 {
    let dev = std::fs::metadata(root).unwrap().dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in list.flatten() {
            let Ok(m) = e.metadata() else { continue };
            // Exec roots are overlay mounts under tmp/: their files are counted where they live.
            if m.dev() != dev || (dir == root && e.file_name() == "metadata") {
                continue;
            }
            if seen.insert(m.ino()) {
                total += m.blocks() * 512;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The entry set is consistent with itself: the count and the total match the entries.
fn check_totals(set: &Value) {
    let list = entries(set);
    assert_eq!(set["entryCount"].as_u64().unwrap() as usize, list.len());
    let sum: u64 = list
        .iter()
        .map(|e| e["diskSpaceBytes"].as_u64().unwrap())
        .sum();
    assert_eq!(set["diskSpaceBytes"].as_u64().unwrap(), sum, "{set}");
    for e in &list {
        let created = e["createdTimeUnixNano"].as_i64().unwrap();
        let used = e["mostRecentUseTimeUnixNano"].as_i64().unwrap();
        assert!(created > 0 && used >= created - 1_000_000, "{e}");
    }
}

/// L4: with `maxUsedSpace = "1MB"`, the default policy removes old unused results, but never
/// what a running exec holds; the exec finishes, space is freed, and pipelines recompute.
#[test]
fn tiny_max_used_space_prunes_old_results_but_never_what_is_in_use() {
    let (_reg, image) = registry();
    let engine = Engine::start(EngineOptions {
        config: Some("[worker.oci]\nmaxUsedSpace = \"1MB\"\n".into()),
        ..Default::default()
    });
    let old = stdout(&engine.query_ok(&big_exec(&image, "old")));
    assert_eq!(
        stdout(&engine.query_ok(&big_exec(&image, "old"))),
        old,
        "the second run is cached"
    );
    let before = entry_set(&engine);
    check_totals(&before);
    let old_entry = described(&before, "head -c 3000000").expect("the exec's entry");
    assert!(old_entry["diskSpaceBytes"].as_u64().unwrap() >= 3_000_000);
    assert_eq!(old_entry["recordType"], "regular");
    let layer = described(&before, "pulled from").expect("the image's entry");
    assert_eq!(layer["recordType"], "regular");
    let du_before = disk_usage(&engine.root);

    // A long exec on the same image holds the image's layer while it runs.
    let socket = engine.socket.clone();
    let sleeper = format!(
        r#"{{ container {{ from(address: "{image}") {{ withExec(args: ["sh", "-c", "sleep 5; echo done"]) {{ stdout }} }} }} }}"#
    );
    let running = std::thread::spawn(move || {
        let r = post_unix(&socket, "/query", &gql(&sleeper)).unwrap().json();
        (r, Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let set = entry_set(&engine);
        if entries(&set).iter().any(|e| e["activelyUsed"] == true) {
            let held = described(&set, "pulled from").unwrap();
            assert_eq!(held["activelyUsed"], true, "{set}");
            break;
        }
        assert!(Instant::now() < deadline, "the exec never started: {set}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let pruned = engine.query_ok("{ engine { localCache { prune(useDefaultPolicy: true) } } }");
    assert_eq!(pruned["engine"]["localCache"]["prune"], Value::Null);
    let pruned_at = Instant::now();
    let after = entry_set(&engine);
    check_totals(&after);
    assert!(
        described(&after, "head -c 3000000").is_none(),
        "the old result is gone: {after}"
    );
    assert!(
        described(&after, "pulled from").is_some(),
        "the running exec's parent layer survives: {after}"
    );
    assert!(
        after["diskSpaceBytes"].as_u64().unwrap()
            < before["diskSpaceBytes"].as_u64().unwrap() - 2_500_000,
        "before {before}\nafter {after}"
    );
    let du_after = disk_usage(&engine.root);
    assert!(
        du_after + 2_500_000 < du_before,
        "the state directory shrank: {du_before} -> {du_after}"
    );

    let (result, finished_at) = running.join().unwrap();
    assert!(result.get("errors").is_none(), "{result}");
    assert_eq!(
        result["data"]["container"]["from"]["withExec"]["stdout"],
        "done\n"
    );
    assert!(
        finished_at > pruned_at,
        "the prune ran while the exec was running"
    );

    // The pipeline still works, and was computed again.
    let again = stdout(&engine.query_ok(&big_exec(&image, "old")));
    assert_ne!(again, old, "a pruned result is recomputed");
    let log = engine.log();
    assert!(
        log.lines()
            .any(|l| l.contains("gc: removed") && l.contains("freed") && l.contains("prune")),
        "{log}"
    );
}

/// `engine.localCache`: limits, entries of every kind, a reserve that keeps everything,
/// `prune()` emptying the cache, and the state directory after it.
#[test]
fn entries_limits_and_prune_everything() {
    let (_reg, image) = registry();
    let engine = Engine::start(EngineOptions::default());
    let cache = engine.query_ok(
        "{ engine { name localCache { maxUsedSpace reservedSpace minFreeSpace targetSpace } } }",
    );
    assert!(!cache["engine"]["name"].as_str().unwrap().is_empty());
    let limits = &cache["engine"]["localCache"];
    // The defaults: 75% of the disk, min(10% of it, 10 GB), 20% of it.
    assert!(limits["maxUsedSpace"].as_i64().unwrap() > limits["minFreeSpace"].as_i64().unwrap());
    let reserved = limits["reservedSpace"].as_i64().unwrap();
    assert!(reserved > 0 && reserved <= 10_000_000_000, "{limits}");
    assert_eq!(limits["targetSpace"], 0);

    let vol = engine.query_ok(r#"{ cacheVolume(key: "gc-volume") { id } }"#)["cacheVolume"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pipeline = format!(
        r#"{{ container {{ from(address: "{image}") {{ withMountedCache(path: "/c", cache: "{vol}") {{
            withExec(args: ["sh", "-c", "head -c 100000 /dev/urandom > /c/data; echo ok"]) {{ stdout }} }} }} }} }}"#
    );
    let out = engine.query_ok(&pipeline);
    assert_eq!(
        out["container"]["from"]["withMountedCache"]["withExec"]["stdout"],
        "ok\n"
    );
    let set = entry_set(&engine);
    check_totals(&set);
    let volume = described(&set, "cache volume gc-volume").expect("the cache volume");
    assert_eq!(volume["recordType"], "exec.cachemount");
    assert_eq!(volume["activelyUsed"], false);
    assert!(volume["diskSpaceBytes"].as_u64().unwrap() >= 100_000);
    assert!(described(&set, "pulled from").is_some(), "{set}");
    assert!(
        described(&set, "mount / from exec sh -c").is_some(),
        "{set}"
    );
    let count = set["entryCount"].as_u64().unwrap();

    // A reserve larger than the cache keeps all of it.
    engine.query_ok(
        r#"{ engine { localCache { prune(maxUsedSpace: "1", reservedSpace: "1GB") } } }"#,
    );
    assert_eq!(entry_set(&engine)["entryCount"].as_u64().unwrap(), count);

    let bad = engine.query(r#"{ engine { localCache { prune(maxUsedSpace: "lots") } } }"#);
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "INVALID_ARGUMENT",
        "{bad}"
    );

    engine.query_ok("{ engine { localCache { prune } } }");
    let empty = entry_set(&engine);
    assert_eq!(empty["entryCount"], 0, "{empty}");
    assert_eq!(empty["diskSpaceBytes"], 0);
    for dir in ["snapshots", "content/blobs/sha256", "cachemounts"] {
        let path = engine.root.join(dir);
        let left: Vec<_> = std::fs::read_dir(&path)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} still holds {left:?}", path.display());
    }

    // Everything comes back on demand (the image is pulled again, the volume starts empty).
    let again = engine.query_ok(&pipeline);
    assert_eq!(
        again["container"]["from"]["withMountedCache"]["withExec"]["stdout"],
        "ok\n"
    );
}

/// The start-up run applies the policies to what an earlier run left; `gc = false` turns
/// automatic collection off.
#[test]
fn startup_collection_and_gc_false() {
    let (_reg, image) = registry();
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("state");
    let start = |gc: bool| {
        Engine::start(EngineOptions {
            root: Some(root.clone()),
            config: Some(format!("[worker.oci]\ngc = {gc}\nmaxUsedSpace = \"1MB\"\n")),
            ..Default::default()
        })
    };

    let mut engine = start(false);
    let first = stdout(&engine.query_ok(&big_exec(&image, "restart")));
    let limits = engine.query_ok("{ engine { localCache { maxUsedSpace } } }");
    assert_eq!(limits["engine"]["localCache"]["maxUsedSpace"], 0);
    engine.terminate();
    assert!(engine.log().contains("automatic garbage collection is off"));

    let mut engine = start(false);
    assert_eq!(
        stdout(&engine.query_ok(&big_exec(&image, "restart"))),
        first,
        "nothing was collected"
    );
    engine.terminate();
    assert!(!engine.log().contains("gc: removed"));

    let engine = start(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine.log().contains("gc: removed") {
        assert!(
            Instant::now() < deadline,
            "no start-up run:\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = engine
        .log()
        .lines()
        .find(|l| l.contains("gc: removed"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("startup") && line.contains("disk free"),
        "{line}"
    );
    assert_ne!(
        stdout(&engine.query_ok(&big_exec(&image, "restart"))),
        first,
        "the start-up run removed the result"
    );
}
