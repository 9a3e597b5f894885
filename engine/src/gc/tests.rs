use super::policy::{keep_bytes, plan, Candidate};
use super::*;
use crate::config::{ConfigDuration, GcPolicy};
use crate::metadata::ResultRecord;
use std::io::Write;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

/// A regular, unused record of `size` bytes last used `ago` before [`now`].
fn rec(id: &str, size: u64, ago: Duration) -> Candidate {
    Candidate {
        id: id.into(),
        record_type: RecordType::Regular,
        description: format!("record {id}"),
        size,
        last_used: now() - ago,
        in_use: false,
        parent: None,
    }
}

fn ids(records: &[Candidate], chosen: &[usize]) -> Vec<String> {
    chosen.iter().map(|&i| records[i].id.clone()).collect()
}

fn capped(max_used: u64) -> Policy {
    Policy {
        max_used_space: max_used,
        ..Policy::default()
    }
}

/// Plenty of free disk, so `minFreeSpace` plays no part unless a test sets it.
const FREE: u64 = u64::MAX / 2;

#[test]
fn least_recently_used_goes_first_until_under_max_used() {
    let r = vec![
        rec("mid", 10, 2 * HOUR),
        rec("old", 10, 3 * HOUR),
        rec("new", 10, HOUR),
    ];
    // 30 bytes, keep at most 15: the two oldest go, in age order.
    assert_eq!(
        ids(&r, &plan(&r, &[capped(15)], FREE, now())),
        ["old", "mid"]
    );
    // Under the ceiling: nothing.
    assert!(plan(&r, &[capped(30)], FREE, now()).is_empty());
}

#[test]
fn reserved_space_is_a_floor() {
    let r = vec![
        rec("a", 10, 3 * HOUR),
        rec("b", 10, 2 * HOUR),
        rec("c", 10, HOUR),
    ];
    let p = Policy {
        max_used_space: 5,
        reserved_space: 25,
        ..Policy::default()
    };
    assert_eq!(keep_bytes(30, FREE, &p), Some(25));
    assert_eq!(ids(&r, &plan(&r, &[p], FREE, now())), ["a"]);
}

#[test]
fn min_free_space_shrinks_the_cache_by_what_is_missing() {
    let r = vec![
        rec("a", 10, 3 * HOUR),
        rec("b", 10, 2 * HOUR),
        rec("c", 10, HOUR),
    ];
    let p = Policy {
        min_free_space: 120,
        ..Policy::default()
    };
    // 20 bytes short of 120 free: keep 30 - 20 = 10.
    assert_eq!(keep_bytes(30, 100, &p), Some(10));
    assert_eq!(
        ids(&r, &plan(&r, std::slice::from_ref(&p), 100, now())),
        ["a", "b"]
    );
    // Enough free space: only minFreeSpace is set, so nothing goes.
    assert_eq!(keep_bytes(30, 500, &p), Some(30));
    assert!(plan(&r, std::slice::from_ref(&p), 500, now()).is_empty());
    // With a reserve, never below it.
    let floor = Policy {
        reserved_space: 25,
        ..p
    };
    assert_eq!(ids(&r, &plan(&r, &[floor], 100, now())), ["a"]);
}

#[test]
fn no_limits_means_every_candidate() {
    assert_eq!(keep_bytes(30, FREE, &Policy::default()), None);
    let r = vec![rec("a", 10, HOUR), rec("b", 0, 2 * HOUR)];
    let all = Policy {
        all: true,
        ..Policy::default()
    };
    assert_eq!(ids(&r, &plan(&r, &[all], FREE, now())), ["b", "a"]);
}

#[test]
fn keep_duration_spares_recently_used_records() {
    let r = vec![rec("stale", 10, 3 * HOUR), rec("fresh", 10, HOUR)];
    let p = Policy {
        keep_duration: Some(2 * HOUR),
        ..Policy::default()
    };
    assert_eq!(ids(&r, &plan(&r, &[p], FREE, now())), ["stale"]);
}

#[test]
fn filters_select_by_type_with_containerd_semantics() {
    let mut vol = rec("vol", 10, HOUR);
    vol.record_type = RecordType::ExecCacheMount;
    let mut git = rec("git", 10, 2 * HOUR);
    git.record_type = RecordType::SourceGitCheckout;
    let r = vec![rec("layer", 10, 3 * HOUR), vol, git];
    let with = |filters: &[&str]| Policy {
        filter: Filter::parse(filters).unwrap(),
        ..Policy::default()
    };
    let pick = |p: Policy| ids(&r, &plan(&r, &[p], FREE, now()));
    assert_eq!(pick(with(&["type==exec.cachemount"])), ["vol"]);
    // Separate strings are ORed.
    assert_eq!(
        pick(with(&[
            "type==exec.cachemount",
            "type==source.git.checkout"
        ])),
        ["git", "vol"]
    );
    // Commas within one string AND: a record has one type, so this matches nothing.
    assert!(pick(with(&["type==exec.cachemount,type==source.git.checkout"])).is_empty());
    assert_eq!(pick(with(&["type!=regular,id==git"])), ["git"]);
    assert_eq!(pick(with(&["type==regular"])), ["layer"]);
    assert_eq!(pick(with(&["type==source.local"])), Vec::<String>::new());
    assert_eq!(pick(with(&[r#"description=="record vol""#])), ["vol"]);
}

#[test]
fn bad_filters_are_refused() {
    for bad in [
        "until=24h",
        "size>=1",
        "type~=exec",
        "colour==red",
        "type==sourcelocal",
        r#"description=="open"#,
    ] {
        assert!(Filter::parse(&[bad]).is_err(), "{bad} should be refused");
    }
}

#[test]
fn records_in_use_and_their_ancestors_stay() {
    // parent <- child: the parent is older, but may only go after its child.
    let mut r = vec![rec("parent", 10, 5 * HOUR), rec("child", 10, HOUR)];
    r[1].parent = Some(0);
    let everything = Policy::default();
    assert_eq!(
        ids(
            &r,
            &plan(&r, std::slice::from_ref(&everything), FREE, now())
        ),
        ["child", "parent"]
    );
    r[1].in_use = true;
    assert!(plan(&r, &[everything], FREE, now()).is_empty());
}

#[test]
fn a_parent_that_is_not_eligible_stays_after_its_children_go() {
    let mut r = vec![rec("base", 10, HOUR), rec("child", 10, 3 * HOUR)];
    r[1].parent = Some(0);
    let p = Policy {
        keep_duration: Some(2 * HOUR),
        ..Policy::default()
    };
    assert_eq!(ids(&r, &plan(&r, &[p], FREE, now())), ["child"]);
}

#[test]
fn internal_records_need_all() {
    let mut r = vec![rec("internal", 10, HOUR)];
    r[0].record_type = RecordType::Internal;
    assert!(plan(&r, &[Policy::default()], FREE, now()).is_empty());
    let all = Policy {
        all: true,
        ..Policy::default()
    };
    assert_eq!(ids(&r, &plan(&r, &[all], FREE, now())), ["internal"]);
}

#[test]
fn target_space_prunes_further_once_triggered() {
    let r = vec![
        rec("a", 10, 3 * HOUR),
        rec("b", 10, 2 * HOUR),
        rec("c", 10, HOUR),
    ];
    let p = Policy {
        max_used_space: 25,
        target_space: 5,
        reserved_space: 12,
        ..Policy::default()
    };
    // Triggered by 30 > 25; goes down to max(min(25, 5), 12) = 12.
    assert_eq!(ids(&r, &plan(&r, &[p], FREE, now())), ["a", "b"]);
}

#[test]
fn policies_run_in_order_on_what_is_left() {
    let mut vol = rec("vol", 100, 72 * HOUR);
    vol.record_type = RecordType::ExecCacheMount;
    let r = vec![vol, rec("layer", 100, 72 * HOUR), rec("recent", 100, HOUR)];
    let reproducible = Policy {
        filter: Filter::parse(&["type==exec.cachemount"]).unwrap(),
        keep_duration: Some(48 * HOUR),
        max_used_space: 50,
        ..Policy::default()
    };
    let catch_all = Policy {
        all: true,
        max_used_space: 150,
        ..Policy::default()
    };
    // The first policy takes the volume (300 > 50); the second finds 200 > 150 and takes the
    // least recently used of the rest.
    assert_eq!(
        ids(&r, &plan(&r, &[reproducible, catch_all], FREE, now())),
        ["vol", "layer"]
    );
}

#[test]
fn default_settings_are_dagger_v0_21s() {
    let s = Settings::from_config(&WorkerConfig::default()).unwrap();
    assert!(s.enabled);
    let disk = 100u64 << 30;
    let p = s.resolve(Some(disk));
    assert_eq!(p.len(), 3);
    // 1: reproducible records unused for 48h, above 512 MB.
    assert_eq!(p[0].keep_duration, Some(48 * HOUR));
    assert_eq!(p[0].max_used_space, 512_000_000);
    assert_eq!((p[0].reserved_space, p[0].min_free_space), (0, 0));
    assert!(!p[0].all);
    let mut vol = rec("v", 1, HOUR);
    vol.record_type = RecordType::ExecCacheMount;
    assert!(p[0].filter.matches(&vol));
    assert!(!p[0].filter.matches(&rec("r", 1, HOUR)));
    // 2: sixty days; 3: everything. Both with the default triple.
    assert_eq!(p[1].keep_duration, Some(60 * 24 * HOUR));
    assert!(p[2].all && p[2].keep_duration.is_none());
    for q in &p[1..] {
        // min(10% (rounded up to 11 GB), 10 GB), 75% -> 76 GB, 20% -> 21 GB.
        assert_eq!(q.reserved_space, 10_000_000_000);
        assert_eq!(q.max_used_space, 76_000_000_000);
        assert_eq!(q.min_free_space, 21_000_000_000);
    }
}

#[test]
fn configured_space_replaces_every_default_limit() {
    let w = WorkerConfig {
        max_used_space: Some(DiskSpace::Bytes(1 << 20)),
        ..WorkerConfig::default()
    };
    let p = Settings::from_config(&w).unwrap().resolve(Some(1 << 40));
    assert_eq!(
        (
            p[2].reserved_space,
            p[2].max_used_space,
            p[2].min_free_space
        ),
        (0, 1 << 20, 0)
    );
    // gckeepstorage stands in for reservedSpace.
    let w = WorkerConfig {
        gc_keep_storage: Some(DiskSpace::Bytes(7)),
        ..WorkerConfig::default()
    };
    let p = Settings::from_config(&w).unwrap().resolve(None);
    assert_eq!((p[2].reserved_space, p[2].max_used_space), (7, 0));
}

#[test]
fn configured_policies_replace_the_defaults() {
    let w = WorkerConfig {
        gc: false,
        gc_policies: vec![
            GcPolicy {
                filters: vec!["type==exec.cachemount".into()],
                keep_duration: Some(ConfigDuration(HOUR)),
                keep_bytes: Some(DiskSpace::Bytes(5)),
                ..GcPolicy::default()
            },
            GcPolicy {
                all: true,
                max_used_space: Some(DiskSpace::Percent(50)),
                ..GcPolicy::default()
            },
        ],
        ..WorkerConfig::default()
    };
    let s = Settings::from_config(&w).unwrap();
    assert!(!s.enabled);
    let p = s.resolve(Some(10u64 << 30));
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0].reserved_space, 5,
        "keepBytes is the legacy reservedSpace"
    );
    assert_eq!(p[0].keep_duration, Some(HOUR));
    assert_eq!(p[1].max_used_space, 6_000_000_000);
    let bad = WorkerConfig {
        gc_policies: vec![GcPolicy {
            filters: vec!["until=24h".into()],
            ..GcPolicy::default()
        }],
        ..WorkerConfig::default()
    };
    let err = Settings::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("gcpolicy[0].filters"), "{err}");
}

#[test]
fn prune_arguments() {
    let r = PruneRequest::parse(true, "200GB", "", " ", "80%").unwrap();
    assert!(r.use_default_policy);
    assert_eq!(r.max_used_space, Some(DiskSpace::Bytes(200 << 30)));
    assert_eq!(r.reserved_space, None);
    assert_eq!(r.min_free_space, None);
    assert_eq!(r.target_space, Some(DiskSpace::Percent(80)));
    let err = PruneRequest::parse(false, "lots", "", "", "").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("maxUsedSpace"), "{err}");
}

// The collector over real (unprivileged) stores: native snapshots, no mounts.

struct Stores {
    _dir: tempfile::TempDir,
    gc: Gc,
    meta: Metadata,
    content: ContentStore,
    snapshots: Snapshotter,
}

fn stores() -> Stores {
    use crate::registry::{RegistryClient, RegistryOptions};
    use crate::snapshot::SnapshotKind;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let meta = Metadata::open(&p.join("metadata.db")).unwrap();
    let content = ContentStore::open(p.join("blobs"), p.join("ingest")).unwrap();
    for d in ["snapshots", "tmp", "cachemounts"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    let snapshots = Snapshotter::new(
        SnapshotKind::Native,
        p.join("snapshots"),
        p.join("tmp"),
        meta.clone(),
    );
    let registry = RegistryClient::new(RegistryOptions::default()).unwrap();
    let images =
        crate::image::ImageService::new(registry, content.clone(), meta.clone(), snapshots.clone());
    let solver = Solver::new(images, meta.clone(), None, p.join("cachemounts"));
    let settings = Settings::from_config(&WorkerConfig::default()).unwrap();
    let gc = Gc::new(solver, content.clone(), settings, p.to_path_buf());
    Stores {
        _dir: dir,
        gc,
        meta,
        content,
        snapshots,
    }
}

impl Stores {
    /// A committed snapshot holding one file of `bytes` bytes (on `parent`).
    fn snapshot(&self, parent: Option<&str>, bytes: usize) -> String {
        let parent = parent.map(str::to_string);
        let a = self.snapshots.prepare(parent.as_ref()).unwrap();
        std::fs::write(a.fs().join(format!("f{bytes}")), vec![7u8; bytes]).unwrap();
        self.snapshots.commit(a, None, None, 0).unwrap()
    }

    fn blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let mut w = self.content.writer(&d, data.len() as u64).unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
        self.meta.put_blob(&d, data.len() as u64, "test").unwrap();
        d
    }

    fn exists(&self, id: &str) -> bool {
        self.meta.get_snapshot(id).unwrap().is_some()
            && self.snapshots.snapshots_dir().join(id).is_dir()
    }

    async fn prune_all(&self) -> Report {
        self.gc.prune(&PruneRequest::default()).await.unwrap()
    }
}

#[tokio::test]
async fn prune_removes_what_nothing_holds_and_keeps_pins_and_their_parents() {
    let s = stores();
    let base = s.snapshot(None, 3000);
    let child = s.snapshot(Some(&base), 5000);
    let key = Digest::of(b"some exec");
    s.meta
        .put_result(
            &key,
            &ResultRecord {
                kind: "exec".into(),
                value: "{}".into(),
                snapshot: Some(child.clone()),
            },
        )
        .unwrap();
    s.snapshots
        .label(&child, "regular", "mount / from exec true")
        .unwrap();
    let blob = s.blob(b"a standalone blob");

    let entries = s.gc.entries().await.unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let child_entry = entries
        .iter()
        .find(|e| e.description == "mount / from exec true")
        .unwrap();
    // The native child is a full copy: both files, measured because it recorded no size.
    assert!(child_entry.size >= 8000, "{child_entry:?}");

    let pin = s.snapshots.usage().pin(&child);
    let entries = s.gc.entries().await.unwrap();
    assert!(entries.iter().any(|e| e.in_use));
    let report = s.prune_all().await;
    assert_eq!((report.snapshots, report.blobs), (0, 1), "{report:?}");
    assert!(
        s.exists(&child) && s.exists(&base),
        "pinned, and its parent"
    );
    assert!(s.content.info(&blob).is_none());
    assert!(s.meta.get_result(&key).unwrap().is_some());

    drop(pin);
    let report = s.prune_all().await;
    assert_eq!((report.snapshots, report.results), (2, 1), "{report:?}");
    assert!(report.freed >= 8000 + 3000, "{report:?}");
    assert!(!s.exists(&child) && !s.exists(&base));
    assert!(s.meta.get_result(&key).unwrap().is_none());
    assert!(s.gc.entries().await.unwrap().is_empty());
    // Nothing but debris-free directories is left.
    let left: Vec<_> = std::fs::read_dir(s.snapshots.snapshots_dir())
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn leases_and_running_operations_protect() {
    let s = stores();
    let leased = s.snapshot(None, 10);
    let claimed = s.snapshot(None, 10);
    let blob = s.blob(b"leased blob");
    s.meta
        .create_lease("l1", Some(SystemTime::now() + HOUR))
        .unwrap();
    s.meta
        .add_resource("l1", ResourceKind::Snapshot, &leased)
        .unwrap();
    s.meta
        .add_resource("l1", ResourceKind::Blob, &blob.to_string())
        .unwrap();
    // An expired lease protects nothing (and is removed).
    s.meta
        .create_lease("old", Some(SystemTime::now() - HOUR))
        .unwrap();
    s.meta
        .add_resource("old", ResourceKind::Snapshot, &claimed)
        .unwrap();

    let op = s.gc.usage().begin_operation();
    assert!(s.snapshots.claim(&claimed).unwrap());
    let report = s.prune_all().await;
    assert_eq!((report.snapshots, report.blobs), (0, 0), "{report:?}");
    assert!(s.exists(&leased) && s.exists(&claimed));
    assert!(s.content.info(&blob).is_some());
    assert!(s.meta.lease_resources("old").unwrap().is_empty());

    drop(op);
    s.meta.delete_lease("l1").unwrap();
    let report = s.prune_all().await;
    assert_eq!((report.snapshots, report.blobs), (2, 1), "{report:?}");
    // A claim after the collector removed it reports it gone.
    assert!(!s.snapshots.claim(&claimed).unwrap());
}

#[tokio::test]
async fn default_policy_prunes_least_recently_used_down_to_max_used() {
    let s = stores();
    // Created (and so last used) in this order; timestamps have millisecond resolution.
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(s.snapshot(None, 100_000));
        std::thread::sleep(Duration::from_millis(5));
    }
    let [old, mid, new] = <[String; 3]>::try_from(made).unwrap();
    // About 100 kB each: keeping at most 150 kB leaves the newest alone. The default policy's
    // reserve and free-space target would keep everything here, so they are overridden too.
    let req = PruneRequest::parse(true, "150000", "0", "0", "").unwrap();
    let report = s.gc.prune(&req).await.unwrap();
    assert_eq!(report.snapshots, 2, "{report:?}");
    assert!(!s.exists(&old) && !s.exists(&mid) && s.exists(&new));
    assert!(report.cache_after < report.cache_before);
}

#[tokio::test]
async fn cache_volumes_are_records_and_held_ones_stay() {
    let s = stores();
    let volumes = s.gc.inner.solver.cache_volumes();
    let ok = |_: &Path| Ok(());
    let held = volumes
        .acquire("held", crate::solver::node::Sharing::Shared, ok)
        .await
        .unwrap();
    std::fs::write(held.path.join("data"), vec![1u8; 5000]).unwrap();
    let free = volumes
        .acquire("free", crate::solver::node::Sharing::Shared, ok)
        .await
        .unwrap();
    let free_path = free.path.clone();
    drop(free);

    let entries = s.gc.entries().await.unwrap();
    let vols: Vec<_> = entries
        .iter()
        .filter(|e| e.record_type == RecordType::ExecCacheMount)
        .collect();
    assert_eq!(vols.len(), 2, "{entries:?}");
    assert!(vols
        .iter()
        .any(|e| e.description == "cache volume held" && e.in_use && e.size >= 5000));

    let report = s.prune_all().await;
    assert_eq!(report.volumes, 1, "{report:?}");
    assert!(held.path.is_dir() && !free_path.exists());
    drop(held);
    assert_eq!(s.prune_all().await.volumes, 1);
    // Keys survive in the metadata only while their directory does.
    assert!(s.meta.cache_volumes().unwrap().is_empty());
}
