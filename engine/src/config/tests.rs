use super::*;

fn parse(text: &str) -> Result<(Config, Vec<UnknownKey>), ConfigError> {
    Config::parse(text, Path::new("/etc/dagger/engine.toml"))
}

fn invalid(text: &str) -> (Option<usize>, Option<String>, String, String) {
    match parse(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let shown = e.to_string();
            let ConfigError::Invalid {
                line, key, message, ..
            } = e
            else {
                unreachable!()
            };
            (line, key, message, shown)
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

const FULL: &str = r#"
debug = true
trace = false
root = "/srv/dagger"
insecure-entitlements = ["security.insecure", "network.host"]

[grpc]
address = ["unix:///run/dagger/engine.sock", "tcp://127.0.0.1:1234"]
uid = 1000
gid = 1001

[grpc.tls]
cert = "/etc/dagger/tls/cert.pem"
key = "/etc/dagger/tls/key.pem"
ca = "/etc/dagger/tls/ca.pem"

[registry."docker.io"]
mirrors = ["mirror.example.com", "127.0.0.1:5000/dockerhub"]

[registry."127.0.0.1:5000"]
http = true
insecure = true
ca = ["/etc/dagger/certs/ca.pem"]
tlsconfigdir = ["/etc/dagger/certs.d"]
[[registry."127.0.0.1:5000".keypair]]
key = "/etc/dagger/certs/client.key"
cert = "/etc/dagger/certs/client.cert"

[worker.oci]
snapshotter = "native"
binary = "/usr/local/sbin/runc"
max-parallelism = 4
gc = true
gckeepstorage = "10GB"
reservedSpace = "2GB"
maxUsedSpace = "80%"
minFreeSpace = 1048576

[[worker.oci.gcpolicy]]
keepDuration = "48h"
filters = ["type==source.local", "type==exec.cachemount"]
keepBytes = "512MB"

[[worker.oci.gcpolicy]]
all = true
keepDuration = 3600
reservedSpace = "1GB"
maxUsedSpace = "10GB"
minFreeSpace = "20%"

[dns]
nameservers = ["1.1.1.1", "2001:4860:4860::8888"]
options = ["edns0"]
searchDomains = ["example.internal"]
"#;

#[test]
fn every_key_is_parsed() {
    let (c, unknown) = parse(FULL).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(c.debug);
    assert!(!c.trace);
    assert_eq!(c.root, PathBuf::from("/srv/dagger"));
    assert!(c.allows(Entitlement::SecurityInsecure));
    assert!(c.allows(Entitlement::NetworkHost));
    assert_eq!(
        c.grpc.addresses,
        vec![
            ListenAddr::Unix("/run/dagger/engine.sock".into()),
            ListenAddr::Tcp("127.0.0.1:1234".into())
        ]
    );
    assert_eq!((c.grpc.uid, c.grpc.gid), (Some(1000), Some(1001)));
    let tls = c.grpc.tls.as_ref().unwrap();
    assert_eq!(tls.cert, PathBuf::from("/etc/dagger/tls/cert.pem"));
    assert_eq!(tls.key, PathBuf::from("/etc/dagger/tls/key.pem"));
    assert_eq!(tls.ca, Some(PathBuf::from("/etc/dagger/tls/ca.pem")));

    let hub = &c.registries["docker.io"];
    assert_eq!(
        hub.mirrors,
        vec!["mirror.example.com", "127.0.0.1:5000/dockerhub"]
    );
    assert_eq!(hub.http, None);
    let local = &c.registries["127.0.0.1:5000"];
    assert_eq!(local.http, Some(true));
    assert!(local.insecure);
    assert_eq!(local.ca, vec![PathBuf::from("/etc/dagger/certs/ca.pem")]);
    assert_eq!(
        local.tls_config_dirs,
        vec![PathBuf::from("/etc/dagger/certs.d")]
    );
    assert_eq!(
        local.keypairs,
        vec![KeyPair {
            key: "/etc/dagger/certs/client.key".into(),
            cert: "/etc/dagger/certs/client.cert".into()
        }]
    );

    let w = &c.worker;
    assert_eq!(w.snapshotter, SnapshotterChoice::Native);
    assert_eq!(w.binary, PathBuf::from("/usr/local/sbin/runc"));
    assert_eq!(w.max_parallelism, Some(4));
    assert!(w.gc);
    assert_eq!(w.gc_keep_storage, Some(DiskSpace::Bytes(10 << 30)));
    assert_eq!(w.reserved_space, Some(DiskSpace::Bytes(2 << 30)));
    assert_eq!(w.max_used_space, Some(DiskSpace::Percent(80)));
    assert_eq!(w.min_free_space, Some(DiskSpace::Bytes(1 << 20)));
    assert_eq!(w.gc_policies.len(), 2);
    let p0 = &w.gc_policies[0];
    assert!(!p0.all);
    assert_eq!(
        p0.filters,
        vec!["type==source.local", "type==exec.cachemount"]
    );
    assert_eq!(
        p0.keep_duration,
        Some(ConfigDuration(std::time::Duration::from_secs(48 * 3600)))
    );
    assert_eq!(p0.keep_bytes, Some(DiskSpace::Bytes(512 << 20)));
    let p1 = &w.gc_policies[1];
    assert!(p1.all);
    assert_eq!(
        p1.keep_duration,
        Some(ConfigDuration(std::time::Duration::from_secs(3600)))
    );
    assert_eq!(p1.reserved_space, Some(DiskSpace::Bytes(1 << 30)));
    assert_eq!(p1.max_used_space, Some(DiskSpace::Bytes(10 << 30)));
    assert_eq!(p1.min_free_space, Some(DiskSpace::Percent(20)));

    assert_eq!(c.dns.nameservers.len(), 2);
    assert_eq!(c.dns.options, vec!["edns0"]);
    assert_eq!(c.dns.search_domains, vec!["example.internal"]);
}

#[test]
fn empty_file_gives_defaults() {
    let (c, unknown) = parse("\n# nothing\n").unwrap();
    assert!(unknown.is_empty());
    assert_eq!(c, Config::default());
    assert_eq!(c.root, PathBuf::from("/var/lib/dagger"));
    assert_eq!(
        c.grpc.addresses,
        vec![ListenAddr::Unix("/run/dagger/engine.sock".into())]
    );
    assert!(c.insecure_entitlements.is_empty());
    assert_eq!(c.worker.binary, PathBuf::from("runc"));
}

#[test]
fn the_shipped_engine_toml_parses_without_warnings() {
    let text = include_str!("../../../engine.toml");
    let (c, unknown) = parse(text).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    assert!(c.allows(Entitlement::SecurityInsecure));
}

#[test]
fn unknown_keys_are_warnings_with_lines() {
    let text = "debug = true\nfrobnicate = 1\n[worker.oci]\nnetworkMode = \"cni\"\n[log]\nformat = \"json\"\n";
    let (c, unknown) = parse(text).unwrap();
    assert!(c.debug);
    let keys: Vec<_> = unknown.iter().map(|u| (u.key.as_str(), u.line)).collect();
    assert!(keys.contains(&("frobnicate", Some(2))), "{keys:?}");
    assert!(
        keys.contains(&("worker.oci.networkMode", Some(4))),
        "{keys:?}"
    );
    assert!(keys.contains(&("log", Some(5))), "{keys:?}");
    assert_eq!(
        unknown[0].to_string(),
        "unknown key `frobnicate` (line 2) is ignored"
    );
}

#[test]
fn unknown_keys_in_nested_and_quoted_tables_are_named_as_written() {
    let text = "[grpc.tls]\ncert = \"/c\"\nkey = \"/k\"\nverify = true\n\n[registry.\"docker.io\"]\nhttp = true\nretries = 3\n\n[[worker.oci.gcpolicy]]\nall = true\nmaxAge = 1\n";
    let (_, unknown) = parse(text).unwrap();
    let keys: Vec<_> = unknown.iter().map(|u| (u.key.as_str(), u.line)).collect();
    assert_eq!(
        keys,
        [
            ("grpc.tls.verify", Some(4)),
            ("registry.\"docker.io\".retries", Some(8)),
            ("worker.oci.gcpolicy[0].maxAge", Some(12)),
        ]
    );
}

#[test]
fn bad_registry_host_names_its_table_line() {
    let (line, key, msg, _) =
        invalid("debug = true\n\n[registry.\"https://r.example\"]\nhttp = true\n");
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("registry.\"https://r.example\""));
    assert!(msg.contains("not a registry host"), "{msg}");
}

#[test]
fn syntax_error_names_line() {
    let (line, _key, _msg, shown) = invalid("debug = true\n[grpc\naddress = []\n");
    assert_eq!(line, Some(2));
    assert!(
        shown.starts_with("invalid config file /etc/dagger/engine.toml, line 2"),
        "{shown}"
    );
}

#[test]
fn wrong_type_names_key_and_line() {
    let (line, key, msg, shown) = invalid("\n\ndebug = \"yes\"\n");
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("debug"));
    assert!(msg.contains("bool"), "{msg}");
    assert!(shown.contains("line 3, key `debug`"), "{shown}");
}

#[test]
fn bad_disk_size_names_key_and_line() {
    let (line, key, msg, _) = invalid("[worker.oci]\ngc = true\ngckeepstorage = \"lots\"\n");
    assert_eq!(line, Some(3));
    assert_eq!(key.as_deref(), Some("worker.oci.gckeepstorage"));
    assert!(msg.contains("invalid disk size \"lots\""), "{msg}");
}

#[test]
fn bad_duration_in_policy_names_key_and_line() {
    let (line, key, msg, _) = invalid(
        "[[worker.oci.gcpolicy]]\nall = true\n[[worker.oci.gcpolicy]]\nkeepDuration = \"2 days\"\n",
    );
    assert_eq!(line, Some(4));
    assert_eq!(key.as_deref(), Some("worker.oci.gcpolicy[1].keepDuration"));
    assert!(msg.contains("invalid duration"), "{msg}");
}

#[test]
fn bad_entitlement_names_key_and_line() {
    let (line, key, msg, _) =
        invalid("debug = false\ninsecure-entitlements = [\"security.insecure\", \"device\"]\n");
    assert_eq!(line, Some(2));
    assert_eq!(key.as_deref(), Some("insecure-entitlements"));
    assert!(msg.contains("unknown entitlement \"device\""), "{msg}");
}

#[test]
fn bad_values_are_rejected() {
    let cases: &[(&str, &str, usize)] = &[
        ("[grpc]\naddress = [\"http://x\"]\n", "grpc.address", 2),
        ("[grpc]\naddress = []\n", "grpc.address", 2),
        ("[grpc.tls]\ncert = \"/c.pem\"\n", "grpc.tls", 1),
        (
            "[worker.oci]\nsnapshotter = \"stargz\"\n",
            "worker.oci.snapshotter",
            2,
        ),
        (
            "[worker.oci]\nmax-parallelism = 0\n",
            "worker.oci.max-parallelism",
            2,
        ),
        ("[worker.oci]\nbinary = \"\"\n", "worker.oci.binary", 2),
        (
            "[dns]\nnameservers = [\"8.8.8.8\", \"dns.example\"]\n",
            "dns.nameservers",
            2,
        ),
        ("root = \"relative/dir\"\n", "root", 1),
        (
            "[registry.\"docker.io\"]\nmirrors = [\"https://mirror\"]\n",
            "registry.\"docker.io\".mirrors",
            2,
        ),
        (
            "[worker.oci]\nreservedSpace = -5\n",
            "worker.oci.reservedSpace",
            2,
        ),
        ("[grpc]\nuid = -1\n", "grpc.uid", 2),
    ];
    for (text, want_key, want_line) in cases {
        let (line, key, msg, _) = invalid(text);
        assert_eq!(key.as_deref(), Some(*want_key), "{text}: {msg}");
        assert_eq!(line, Some(*want_line), "{text}: {msg}");
    }
}

#[test]
fn flags_override_the_file() {
    let (mut c, _) = parse(FULL).unwrap();
    c.apply(&Overrides {
        root: Some("/tmp/state".into()),
        addresses: vec!["tcp://127.0.0.1:9999".into()],
        debug: false,
        trace: true,
        allow_insecure_entitlements: vec!["network.host".into()],
    })
    .unwrap();
    assert_eq!(c.root, PathBuf::from("/tmp/state"));
    assert_eq!(
        c.grpc.addresses,
        vec![ListenAddr::Tcp("127.0.0.1:9999".into())]
    );
    assert!(c.debug, "a flag that is not set keeps the file's value");
    assert!(c.trace);
    assert!(!c.allows(Entitlement::SecurityInsecure));
    assert!(c.allows(Entitlement::NetworkHost));

    let err = c
        .apply(&Overrides {
            allow_insecure_entitlements: vec!["bogus".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("--allow-insecure-entitlement"),
        "{err}"
    );
}

#[test]
fn missing_default_file_is_defaults_but_explicit_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("engine.toml");
    let loaded = Config::load(&missing, false).unwrap();
    assert!(loaded.source.is_none());
    assert_eq!(loaded.config, Config::default());
    let err = Config::load(&missing, true).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("engine.toml"), "{err}");
}
