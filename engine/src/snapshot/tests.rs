use super::*;

fn snapshotter(kind: SnapshotKind) -> (tempfile::TempDir, Snapshotter) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Metadata::open(&dir.path().join("metadata.db")).unwrap();
    for d in ["snapshots", "tmp"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let s = Snapshotter::new(
        kind,
        dir.path().join("snapshots"),
        dir.path().join("tmp"),
        meta,
    );
    (dir, s)
}

fn read(view: &View, path: &str) -> Option<String> {
    std::fs::read_to_string(view.root().join(path)).ok()
}

/// A base snapshot, two execs branching from it, and one exec on top of another: each sees
/// its ancestors' changes and none of its siblings'.
fn branches(kind: SnapshotKind) {
    let (_dir, s) = snapshotter(kind);
    let base = {
        let a = s.prepare(None).unwrap();
        std::fs::write(a.fs().join("base.txt"), "base").unwrap();
        std::fs::write(a.fs().join("gone.txt"), "x").unwrap();
        s.commit(a, None, None, 0).unwrap()
    };
    let left = {
        let e = s.prepare_exec(Some(&base)).unwrap();
        assert_eq!(
            std::fs::read_to_string(e.path().join("base.txt")).unwrap(),
            "base"
        );
        std::fs::write(e.path().join("left.txt"), "L").unwrap();
        std::fs::remove_file(e.path().join("gone.txt")).unwrap();
        s.commit_exec(e).unwrap()
    };
    let right = {
        let e = s.prepare_exec(Some(&base)).unwrap();
        std::fs::write(e.path().join("right.txt"), "R").unwrap();
        s.commit_exec(e).unwrap()
    };
    let top = {
        let e = s.prepare_exec(Some(&left)).unwrap();
        std::fs::write(e.path().join("top.txt"), "T").unwrap();
        s.commit_exec(e).unwrap()
    };
    let v = s.view(Some(&left)).unwrap();
    assert_eq!(read(&v, "left.txt").as_deref(), Some("L"));
    assert_eq!(read(&v, "right.txt"), None);
    assert_eq!(read(&v, "gone.txt"), None, "deletion visible");
    drop(v);
    let v = s.view(Some(&right)).unwrap();
    assert_eq!(read(&v, "right.txt").as_deref(), Some("R"));
    assert_eq!(read(&v, "left.txt"), None);
    assert_eq!(read(&v, "gone.txt").as_deref(), Some("x"));
    drop(v);
    let v = s.view(Some(&top)).unwrap();
    assert_eq!(read(&v, "top.txt").as_deref(), Some("T"));
    assert_eq!(read(&v, "left.txt").as_deref(), Some("L"));
    assert_eq!(read(&v, "base.txt").as_deref(), Some("base"));
    drop(v);
    // Discarded execs leave nothing behind.
    let e = s.prepare_exec(Some(&base)).unwrap();
    std::fs::write(e.path().join("junk"), "j").unwrap();
    drop(e);
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.clone())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("new-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(&s.tmp).unwrap().count(),
        0,
        "mounts and views removed"
    );
}

#[test]
fn overlay_branches_are_isolated() {
    branches(SnapshotKind::Overlay);
}

#[test]
fn native_branches_are_isolated() {
    branches(SnapshotKind::Native);
}

#[test]
fn exec_on_scratch() {
    for kind in [SnapshotKind::Overlay, SnapshotKind::Native] {
        let (_dir, s) = snapshotter(kind);
        let e = s.prepare_exec(None).unwrap();
        std::fs::write(e.path().join("hello"), "hi").unwrap();
        let id = s.commit_exec(e).unwrap();
        let v = s.view(Some(&id)).unwrap();
        assert_eq!(read(&v, "hello").as_deref(), Some("hi"));
        let names: Vec<_> = std::fs::read_dir(v.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no overlay plumbing in the tree: {names:?}");
    }
}
