use super::*;
use std::time::Duration;

fn db() -> (tempfile::TempDir, Metadata) {
    let dir = tempfile::tempdir().unwrap();
    let md = Metadata::open(&dir.path().join(DB_FILE)).unwrap();
    (dir, md)
}

fn digest(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn committed(md: &Metadata, id: &str, parent: Option<&str>, chain: Option<&Digest>) {
    md.insert_snapshot(
        id,
        parent,
        SnapshotKind::Overlay,
        SnapshotState::Committed,
        chain,
        None,
        0,
    )
    .unwrap();
}

#[test]
fn schema_is_created_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let md = Metadata::open(&path).unwrap();
    assert_eq!(
        md.schema_version().unwrap(),
        schema::MIGRATIONS.len() as i64
    );
    md.put_blob(&digest("a"), 1, "application/octet-stream")
        .unwrap();
    let conn = md.lock();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    let fk: bool = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!((mode.as_str(), sync, fk), ("wal", 2, true));
    drop(conn);
    drop(md);

    // Reopening runs no migration again and keeps the data.
    let md = Metadata::open(&path).unwrap();
    assert_eq!(
        md.schema_version().unwrap(),
        schema::MIGRATIONS.len() as i64
    );
    assert_eq!(md.get_blob(&digest("a")).unwrap().unwrap().size, 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    drop(Metadata::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let err = Metadata::open(&path).unwrap_err();
    assert!(
        matches!(err, MetadataError::UnsupportedSchema { found: 999, .. }),
        "{err}"
    );
}

#[test]
fn garbage_file_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = Metadata::open(&path).unwrap_err();
    assert!(matches!(err, MetadataError::Open { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[test]
fn blob_round_trip() {
    let (_dir, md) = db();
    let d = digest("layer");
    assert_eq!(md.get_blob(&d).unwrap(), None);
    md.put_blob(&d, 42, "application/vnd.oci.image.layer.v1.tar+gzip")
        .unwrap();
    let rec = md.get_blob(&d).unwrap().unwrap();
    assert_eq!(rec.digest, d);
    assert_eq!(rec.size, 42);
    assert_eq!(
        rec.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(rec.created_at, rec.last_used_at);

    std::thread::sleep(Duration::from_millis(5));
    md.touch_blob(&d).unwrap();
    let touched = md.get_blob(&d).unwrap().unwrap();
    assert!(touched.last_used_at > rec.last_used_at);
    assert_eq!(touched.created_at, rec.created_at);

    // Recording it again is fine; with another size it is not.
    md.put_blob(&d, 42, "x").unwrap();
    let err = md.put_blob(&d, 43, "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(md.list_blobs().unwrap().len(), 1);

    assert!(md.delete_blob(&d).unwrap());
    assert!(!md.delete_blob(&d).unwrap());
    assert_eq!(md.touch_blob(&d).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn image_round_trip() {
    let (_dir, md) = db();
    let (name, platform) = ("docker.io/library/alpine:3.20", "linux/amd64");
    let (m1, c1, idx) = (digest("m1"), digest("c1"), digest("idx"));
    md.put_image(name, platform, &m1, &c1, Some(&idx)).unwrap();
    let rec = md.get_image(name, platform).unwrap().unwrap();
    assert_eq!(
        (
            rec.name.as_str(),
            rec.platform.as_str(),
            &rec.manifest_digest,
            &rec.config_digest,
            rec.index_digest.as_ref()
        ),
        (name, platform, &m1, &c1, Some(&idx))
    );
    assert_eq!(md.get_image(name, "linux/arm64").unwrap(), None);

    // The tag moved: same row, new digests, created_at kept.
    let (m2, c2) = (digest("m2"), digest("c2"));
    md.put_image(name, platform, &m2, &c2, None).unwrap();
    let moved = md.get_image(name, platform).unwrap().unwrap();
    assert_eq!(
        (
            &moved.manifest_digest,
            &moved.config_digest,
            moved.index_digest.as_ref()
        ),
        (&m2, &c2, None)
    );
    assert_eq!(moved.created_at, rec.created_at);

    md.put_image(name, "linux/arm64", &m1, &c1, None).unwrap();
    assert_eq!(md.list_images().unwrap().len(), 2);
    md.touch_image(name, platform).unwrap();
    assert!(md.delete_image(name, platform).unwrap());
    assert!(!md.delete_image(name, platform).unwrap());
    assert_eq!(md.list_images().unwrap().len(), 1);
}

#[test]
fn snapshot_round_trip_and_rules() {
    let (_dir, md) = db();
    let (chain, diff) = (digest("chain1"), digest("diff1"));
    md.insert_snapshot(
        "s1",
        None,
        SnapshotKind::Native,
        SnapshotState::Active,
        None,
        None,
        0,
    )
    .unwrap();
    // A child of an active snapshot is refused.
    let err = md
        .insert_snapshot(
            "s2",
            Some("s1"),
            SnapshotKind::Native,
            SnapshotState::Active,
            None,
            None,
            0,
        )
        .unwrap_err();
    assert!(matches!(err, MetadataError::FailedPrecondition(_)), "{err}");

    md.commit_snapshot("s1", Some(&chain), Some(&diff), 1234)
        .unwrap();
    let s1 = md.get_snapshot("s1").unwrap().unwrap();
    assert_eq!(s1.state, SnapshotState::Committed);
    assert_eq!(s1.kind, SnapshotKind::Native);
    assert_eq!(s1.chain_id.as_ref(), Some(&chain));
    assert_eq!(s1.diff_id.as_ref(), Some(&diff));
    assert_eq!(s1.size, 1234);
    assert_eq!(md.snapshot_by_chain_id(&chain).unwrap(), Some(s1.clone()));
    let err = md.commit_snapshot("s1", None, None, 1).unwrap_err();
    assert!(matches!(err, MetadataError::FailedPrecondition(_)), "{err}");
    assert_eq!(
        md.commit_snapshot("nope", None, None, 1)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    committed(&md, "s2", Some("s1"), None);
    committed(&md, "s3", Some("s1"), None);
    let children: Vec<String> = md
        .children_of("s1")
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(children, ["s2", "s3"]);
    let all: Vec<String> = md
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, ["s1", "s2", "s3"]);

    // Unknown parent, duplicate id.
    let err = md
        .insert_snapshot(
            "s4",
            Some("ghost"),
            SnapshotKind::Overlay,
            SnapshotState::Active,
            None,
            None,
            0,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = md
        .insert_snapshot(
            "s2",
            None,
            SnapshotKind::Overlay,
            SnapshotState::Active,
            None,
            None,
            0,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    // A parent with children can't go; leaves can.
    let err = md.remove_snapshot("s1").unwrap_err();
    assert!(matches!(err, MetadataError::FailedPrecondition(_)), "{err}");
    assert!(md.remove_snapshot("s2").unwrap());
    assert!(md.remove_snapshot("s3").unwrap());
    assert!(md.remove_snapshot("s1").unwrap());
    assert!(!md.remove_snapshot("s1").unwrap());
    assert!(md.list_snapshots().unwrap().is_empty());
}

#[test]
fn snapshot_ids_are_safe_directory_names() {
    for ok in ["1", "abc", "sha256-0123", "a.b_c-d", &"x".repeat(128)] {
        validate_snapshot_id(ok).unwrap();
    }
    let long = "x".repeat(129);
    for bad in [
        "", ".", "..", "../x", "a/b", ".hidden", "-x", "new-1", "tmp-abc", "a b", "é", &long,
    ] {
        assert!(validate_snapshot_id(bad).is_err(), "{bad:?}");
    }
    let (_dir, md) = db();
    let err = md
        .insert_snapshot(
            "../escape",
            None,
            SnapshotKind::Overlay,
            SnapshotState::Active,
            None,
            None,
            0,
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn chain_id_is_unique() {
    let (_dir, md) = db();
    let chain = digest("chain");
    committed(&md, "a", None, Some(&chain));
    let err = md
        .insert_snapshot(
            "b",
            None,
            SnapshotKind::Overlay,
            SnapshotState::Committed,
            Some(&chain),
            None,
            0,
        )
        .unwrap_err();
    assert!(matches!(err, MetadataError::AlreadyExists { .. }), "{err}");

    // Two pulls of the same layer: the second commit loses and can look up the winner.
    md.insert_snapshot(
        "c",
        None,
        SnapshotKind::Overlay,
        SnapshotState::Active,
        None,
        None,
        0,
    )
    .unwrap();
    let err = md.commit_snapshot("c", Some(&chain), None, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        md.get_snapshot("c").unwrap().unwrap().state,
        SnapshotState::Active
    );
    assert_eq!(md.snapshot_by_chain_id(&chain).unwrap().unwrap().id, "a");

    // The schema enforces it too, whatever the checks above do.
    let conn = md.lock();
    let raw = conn.execute(
        "UPDATE snapshots SET chain_id = ?1 WHERE id = 'c'",
        [chain.to_string()],
    );
    assert_eq!(
        raw.unwrap_err().sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    );
}

#[derive(Debug)]
#[allow(dead_code)] // the fields are there for the Debug output of a failed assertion
enum TestError {
    Md(MetadataError),
    Io(std::io::Error),
    Boom,
}

impl From<MetadataError> for TestError {
    fn from(e: MetadataError) -> Self {
        TestError::Md(e)
    }
}

/// The snapshotter's pattern: insert the row, rename the directory, commit. A failure anywhere
/// before the commit leaves no row.
#[test]
fn with_tx_commits_or_rolls_back() {
    let (dir, md) = db();
    let snaps = dir.path().join("snapshots");
    std::fs::create_dir_all(snaps.join("new-1")).unwrap();

    let err = md
        .with_tx(|tx| {
            tx.insert_snapshot(
                "s1",
                None,
                SnapshotKind::Overlay,
                SnapshotState::Committed,
                None,
                None,
                0,
            )?;
            tx.put_blob(&digest("b"), 1, "x")?;
            assert!(tx.get_snapshot("s1")?.is_some(), "visible inside the tx");
            Err::<(), _>(TestError::Boom)
        })
        .unwrap_err();
    assert!(matches!(err, TestError::Boom));
    assert_eq!(md.get_snapshot("s1").unwrap(), None);
    assert_eq!(md.get_blob(&digest("b")).unwrap(), None);

    // An error from the API inside the closure converts into the caller's error type.
    let err = md
        .with_tx(|tx| {
            committed_in(tx, "s1")?;
            committed_in(tx, "s1")?;
            Ok::<(), TestError>(())
        })
        .unwrap_err();
    assert!(matches!(
        err,
        TestError::Md(MetadataError::AlreadyExists { .. })
    ));
    assert_eq!(md.get_snapshot("s1").unwrap(), None);

    md.with_tx(|tx| {
        committed_in(tx, "s1")?;
        std::fs::rename(snaps.join("new-1"), snaps.join("s1")).map_err(TestError::Io)?;
        Ok::<(), TestError>(())
    })
    .unwrap();
    assert!(md.get_snapshot("s1").unwrap().is_some());
    assert!(snaps.join("s1").is_dir());

    // A panic inside the closure rolls back too, and the handle stays usable.
    let md2 = md.clone();
    let panicked = std::thread::spawn(move || {
        md2.with_tx(|tx| -> Result<(), MetadataError> {
            committed_in(tx, "s2")?;
            panic!("snapshotter bug");
        })
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(md.get_snapshot("s2").unwrap(), None);
    committed(&md, "s2", None, None);
}

fn committed_in(tx: &Tx<'_>, id: &str) -> Result<(), MetadataError> {
    tx.insert_snapshot(
        id,
        None,
        SnapshotKind::Overlay,
        SnapshotState::Committed,
        None,
        None,
        0,
    )
}

#[test]
fn leases() {
    let (_dir, md) = db();
    let now = SystemTime::now();
    md.create_lease("pull-1", Some(now - Duration::from_secs(10)))
        .unwrap();
    md.create_lease("pull-2", Some(now + Duration::from_secs(3600)))
        .unwrap();
    md.create_lease("forever", None).unwrap();
    assert_eq!(
        md.create_lease("pull-1", None).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    md.add_resource("pull-1", ResourceKind::Blob, &digest("x").to_string())
        .unwrap();
    md.add_resource("pull-1", ResourceKind::Blob, &digest("x").to_string())
        .unwrap(); // idempotent
    md.add_resource("pull-1", ResourceKind::Snapshot, "s1")
        .unwrap();
    assert_eq!(
        md.add_resource("ghost", ResourceKind::Blob, "b")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        md.lease_resources("pull-1").unwrap(),
        vec![
            (ResourceKind::Blob, digest("x").to_string()),
            (ResourceKind::Snapshot, "s1".to_string())
        ]
    );

    assert_eq!(md.expired_leases(now).unwrap(), ["pull-1"]);
    assert_eq!(
        md.expired_leases(now + Duration::from_secs(7200)).unwrap(),
        ["pull-1", "pull-2"]
    );
    assert!(md.delete_lease("pull-1").unwrap());
    assert!(!md.delete_lease("pull-1").unwrap());
    assert!(md.lease_resources("pull-1").unwrap().is_empty(), "cascade");
    assert!(md.expired_leases(now).unwrap().is_empty());
}

/// Startup reconciliation: rows without files go (with descendants and dependants), active
/// snapshots go, files without rows are reported and left alone.
#[test]
fn consistency_check() {
    let (dir, md) = db();
    let blobs = dir.path().join("blobs");
    let snaps = dir.path().join("snapshots");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snaps).unwrap();
    let file = |d: &Digest| std::fs::write(blobs.join(d.hex()), b"x").unwrap();
    let mkdir = |id: &str| std::fs::create_dir(snaps.join(id)).unwrap();

    let (kept, lost, manifest, config, orphan) = (
        digest("kept"),
        digest("lost"),
        digest("manifest"),
        digest("config"),
        digest("orphan"),
    );
    file(&kept);
    file(&manifest);
    file(&orphan);
    std::fs::write(blobs.join("not-a-digest"), b"").unwrap();
    for d in [&kept, &lost, &manifest] {
        md.put_blob(d, 1, "x").unwrap();
    }
    md.put_image("ok", "linux/amd64", &manifest, &kept, None)
        .unwrap();
    md.put_image("broken", "linux/amd64", &manifest, &config, None)
        .unwrap();

    // base ─ mid ─ leaf        (mid's directory is missing: mid and leaf go)
    // other                    (intact)
    // work (active)            (left by a crash)
    for id in ["base", "leaf", "other", "work"] {
        mkdir(id);
    }
    committed(&md, "base", None, None);
    committed(&md, "mid", Some("base"), None);
    committed(&md, "leaf", Some("mid"), None);
    committed(&md, "other", None, None);
    md.insert_snapshot(
        "work",
        Some("base"),
        SnapshotKind::Overlay,
        SnapshotState::Active,
        None,
        None,
        0,
    )
    .unwrap();
    mkdir("new-123");
    mkdir("tmp-9");
    mkdir("stray");

    let report = md.check_consistency(&blobs, &snaps).unwrap();
    assert_eq!(report.removed_blobs, vec![lost.clone()]);
    assert_eq!(
        report.removed_images,
        vec![("broken".to_string(), "linux/amd64".to_string())]
    );
    assert_eq!(report.removed_snapshots, ["leaf", "mid", "work"]);
    let mut orphan_blobs = vec![blobs.join(orphan.hex()), blobs.join("not-a-digest")];
    orphan_blobs.sort();
    assert_eq!(report.orphan_blobs, orphan_blobs);
    assert_eq!(
        report.orphan_dirs,
        ["leaf", "new-123", "stray", "tmp-9", "work"].map(|n| snaps.join(n))
    );

    // Rows only; files are untouched.
    assert!(blobs.join(orphan.hex()).exists());
    assert!(snaps.join("leaf").is_dir());
    let ids: Vec<String> = md
        .list_snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["base", "other"]);
    assert!(md.get_image("ok", "linux/amd64").unwrap().is_some());

    // After the caller deletes the orphans, the check is clean.
    for p in report.orphan_blobs.iter() {
        std::fs::remove_file(p).unwrap();
    }
    for p in report.orphan_dirs.iter() {
        std::fs::remove_dir(p).unwrap();
    }
    assert!(md.check_consistency(&blobs, &snaps).unwrap().is_clean());

    // A missing directory is a configuration error, not an empty store.
    let err = md
        .check_consistency(&dir.path().join("nope"), &snaps)
        .unwrap_err();
    assert!(matches!(err, MetadataError::Io { .. }), "{err}");
    assert_eq!(md.list_blobs().unwrap().len(), 2);
}

/// Several threads share one handle; a second handle on the same file (another connection,
/// as another process would have) waits on the busy timeout instead of failing.
#[test]
fn concurrent_access() {
    let (dir, md) = db();
    let other = Metadata::open(&dir.path().join(DB_FILE)).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let md = if t % 2 == 0 {
                md.clone()
            } else {
                other.clone()
            };
            std::thread::spawn(move || {
                for i in 0..40 {
                    let d = digest(&format!("{t}-{i}"));
                    md.put_blob(&d, i, "x").unwrap();
                    assert_eq!(md.get_blob(&d).unwrap().unwrap().size, i);
                    let id = format!("t{t}-{i}");
                    md.with_tx(|tx| {
                        tx.insert_snapshot(
                            &id,
                            None,
                            SnapshotKind::Native,
                            SnapshotState::Active,
                            None,
                            None,
                            0,
                        )?;
                        tx.commit_snapshot(&id, Some(&d), None, i)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(md.list_blobs().unwrap().len(), 320);
    assert_eq!(other.list_snapshots().unwrap().len(), 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callers_use_run() {
    let (_dir, md) = db();
    let d = digest("async");
    let d2 = d.clone();
    md.run(move |md| md.put_blob(&d2, 7, "x")).await.unwrap();
    let rec = md.run(move |md| md.get_blob(&d)).await.unwrap();
    assert_eq!(rec.unwrap().size, 7);
}
