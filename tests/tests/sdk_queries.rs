//! Replays the exact queries the real SDKs send (captured in tests/fixtures/sdk-queries/) over
//! raw HTTP against the real engine: IDs the capture's fake server returned are replaced by the
//! IDs our engine returned for the same request earlier in the scenario, and image addresses
//! point at a local registry. Every replayed request must answer without errors, with the
//! shape the SDK expects, and with the right values where the capture says what they are.
//!
//! Captures that use what the engine does not serve yet are listed in `UNSERVED` with why.

use dagger_integration_tests::images::{self, Format};
use dagger_integration_tests::registry::{Mode, TestRegistry};
use dagger_integration_tests::*;
use std::collections::{BTreeMap, HashMap};

/// Features not served yet, by a substring of the query, and why the capture is skipped.
const UNSERVED: &[(&str, &str)] = &[
    (
        "publish",
        "Container.publish arrives with the publish issue",
    ),
    ("export", "exports arrive with client sessions"),
    ("host", "host access arrives with client sessions"),
    (
        "git(",
        "git captures point at example.com (no traffic leaves the machine)",
    ),
    (
        "git (",
        "git captures point at example.com (no traffic leaves the machine)",
    ),
    ("dockerBuild", "Directory.dockerBuild is not served"),
    ("asService", "services are not served"),
    ("endpoint", "services are not served"),
    ("withExposedPort", "withExposedPort is not served yet"),
    ("withServiceBinding", "services are not served"),
    ("http(", "Query.http is not served"),
    ("http (", "Query.http is not served"),
    ("forcedCompression", "publish/export options are not served"),
];

/// Captures whose fake answer real Dagger would not give either.
const FAKE_ONLY: &[(&str, &str)] = &[
    (
        "py-e-exec-opts-publish-export-sync-services-17-stdout.graphql",
        "stdout of a container that never ran withExec is an error in Dagger too",
    ),
    (
        "py-h-legacy-Connection-03-stdout.graphql",
        "stdout of a container that never ran withExec is an error in Dagger too",
    ),
    (
        "ts-e-exec-opts-publish-export-sync-services-14-stdout.graphql",
        "stdout of a container that never ran withExec is an error in Dagger too",
    ),
    (
        "ts-g-connect-callback-02-stdout.graphql",
        "stdout of a container that never ran withExec is an error in Dagger too",
    ),
];

struct Capture {
    name: String,
    query: String,
    response: Option<serde_json::Value>,
}

fn load() -> Vec<Capture> {
    let dir = workspace().join("tests/fixtures/sdk-queries");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".graphql") && !n.starts_with("py-00"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap();
            let (head, tail) = text.split_once("# ---- response").unwrap_or((&text, ""));
            let query = head
                .split_once("(whitespace preserved) ----\n")
                .map(|(_, q)| q)
                .unwrap_or(head)
                .to_string();
            let json: String = tail
                .lines()
                .skip(1)
                .filter_map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')))
                .collect::<Vec<_>>()
                .join("\n");
            Capture {
                name,
                query,
                response: serde_json::from_str(&json).ok(),
            }
        })
        .collect()
}

/// Collects fake → real ID pairs by walking both responses in step.
fn map_ids(fake: &serde_json::Value, real: &serde_json::Value, ids: &mut HashMap<String, String>) {
    match (fake, real) {
        (serde_json::Value::String(f), serde_json::Value::String(r))
            if f.starts_with("fakeid:") =>
        {
            ids.insert(f.clone(), r.clone());
        }
        (serde_json::Value::Object(f), serde_json::Value::Object(r)) => {
            for (k, fv) in f {
                if let Some(rv) = r.get(k) {
                    map_ids(fv, rv, ids);
                }
            }
        }
        (serde_json::Value::Array(f), serde_json::Value::Array(r)) => {
            for (fv, rv) in f.iter().zip(r) {
                map_ids(fv, rv, ids);
            }
        }
        _ => {}
    }
}

/// The same keys at every level, and the same kind of value at every leaf.
fn same_shape(
    fake: &serde_json::Value,
    real: &serde_json::Value,
    path: &str,
) -> Result<(), String> {
    use serde_json::Value as V;
    match (fake, real) {
        (V::Object(f), V::Object(r)) => {
            let fk: Vec<_> = f.keys().collect();
            let rk: Vec<_> = r.keys().collect();
            if fk != rk {
                return Err(format!("{path}: keys {fk:?} vs {rk:?}"));
            }
            for (k, fv) in f {
                same_shape(fv, &r[k], &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (V::Array(f), V::Array(r)) => match (f.first(), r.first()) {
            (Some(fv), Some(rv)) => same_shape(fv, rv, &format!("{path}[0]")),
            _ => Ok(()),
        },
        (V::String(_), V::String(_)) | (V::Number(_), V::Number(_)) | (V::Bool(_), V::Bool(_)) => {
            Ok(())
        }
        (V::Null, _) | (_, V::Null) => Ok(()),
        _ => Err(format!("{path}: {fake} vs {real}")),
    }
}

#[test]
fn captured_sdk_queries_replay() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::MULTIARCH, &reg, "alpine:3.20", Format::Oci, None);
    images::push(images::MULTIARCH, &reg, "alpine:latest", Format::Oci, None);
    // The captures use insecureRootCapabilities, as the shipped engine.toml allows.
    let engine = Engine::start(EngineOptions {
        config: Some("insecure-entitlements = [\"security.insecure\"]\n".into()),
        ..Default::default()
    });
    let local = format!("{}/alpine", reg.addr);

    let mut by_scenario: BTreeMap<String, Vec<Capture>> = BTreeMap::new();
    for c in load() {
        // "<sdk>-<scenario letter>-..." keeps each SDK run separate.
        let key: String = c.name.splitn(3, '-').take(2).collect::<Vec<_>>().join("-");
        by_scenario.entry(key).or_default().push(c);
    }
    let (mut replayed, mut skipped, mut failures) = (0, Vec::new(), Vec::<String>::new());
    for (scenario, captures) in by_scenario {
        let mut ids: HashMap<String, String> = HashMap::new();
        for c in captures {
            if let Some((_, why)) = FAKE_ONLY.iter().find(|(n, _)| *n == c.name) {
                let v = engine.query(&c.query);
                assert!(v.get("errors").is_some(), "{}: {why}", c.name);
                skipped.push(format!("{}: {why}", c.name));
                continue;
            }
            if let Some((_, why)) = UNSERVED.iter().find(|(s, _)| c.query.contains(s)) {
                skipped.push(format!("{}: {why}", c.name));
                continue;
            }
            let mut q = c
                .query
                .replace(
                    "address: \"alpine:3.20\"",
                    &format!("address: \"{local}:3.20\""),
                )
                .replace(
                    "address: \\\"alpine:3.20\\\"",
                    &format!("address: \\\"{local}:3.20\\\""),
                )
                .replace("address: \"alpine\"", &format!("address: \"{local}\""));
            for (fake, real) in &ids {
                q = q.replace(fake.as_str(), real.as_str());
            }
            if q.contains("fakeid:") {
                skipped.push(format!("{}: needs an ID from a skipped request", c.name));
                continue;
            }
            let v = engine.query(&q);
            let expects_error = c
                .response
                .as_ref()
                .is_some_and(|r| r.get("errors").is_some());
            if expects_error {
                let e = &v["errors"][0];
                let complete = e["extensions"]["_type"] == "EXEC_ERROR"
                    && ["cmd", "exitCode", "stdout", "stderr"]
                        .iter()
                        .all(|k| e["extensions"].get(k).is_some());
                if !complete {
                    failures.push(format!(
                        "{scenario}/{}: expected an EXEC_ERROR: {v}",
                        c.name
                    ));
                }
            } else if v.get("errors").is_some() {
                failures.push(format!("{scenario}/{}:\n{q}\n=> {v}", c.name));
            } else if let Some(fake) = c.response.as_ref().and_then(|r| r.get("data")) {
                if let Err(e) = same_shape(fake, &v["data"], "data") {
                    failures.push(format!("{}: {e}\n{v}", c.name));
                }
                map_ids(fake, &v["data"], &mut ids);
            }
            replayed += 1;
        }
    }
    eprintln!(
        "replayed {replayed} captured requests; skipped {}:",
        skipped.len()
    );
    for s in &skipped {
        eprintln!("  {s}");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(replayed >= 40, "only {replayed} captures replayed");
}

/// The answers that matter, checked by value (the capture's fake server made its values up).
#[test]
fn captured_queries_give_the_right_values() {
    let reg = TestRegistry::start(Mode::Plain);
    images::push(images::MULTIARCH, &reg, "alpine:3.20", Format::Oci, None);
    let engine = Engine::start(EngineOptions::default());
    let local = format!("{}/alpine:3.20", reg.addr);
    let read = |name: &str| {
        let c = load().into_iter().find(|c| c.name == name).unwrap();
        engine.query_ok(&c.query.replace("alpine:3.20", &local))
    };
    let v = read("py-a-stdout-03-stdout.graphql");
    assert_eq!(v.to_string().matches("hello").count(), 1, "{v}");
    let v = read("py-x-encoding-enums-inputs-lists-03-stdout.graphql");
    let out = v["container"]["from"]["withExec"]["stdout"]
        .as_str()
        .unwrap();
    assert_eq!(
        out, "a\nb\t\"q\" \\ é 😀 ${HOME}",
        "escapes survive the round trip"
    );
    let v = read("ts-x-encoding-enums-inputs-lists-14-defaultPlatform.graphql");
    assert!(
        v["defaultPlatform"].as_str().unwrap().starts_with("linux/"),
        "{v}"
    );
}
