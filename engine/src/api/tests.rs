use super::*;
use async_graphql::{Enum, Object, Request, ID};

/// An API over real, empty stores in a temporary directory (leaked for the test's duration).
pub(super) fn api() -> Api {
    use crate::content::ContentStore;
    use crate::metadata::Metadata;
    use crate::registry::{RegistryClient, RegistryOptions};
    use crate::snapshot::{SnapshotKind, Snapshotter};
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()))
        .path()
        .to_path_buf();
    let meta = Metadata::open(&dir.join("metadata.db")).unwrap();
    let content = ContentStore::open(dir.join("blobs"), dir.join("ingest")).unwrap();
    let registry = RegistryClient::new(RegistryOptions::default()).unwrap();
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let snapshots = Snapshotter::new(
        SnapshotKind::Native,
        dir.join("snapshots"),
        dir.join("tmp"),
        meta.clone(),
    );
    let images = crate::image::ImageService::new(registry, content, meta.clone(), snapshots);
    let git = crate::git::GitService::new(dir.join("git"), images.snapshotter().clone()).unwrap();
    let content = images.content().clone();
    let solver = crate::solver::Solver::new(images, meta, None, dir.join("cachemounts"));
    let settings = crate::gc::Settings::from_config(&crate::config::WorkerConfig::default())
        .expect("default GC settings");
    let gc = crate::gc::Gc::new(solver.clone(), content, settings, dir.clone());
    Api::new(ApiState {
        default_platform: Platform::parse("linux/amd64").unwrap(),
        solver,
        git,
        gc,
        sockets: crate::sockets::ClientSockets::new(dir.join("sockets")).expect("sockets dir"),
    })
}

pub(super) async fn run(query: &str) -> serde_json::Value {
    serde_json::to_value(api().execute(|| Request::new(query)).await).unwrap()
}

#[tokio::test]
async fn version_and_default_platform() {
    let v = run("{ version defaultPlatform }").await;
    assert_eq!(v["data"]["version"], crate::VERSION);
    assert_eq!(v["data"]["defaultPlatform"], "linux/amd64");
}

#[tokio::test]
async fn python_sdk_introspection_query_succeeds() {
    let q = include_str!("../../../tests/fixtures/sdk-queries/py-00-introspection-query.graphql");
    let v = run(q).await;
    assert!(v.get("errors").is_none(), "{v}");
    let types = v["data"]["__schema"]["types"].as_array().unwrap();
    let query = types.iter().find(|t| t["name"] == "Query").unwrap();
    let names: Vec<_> = query["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"version") && names.contains(&"defaultPlatform"),
        "{names:?}"
    );
    assert!(types
        .iter()
        .any(|t| t["name"] == "Platform" && t["kind"] == "SCALAR"));
    assert_eq!(
        v["data"]["__schema"]["mutationType"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn aliases_name_the_response_keys() {
    let v = run("{ v: version version: version p: defaultPlatform }").await;
    assert_eq!(v["data"]["v"], crate::VERSION);
    assert_eq!(v["data"]["version"], crate::VERSION);
    assert_eq!(v["data"]["p"], "linux/amd64");
}

#[tokio::test]
async fn scratch_container_and_errors_with_codes() {
    let v = run(r#"{ container { platform rootfs { entries } } }"#).await;
    assert!(v.get("errors").is_none(), "{v}");
    assert_eq!(v["data"]["container"]["platform"], "linux/amd64");
    assert_eq!(
        v["data"]["container"]["rootfs"]["entries"],
        serde_json::json!([])
    );
    let v = run(r#"{ container(platform: "linux/arm64") { platform } }"#).await;
    assert_eq!(v["data"]["container"]["platform"], "linux/arm64");
    let v = run(r#"{ container { from(address: "Not A Ref") { platform } } }"#).await;
    let err = &v["errors"][0];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("invalid image reference"),
        "{v}"
    );
    assert_eq!(err["extensions"]["code"], "INVALID_ARGUMENT");
    let v = run(r#"{ container { rootfs { file(path: "nope") { contents } } } }"#).await;
    let err = &v["errors"][0];
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("/nope: no such file or directory"),
        "{v}"
    );
    assert_eq!(err["extensions"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn unknown_field_is_an_error() {
    let v = run("{ version nope }").await;
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("nope"), "{msg}");
}

#[tokio::test]
async fn unknown_argument_and_missing_required_argument_are_errors() {
    let v = run("{ version(verbose: true) }").await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("verbose"),
        "{v}"
    );
}

// The leniency applies to any schema built through `Lenient`; this probe schema has the
// argument types the real API uses (enums and IDs).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "CacheSharingMode")]
enum Sharing {
    Shared,
    Locked,
}

struct Probe;

#[Object]
impl Probe {
    async fn sharing(&self, mode: Sharing) -> bool {
        mode == Sharing::Locked
    }
    async fn echo_id(&self, id: ID) -> String {
        id.to_string()
    }
}

#[tokio::test]
async fn enum_and_id_arguments_are_lenient() {
    let s = Lenient::build(|| Schema::build(Probe, EmptyMutation, EmptySubscription));
    let q = r#"{ a: sharing(mode: LOCKED) b: sharing(mode: "LOCKED") c: echoId(id: 1002) d: echoId(id: "x") }"#;
    let v = serde_json::to_value(s.execute(|| Request::new(q)).await).unwrap();
    assert!(v.get("errors").is_none(), "{v}");
    assert_eq!(v["data"]["a"], true);
    assert_eq!(v["data"]["b"], true);
    assert_eq!(v["data"]["c"], "1002");
    assert_eq!(v["data"]["d"], "x");
    let bad = s
        .execute(|| Request::new(r#"{ sharing(mode: "NOPE") }"#))
        .await;
    let bad = serde_json::to_value(bad).unwrap();
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("NOPE"),
        "{bad}"
    );
    let missing = serde_json::to_value(s.execute(|| Request::new("{ sharing }")).await).unwrap();
    assert!(
        missing["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("mode"),
        "{missing}"
    );
    let typo = s
        .execute(|| Request::new(r#"{ sharing(mode: LOCKED, extra: 1) }"#))
        .await;
    assert!(!typo.errors.is_empty(), "unknown arguments stay errors");
}

#[tokio::test]
async fn container_config_mutations() {
    let v = run(r#"{ container {
        withEnvVariable(name: "A", value: "1") {
          withEnvVariable(name: "B", value: "$A-${A}x", expand: true) {
            withEnvVariable(name: "A", value: "2") {
              withoutEnvVariable(name: "C") {
                a: envVariable(name: "A") b: envVariable(name: "B") c: envVariable(name: "C")
                envVariables { name value }
                withWorkdir(path: "/srv") { withWorkdir(path: "app") { workdir withoutWorkdir { workdir } } }
                withUser(name: "nobody") { user withoutUser { user } }
                withEntrypoint(args: ["/bin/sh", "-c"]) { entrypoint defaultArgs
                  withDefaultArgs(args: ["echo hi"]) { defaultArgs
                    withEntrypoint(args: ["/x"], keepDefaultArgs: true) { entrypoint defaultArgs }
                    withoutEntrypoint { entrypoint defaultArgs }
                    withoutDefaultArgs { defaultArgs } } }
                withLabel(name: "l", value: "v") { label(name: "l") labels { name value } withoutLabel(name: "l") { label(name: "l") } }
              } } } } } }"#)
    .await;
    assert!(v.get("errors").is_none(), "{v}");
    let c = &v["data"]["container"]["withEnvVariable"]["withEnvVariable"]["withEnvVariable"]
        ["withoutEnvVariable"];
    assert_eq!(c["a"], "2");
    assert_eq!(c["b"], "1-1x");
    assert_eq!(c["c"], serde_json::Value::Null);
    assert_eq!(
        c["envVariables"],
        serde_json::json!([{"name":"A","value":"2"},{"name":"B","value":"1-1x"}])
    );
    let w = &c["withWorkdir"]["withWorkdir"];
    assert_eq!(w["workdir"], "/srv/app");
    assert_eq!(w["withoutWorkdir"]["workdir"], "");
    assert_eq!(c["withUser"]["user"], "nobody");
    assert_eq!(c["withUser"]["withoutUser"]["user"], "");
    let e = &c["withEntrypoint"];
    assert_eq!(e["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    let d = &e["withDefaultArgs"];
    assert_eq!(d["defaultArgs"], serde_json::json!(["echo hi"]));
    assert_eq!(d["withEntrypoint"]["entrypoint"], serde_json::json!(["/x"]));
    assert_eq!(
        d["withEntrypoint"]["defaultArgs"],
        serde_json::json!(["echo hi"])
    );
    assert_eq!(d["withoutEntrypoint"]["entrypoint"], serde_json::json!([]));
    assert_eq!(d["withoutEntrypoint"]["defaultArgs"], serde_json::json!([]));
    assert_eq!(
        d["withoutDefaultArgs"]["defaultArgs"],
        serde_json::json!([])
    );
    let l = &c["withLabel"];
    assert_eq!(l["label"], "v");
    assert_eq!(l["labels"], serde_json::json!([{"name":"l","value":"v"}]));
    assert_eq!(l["withoutLabel"]["label"], serde_json::Value::Null);
}

#[tokio::test]
async fn exposed_ports_are_metadata() {
    let v = run(r#"{ container {
        withExposedPort(port: 8080, description: "web") {
          withExposedPort(port: 53, protocol: UDP) {
            exposedPorts { port protocol description }
            withoutExposedPort(port: 8080) { exposedPorts { port protocol } } } } } }"#)
    .await;
    assert!(v.get("errors").is_none(), "{v}");
    let c = &v["data"]["container"]["withExposedPort"]["withExposedPort"];
    assert_eq!(
        c["exposedPorts"],
        serde_json::json!([
            {"port": 8080, "protocol": "TCP", "description": "web"},
            {"port": 53, "protocol": "UDP", "description": null}
        ])
    );
    assert_eq!(
        c["withoutExposedPort"]["exposedPorts"],
        serde_json::json!([{"port": 53, "protocol": "UDP"}])
    );
    let v =
        run(r#"{ container { withExposedPort(port: 70000) { exposedPorts { port } } } }"#).await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("70000"),
        "{v}"
    );
}
