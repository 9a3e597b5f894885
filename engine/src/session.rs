//! Client sessions: the engine → client channel.
//!
//! The CLI (`dagger session`, `dagger run`, `dagger query`) picks a random session id, opens
//! `GET /sessions/<id>/events` (a long-lived stream of JSON lines) and sends every request with
//! the header `X-Dagger-Session-Id: <id>`. The stream carries:
//!
//! * progress events of the work done for that session's requests ([`crate::progress`]);
//! * export requests: `Directory.export` and `File.export` write to the *client's* disk, and
//!   the engine may be remote, so the resolver registers a pending export here, sends an
//!   `export` event, and waits for the client to download the tar
//!   (`GET /sessions/<id>/exports/<n>`) and report the outcome
//!   (`POST /sessions/<id>/exports/<n>`).
//!
//! The session lives as long as its event stream: when the stream closes, the session is
//! removed and every export still waiting fails.
//!
//! Layering: above the solver (it packs solver trees), below the API (resolvers use it) and
//! the server (which serves the routes).

use crate::archive::diff::{EntryKind as TarKind, Header as TarHeader, TarWriter};
use crate::error::{Classify, ErrorKind};
use crate::progress::{Event, Reporter, Sink, Status};
use crate::snapshot::Snapshotter;
use crate::solver::TreeRef;
use crate::sys::fsops::{self, FileKind, Meta};
use crate::sys::inroot::Root;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// The request header naming the client session.
pub const SESSION_HEADER: &str = "x-dagger-session-id";

/// Events queued for a client that reads slowly; progress beyond this is dropped (exports
/// wait for room instead).
const QUEUE: usize = 4096;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("{what} writes to the client's disk, so it needs a client session: run it through `dagger run`, an SDK (which starts `dagger session`) or `dagger query`, not a plain POST /query")]
    NoSession { what: String },
    #[error("client session {id:?} is not connected to this engine (its event stream is closed)")]
    NotConnected { id: String },
    #[error("a client session with id {id:?} is already connected")]
    AlreadyConnected { id: String },
    #[error("invalid session id {id:?}: use 16 to 64 characters from [A-Za-z0-9_-]")]
    InvalidId { id: String },
    #[error("the client session ended before the export to {path:?} finished")]
    Ended { path: String },
    /// The client could not write the export; its message explains why.
    #[error("{0}")]
    Client(String),
}

impl Classify for SessionError {
    fn kind(&self) -> ErrorKind {
        match self {
            SessionError::NoSession { .. } | SessionError::InvalidId { .. } => {
                ErrorKind::InvalidArgument
            }
            SessionError::NotConnected { .. } | SessionError::Ended { .. } => {
                ErrorKind::Unavailable
            }
            SessionError::AlreadyConnected { .. } => ErrorKind::AlreadyExists,
            SessionError::Client(_) => ErrorKind::InvalidArgument,
        }
    }
}

/// Checks a client-chosen session id (it appears in URLs and logs).
pub fn check_id(id: &str) -> Result<(), SessionError> {
    let ok = (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SessionError::InvalidId {
            id: id.chars().take(80).collect(),
        })
    }
}

/// The client session a GraphQL request belongs to, as resolvers see it (`Request::data`):
/// `None` without an `X-Dagger-Session-Id` header; `Some(Err(id))` when the header names a
/// session that is not connected.
#[derive(Clone)]
pub struct RequestSession(pub Option<Result<Arc<Session>, String>>);

impl RequestSession {
    /// The connected session, or why `what` cannot reach the client.
    pub fn require(&self, what: &str) -> Result<&Arc<Session>, SessionError> {
        match &self.0 {
            Some(Ok(s)) => Ok(s),
            Some(Err(id)) => Err(SessionError::NotConnected { id: id.clone() }),
            None => Err(SessionError::NoSession { what: what.into() }),
        }
    }
}

/// The connected sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects session `id`: returns it and the receiving end of its event stream (JSON
    /// lines, each ending in `\n`). The first line is `{"type":"hello",...}`.
    pub fn open(&self, id: &str) -> Result<(Arc<Session>, mpsc::Receiver<String>), SessionError> {
        check_id(id)?;
        let mut map = self.lock();
        if map.contains_key(id) {
            return Err(SessionError::AlreadyConnected { id: id.into() });
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let session = Arc::new(Session {
            id: id.to_string(),
            tx,
            exports: Mutex::new(HashMap::new()),
            next_export: AtomicU64::new(1),
            reported: Mutex::new(HashSet::new()),
            closed: AtomicBool::new(false),
        });
        let _ = session.tx.try_send(line(&serde_json::json!({
            "type": "hello",
            "session": id,
            "engineVersion": crate::VERSION,
        })));
        map.insert(id.to_string(), session.clone());
        tracing::debug!(session = id, "client session connected");
        Ok((session, rx))
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// Ends `session` (its stream closed): removes it and fails its pending exports.
    pub fn close(&self, session: &Arc<Session>) {
        {
            let mut map = self.lock();
            if map
                .get(&session.id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                map.remove(&session.id);
            }
        }
        session.closed.store(true, Ordering::SeqCst);
        // Dropping the reply senders wakes every waiting resolver with `Ended`.
        session.lock_exports().clear();
        tracing::debug!(session = %session.id, "client session ended");
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Directory,
    File,
}

impl ExportKind {
    fn as_str(self) -> &'static str {
        match self {
            ExportKind::Directory => "directory",
            ExportKind::File => "file",
        }
    }
}

/// An evaluated tree to send: a directory, or a single file.
#[derive(Clone)]
pub struct ExportSource {
    pub snapshots: Snapshotter,
    pub tree: TreeRef,
    pub kind: ExportKind,
}

/// Where and how the client writes it (Dagger's arguments).
#[derive(Debug, Clone, Default)]
pub struct ExportRequest {
    /// The client's path, relative to its working directory.
    pub path: String,
    pub wipe: bool,
    pub allow_parent_dir_path: bool,
}

struct Pending {
    source: ExportSource,
    reply: oneshot::Sender<Result<String, String>>,
    /// Whether the client has started downloading it (only once).
    taken: bool,
}

/// One connected client session.
pub struct Session {
    id: String,
    tx: mpsc::Sender<String>,
    exports: Mutex<HashMap<u64, Pending>>,
    next_export: AtomicU64,
    /// Operation keys already reported done or cached to this client, so a chain re-sent by
    /// an SDK does not list the same cached work again.
    reported: Mutex<HashSet<String>>,
    closed: AtomicBool,
}

fn line(v: &serde_json::Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Removes a pending export when its resolver finishes or is cancelled.
struct PendingGuard<'a> {
    session: &'a Session,
    n: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.session.lock_exports().remove(&self.n);
    }
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock_exports(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reporter that sends progress events down this session's stream.
    pub fn reporter(self: &Arc<Self>) -> Reporter {
        Reporter::new(self.clone())
    }

    /// Asks the client to write `source` at `request.path` and waits for its answer: the
    /// absolute path it wrote, or why it could not.
    pub async fn export(
        &self,
        source: ExportSource,
        request: &ExportRequest,
    ) -> Result<String, SessionError> {
        let ended = || SessionError::Ended {
            path: request.path.clone(),
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(SessionError::NotConnected {
                id: self.id.clone(),
            });
        }
        let n = self.next_export.fetch_add(1, Ordering::Relaxed);
        let kind = source.kind;
        let name = source
            .tree
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let (reply, answer) = oneshot::channel();
        self.lock_exports().insert(
            n,
            Pending {
                source,
                reply,
                taken: false,
            },
        );
        let _guard = PendingGuard { session: self, n };
        let event = serde_json::json!({
            "type": "export",
            "n": n,
            "kind": kind.as_str(),
            "path": request.path,
            "name": name,
            "wipe": request.wipe,
            "allowParentDirPath": request.allow_parent_dir_path,
        });
        self.tx.send(line(&event)).await.map_err(|_| ended())?;
        match answer.await {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(message)) => Err(SessionError::Client(message)),
            Err(_) => Err(ended()),
        }
    }

    /// Queues a `sync` marker behind every event queued so far: when the client reads it, it
    /// has seen all of them (the CLI syncs before it ends a session, so late events are not
    /// lost). False when the stream is gone.
    pub async fn sync(&self, token: u64) -> bool {
        let marker = serde_json::json!({ "type": "sync", "token": token });
        self.tx.send(line(&marker)).await.is_ok()
    }

    /// The tree of export `n`, for its (single) download.
    pub fn take_export(&self, n: u64) -> Option<ExportSource> {
        let mut exports = self.lock_exports();
        let p = exports.get_mut(&n)?;
        if p.taken {
            return None;
        }
        p.taken = true;
        Some(p.source.clone())
    }

    /// The client's answer for export `n`; false when no such export is waiting.
    pub fn finish_export(&self, n: u64, result: Result<String, String>) -> bool {
        match self.lock_exports().remove(&n) {
            Some(p) => {
                let _ = p.reply.send(result);
                true
            }
            None => false,
        }
    }
}

impl Sink for Session {
    fn emit(&self, event: Event) {
        if let Some(key) = &event.key {
            let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
            match event.status {
                Status::Cached if !reported.insert(key.clone()) => return,
                Status::Done { .. } => {
                    reported.insert(key.clone());
                }
                _ => {}
            }
        }
        // Progress is best effort: a client that does not read loses events, never stalls
        // the solver.
        let _ = self.tx.try_send(line(&event.to_json()));
    }
}

// ---------------------------------------------------------------------------------------
// The export tar
// ---------------------------------------------------------------------------------------

/// Writes `source` as a tar to `out` (with the engine's deterministic ustar/PAX writer): a
/// directory's entries (relative names, sorted, symlinks as links, never followed), or a
/// single regular file under its own name. Device nodes, fifos and sockets are left out (a
/// client's disk gets files, directories and links only). Times are the snapshot's, so the
/// same tree always gives the same bytes.
pub fn write_tar(source: &ExportSource, out: impl Write) -> io::Result<()> {
    let view = source
        .snapshots
        .view(source.tree.snapshot.as_ref())
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut tw = TarWriter::new(out);
    match source.kind {
        ExportKind::Directory => {
            let root = fsops::open_dir(view.root())?;
            let rel = Path::new(source.tree.path.trim_start_matches('/'));
            let dir = fsops::open_dir_in_root(root.as_fd(), rel)?;
            walk(dir.as_fd(), &mut tw)?;
        }
        ExportKind::File => {
            let root = Root::open(view.root())?;
            let mut file = root.open_file(&source.tree.path)?;
            let m = fsops::fstat(file.as_fd())?;
            let name = source.tree.path.rsplit('/').next().unwrap_or_default();
            if name.is_empty() {
                return Err(io::Error::other("the file has no name"));
            }
            tw.append(
                &header(name.as_bytes().to_vec(), &m, TarKind::File, m.size),
                Some(&mut file),
            )?;
        }
    }
    tw.finish()?.flush()
}

fn header(path: Vec<u8>, m: &Meta, kind: TarKind, size: u64) -> TarHeader {
    TarHeader {
        path,
        kind,
        mode: m.mode,
        uid: u64::from(m.uid),
        gid: u64::from(m.gid),
        size,
        mtime: m.mtime.secs,
        xattrs: Vec::new(),
    }
}

fn walk<W: Write>(dir: BorrowedFd<'_>, tw: &mut TarWriter<W>) -> io::Result<()> {
    fsops::walk_sorted(dir, &mut |dir, name, path, m| {
        let path = path.to_vec();
        match m.kind {
            FileKind::Dir => tw.append(&header(path, m, TarKind::Dir, 0), None),
            FileKind::File => {
                let mut f = fsops::open_file_at(dir, name)?;
                // The size of this open file: the snapshot is immutable, but be exact.
                let size = fsops::fstat(f.as_fd())?.size;
                tw.append(&header(path, m, TarKind::File, size), Some(&mut f))
            }
            FileKind::Symlink => {
                let target = fsops::readlink_at(dir, name)?;
                let kind = TarKind::Symlink(target.as_bytes().to_vec());
                tw.append(&header(path, m, kind, 0), None)
            }
            _ => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_checked() {
        assert!(check_id("0123456789abcdef").is_ok());
        assert!(check_id("short").is_err());
        assert!(check_id("../../../../etc/passwd-xx").is_err());
        assert!(check_id(&"a".repeat(65)).is_err());
    }

    #[tokio::test]
    async fn closing_a_session_fails_its_waiting_exports_and_frees_the_id() {
        let sessions = Sessions::new();
        let (s, mut rx) = sessions.open("session-0123456789").unwrap();
        assert!(matches!(
            sessions.open("session-0123456789"),
            Err(SessionError::AlreadyConnected { .. })
        ));
        let hello: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(hello["type"], "hello");

        // Progress: a cached key is reported once; a done key is not reported as cached.
        let ev = |key: &str, status| Event {
            id: 1,
            name: "withExec x".into(),
            key: Some(key.into()),
            status,
        };
        s.emit(ev("a", Status::Cached));
        s.emit(ev("a", Status::Cached));
        s.emit(ev(
            "b",
            Status::Done {
                elapsed: std::time::Duration::ZERO,
            },
        ));
        s.emit(ev("b", Status::Cached));
        let mut lines = Vec::new();
        while let Ok(l) = rx.try_recv() {
            lines.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
        }
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|v| (v["key"].as_str().unwrap(), v["status"].as_str().unwrap()))
            .collect();
        assert_eq!(got, [("a", "cached"), ("b", "done")]);

        sessions.close(&s);
        assert!(sessions.get("session-0123456789").is_none());
        assert!(sessions.open("session-0123456789").is_ok());
    }
}
