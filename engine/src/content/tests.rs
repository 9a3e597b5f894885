use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("blobs"), dir.path().join("ingest")).unwrap();
    (dir, store)
}

/// Deterministic bytes, more than one re-hash buffer (1 MiB) long when `len` asks for it.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn ingest_entries(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn put(store: &ContentStore, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    w.write_all(data).unwrap();
    assert_eq!(w.commit().unwrap(), data.len() as u64);
    d
}

#[test]
fn write_commit_read_list_delete() {
    let (dir, store) = store();
    let data = payload(1000);
    let d = put(&store, &data);
    assert_eq!(store.info(&d), Some(1000));
    assert_eq!(store.read_blob(&d, 1000).unwrap(), data);
    let mut read = Vec::new();
    store.open_blob(&d).unwrap().read_to_end(&mut read).unwrap();
    assert_eq!(read, data);
    assert_eq!(store.blob_path(&d), dir.path().join("blobs").join(d.hex()));
    assert_eq!(store.list().unwrap(), vec![(d.clone(), 1000)]);
    assert!(ingest_entries(&dir).is_empty(), "commit removes the ingest");

    store.delete(&d).unwrap();
    assert_eq!(store.info(&d), None);
    assert!(store.list().unwrap().is_empty());
    let err = store.delete(&d).unwrap_err();
    assert!(matches!(err, ContentError::NotFound { .. }), "{err}");
    let err = store.open_blob(&d).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains(&d.to_string()), "{err}");
}

#[test]
fn empty_blob() {
    let (_dir, store) = store();
    let d = put(&store, b"");
    assert_eq!(store.info(&d), Some(0));
    assert_eq!(store.read_blob(&d, 0).unwrap(), b"");
}

/// C1: the wrong digest fails the commit, publishes nothing and removes the ingest.
#[test]
fn c1_wrong_digest() {
    let (dir, store) = store();
    let claimed = Digest::of(b"what the descriptor says");
    let mut w = store.writer(&claimed, 5).unwrap();
    w.write_all(b"other").unwrap();
    match w.commit() {
        Err(ContentError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(b"other"));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(store.info(&claimed), None);
    assert!(store.list().unwrap().is_empty());
    assert!(ingest_entries(&dir).is_empty());
    // The digest is free again.
    store.writer(&claimed, 5).unwrap();
}

/// C2: short content fails the commit; over-long content fails the write that overflows, before
/// anything past the expected size reaches the disk, and then the commit.
#[test]
fn c2_wrong_size() {
    let (dir, store) = store();
    let data = payload(100);
    let d = Digest::of(&data);

    let mut w = store.writer(&d, 100).unwrap();
    w.write_all(&data[..60]).unwrap();
    let err = w.commit().unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::SizeMismatch {
                expected: 100,
                actual: 60,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(ingest_entries(&dir).is_empty());

    let mut w = store.writer(&d, 100).unwrap();
    w.write_all(&data).unwrap();
    let err = w.write(b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    assert_eq!(w.offset(), 100);
    let data_file = dir.path().join("ingest").join(d.hex()).join(DATA_FILE);
    assert_eq!(std::fs::metadata(&data_file).unwrap().len(), 100);
    // Once overflowed, the writer refuses everything and the commit fails.
    assert!(matches!(
        w.write_chunk(b"y"),
        Err(ContentError::SizeMismatch { .. })
    ));
    let err = w.commit().unwrap_err();
    assert!(
        matches!(err, ContentError::SizeMismatch { actual: 101, .. }),
        "{err}"
    );
    assert_eq!(store.info(&d), None);
    assert!(ingest_entries(&dir).is_empty());

    // A single chunk that straddles the limit writes nothing.
    let mut w = store.writer(&d, 10).unwrap();
    assert!(matches!(
        w.write_chunk(&data[..11]),
        Err(ContentError::SizeMismatch { actual: 11, .. })
    ));
    assert_eq!(w.offset(), 0);
}

/// C3: one writer per digest; the second gets Busy (Unavailable) until the first is dropped.
#[test]
fn c3_second_writer_is_busy() {
    let (_dir, store) = store();
    let d = Digest::of(b"abc");
    let first = store.writer(&d, 3).unwrap();
    let err = store.clone().writer(&d, 3).unwrap_err();
    assert!(matches!(err, ContentError::Busy { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    // From another thread too.
    let s = store.clone();
    let d2 = d.clone();
    let from_thread = std::thread::spawn(move || s.writer(&d2, 3).map(|_| ()))
        .join()
        .unwrap();
    assert!(matches!(from_thread, Err(ContentError::Busy { .. })));
    // Other digests are independent.
    store.writer(&Digest::of(b"xyz"), 3).unwrap();
    drop(first);
    store.writer(&d, 3).unwrap();
}

/// Many threads race to write, commit and restart the same blob: exactly one commit wins, the
/// others see Busy or AlreadyExists, and the result is intact with no ingest left over.
#[test]
fn racing_writers_commit_once() {
    let (dir, store) = store();
    let data = Arc::new(payload(64 * 1024));
    let d = Digest::of(&data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, data, d) = (store.clone(), data.clone(), d.clone());
            std::thread::spawn(move || {
                let mut commits = 0;
                for _ in 0..50 {
                    match store.writer(&d, data.len() as u64) {
                        Ok(mut w) => {
                            let at = w.offset() as usize;
                            w.write_all(&data[at..]).unwrap();
                            w.commit().unwrap();
                            commits += 1;
                        }
                        Err(ContentError::Busy { .. })
                        | Err(ContentError::AlreadyExists { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                commits
            })
        })
        .collect();
    let commits: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(commits, 1);
    assert_eq!(store.read_blob(&d, u64::MAX).unwrap(), *data);
    assert!(
        ingest_entries(&dir).is_empty(),
        "{:?}",
        ingest_entries(&dir)
    );
}

/// A dropped writer keeps its data; the next writer resumes at its offset (re-hashing the
/// prefix, here larger than one read buffer) and commits.
#[test]
fn resume_after_drop() {
    let (_dir, store) = store();
    let data = payload(3 * 1024 * 1024 + 17);
    let d = Digest::of(&data);
    let half = data.len() / 2;
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    w.write_all(&data[..half]).unwrap();
    assert_eq!(w.offset(), half as u64);
    drop(w);
    assert_eq!(store.info(&d), None, "a partial ingest is not content");

    let mut w = store.writer(&d, data.len() as u64).unwrap();
    assert_eq!(w.offset(), half as u64);
    w.write_all(&data[half..]).unwrap();
    assert_eq!(w.commit().unwrap(), data.len() as u64);
    assert_eq!(store.read_blob(&d, u64::MAX).unwrap(), data);
}

/// The server ignored our Range request: start again from 0.
#[test]
fn truncate_then_rewrite() {
    let (_dir, store) = store();
    let data = payload(5000);
    let d = Digest::of(&data);
    let mut w = store.writer(&d, 5000).unwrap();
    w.write_all(b"garbage that is not the blob").unwrap();
    drop(w);
    let mut w = store.writer(&d, 5000).unwrap();
    assert_eq!(w.offset(), 28);
    w.truncate().unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    assert_eq!(store.read_blob(&d, 5000).unwrap(), data);
}

/// An ingest longer than the expected size can't be a prefix of the blob: it restarts at 0.
#[test]
fn oversized_leftover_ingest_restarts() {
    let (dir, store) = store();
    let d = Digest::of(b"abc");
    let ingest = dir.path().join("ingest").join(d.hex());
    std::fs::create_dir_all(&ingest).unwrap();
    std::fs::write(ingest.join(DATA_FILE), b"abcdef").unwrap();
    let mut w = store.writer(&d, 3).unwrap();
    assert_eq!(w.offset(), 0);
    w.write_all(b"abc").unwrap();
    w.commit().unwrap();
}

/// C6: committed blobs have no write bits.
#[test]
fn c6_committed_blob_is_read_only() {
    let (_dir, store) = store();
    let d = put(&store, b"ro");
    let mode = std::fs::metadata(store.blob_path(&d))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0, "mode {mode:o}");
}

/// C7: a writer for a committed blob is AlreadyExists, and a leftover ingest for it is removed.
#[test]
fn c7_writer_for_committed_blob() {
    let (dir, store) = store();
    let d = put(&store, b"here");
    let err = store.writer(&d, 4).unwrap_err();
    assert!(matches!(err, ContentError::AlreadyExists { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // A crash after the rename but before the ingest was removed leaves one behind.
    let ingest = dir.path().join("ingest").join(d.hex());
    std::fs::create_dir_all(&ingest).unwrap();
    std::fs::write(ingest.join(DATA_FILE), b"he").unwrap();
    assert!(matches!(
        store.writer(&d, 4),
        Err(ContentError::AlreadyExists { .. })
    ));
    assert!(ingest_entries(&dir).is_empty());
}

#[test]
fn read_blob_is_capped() {
    let (_dir, store) = store();
    let d = put(&store, &payload(4096));
    assert_eq!(store.read_blob(&d, 4096).unwrap().len(), 4096);
    let err = store.read_blob(&d, 4095).unwrap_err();
    assert!(
        matches!(
            err,
            ContentError::TooLarge {
                size: 4096,
                max: 4095,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        store.read_blob(&Digest::of(b"missing"), 10),
        Err(ContentError::NotFound { .. })
    ));
}

#[test]
fn clean_stale_ingests_skips_held_and_recent() {
    let (dir, store) = store();
    let (a, b) = (Digest::of(b"aaaa"), Digest::of(b"bbbb"));
    let mut held = store.writer(&a, 4).unwrap();
    held.write_all(b"aa").unwrap();
    let mut dropped = store.writer(&b, 4).unwrap();
    dropped.write_all(b"bb").unwrap();
    drop(dropped);
    // Debris: a half-removed ingest and something that is not ours to judge.
    std::fs::create_dir_all(dir.path().join("ingest/.trash-x-1-0/sub")).unwrap();
    std::fs::create_dir_all(dir.path().join("ingest/unknown")).unwrap();

    assert_eq!(
        store
            .clean_stale_ingests(Duration::from_secs(3600))
            .unwrap(),
        0,
        "recent ingests stay"
    );
    assert_eq!(ingest_entries(&dir), vec![a.hex(), b.hex(), "unknown"]);

    assert_eq!(store.clean_stale_ingests(Duration::ZERO).unwrap(), 1);
    assert_eq!(ingest_entries(&dir), vec![a.hex(), "unknown"]);
    // The held writer is unaffected.
    held.write_all(b"aa").unwrap();
    held.commit().unwrap();
}

/// Nothing of an ingest is ever visible as content: not through info, open_blob, read_blob or
/// list, whatever state the writer is in.
#[test]
fn partial_ingest_is_never_visible() {
    let (_dir, store) = store();
    let data = payload(10_000);
    let d = Digest::of(&data);
    let assert_invisible = |store: &ContentStore| {
        assert_eq!(store.info(&d), None);
        assert!(matches!(
            store.open_blob(&d),
            Err(ContentError::NotFound { .. })
        ));
        assert!(store.read_blob(&d, u64::MAX).is_err());
        assert!(store.list().unwrap().is_empty());
    };
    let mut w = store.writer(&d, 10_000).unwrap();
    assert_invisible(&store);
    w.write_all(&data[..9_999]).unwrap();
    w.flush().unwrap();
    assert_invisible(&store);
    drop(w);
    assert_invisible(&store);
}

const CRASH_CHILD_ENV: &str = "DAGGER_TEST_CONTENT_CRASH_CHILD";
const CRASH_PAYLOAD: usize = 2 * 1024 * 1024 + 5;
const CRASH_HALF: usize = 1024 * 1024 + 3;

/// Run by `ingest_survives_kill_9_and_resumes` in a child process: writes half a blob, says so,
/// then waits to be killed. Does nothing when run on its own.
#[test]
#[ignore = "child process of ingest_survives_kill_9_and_resumes"]
fn crash_child() {
    let Some(root) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let root = PathBuf::from(root);
    let store = ContentStore::open(root.join("blobs"), root.join("ingest")).unwrap();
    let data = payload(CRASH_PAYLOAD);
    let mut w = store.writer(&Digest::of(&data), data.len() as u64).unwrap();
    w.write_all(&data[..CRASH_HALF]).unwrap();
    std::fs::write(root.join("ready"), b"").unwrap();
    // Bounded, so an orphaned child can't linger if the parent dies first.
    std::thread::sleep(Duration::from_secs(120));
}

/// Kills its child on drop, so a failing assertion never leaks the process.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// C3 across processes and C4/K1: another process holding the ingest makes us Busy; after it
/// is SIGKILLed mid-download, nothing is visible, and the ingest resumes from its offset.
#[test]
fn ingest_survives_kill_9_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ContentStore::open(dir.path().join("blobs"), dir.path().join("ingest")).unwrap();
    let data = payload(CRASH_PAYLOAD);
    let d = Digest::of(&data);
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["content::tests::crash_child", "--exact", "--ignored"])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.path().join("ready").exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("child exited early: {status}");
        }
        assert!(Instant::now() < deadline, "child never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    let err = store.writer(&d, data.len() as u64).unwrap_err();
    assert!(matches!(err, ContentError::Busy { .. }), "{err}");
    assert_eq!(store.info(&d), None);

    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert_eq!(store.info(&d), None);
    assert!(store.open_blob(&d).is_err());
    assert!(store.list().unwrap().is_empty());

    let mut w = store.writer(&d, data.len() as u64).unwrap();
    assert_eq!(w.offset(), CRASH_HALF as u64);
    w.write_all(&data[CRASH_HALF..]).unwrap();
    w.commit().unwrap();
    assert_eq!(store.read_blob(&d, u64::MAX).unwrap(), data);
}
