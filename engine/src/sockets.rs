//! Unix sockets on the client's machine (`Host.unixSocket`), reachable from the engine.
//!
//! The engine may be remote and cannot dial the client, so the client keeps asking: the dagger
//! session registers a socket (`POST /sockets`, which returns an unguessable handle), then
//! long-polls `GET /sockets/<handle>/accept`. When something in the engine connects to the
//! socket's local stand-in (a unix socket under the state directory, e.g. `SSH_AUTH_SOCK` for
//! git over ssh), the poll answers with a connection number; the session connects to the real
//! socket on its machine and opens `GET /sockets/<handle>/conns/<n>` with an HTTP upgrade,
//! and the two streams are joined.
//!
//! The handle is the capability: only the session that registered it (and the IDs it hands
//! out) know it. A socket nobody polls for [`IDLE_LIMIT`] is forgotten, with its stand-in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// How long a connection to a stand-in waits for the client to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A socket whose client stopped polling this long ago is gone.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("unknown socket: it belongs to a client session that has ended, or to another engine")]
    Unknown,
    #[error("no connection {0} is waiting on this socket")]
    NoSuchConnection(u64),
    #[error("cannot create the socket's stand-in {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::error::Classify for SocketError {
    fn kind(&self) -> crate::ErrorKind {
        match self {
            SocketError::Unknown | SocketError::NoSuchConnection(_) => crate::ErrorKind::NotFound,
            SocketError::Listen { .. } => crate::ErrorKind::Internal,
        }
    }
}

/// A byte stream in both directions (an upgraded HTTP connection, a unix stream).
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

type Stream = Box<dyn Duplex>;

struct Entry {
    /// Connection numbers the client should open, in order.
    wanted_tx: mpsc::UnboundedSender<u64>,
    wanted_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
    /// Engine-side connections waiting for the client's stream.
    pending: Mutex<HashMap<u64, oneshot::Sender<Stream>>>,
    last_poll: Mutex<Instant>,
    /// The stand-in, once something asked for it.
    stand_in: tokio::sync::OnceCell<StandIn>,
}

struct StandIn {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct ClientSockets {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientSockets {
    /// Stand-ins live in `dir` (emptied here: leftovers belong to an earlier run).
    pub fn new(dir: PathBuf) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(ClientSockets {
            inner: Arc::new(Inner {
                dir,
                entries: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
            }),
        })
    }

    /// A new socket; returns its handle.
    pub fn register(&self) -> String {
        self.forget_idle();
        let handle = random_handle();
        let (wanted_tx, wanted_rx) = mpsc::unbounded_channel();
        let entry = Entry {
            wanted_tx,
            wanted_rx: tokio::sync::Mutex::new(wanted_rx),
            pending: Mutex::new(HashMap::new()),
            last_poll: Mutex::new(Instant::now()),
            stand_in: tokio::sync::OnceCell::new(),
        };
        lock(&self.inner.entries).insert(handle.clone(), Arc::new(entry));
        handle
    }

    fn entry(&self, handle: &str) -> Result<Arc<Entry>, SocketError> {
        lock(&self.inner.entries)
            .get(handle)
            .cloned()
            .ok_or(SocketError::Unknown)
    }

    /// The client's long poll: the next connection to open, or `None` after `wait`.
    pub async fn next_wanted(
        &self,
        handle: &str,
        wait: Duration,
    ) -> Result<Option<u64>, SocketError> {
        let entry = self.entry(handle)?;
        *lock(&entry.last_poll) = Instant::now();
        let mut rx = entry.wanted_rx.lock().await;
        let next = tokio::time::timeout(wait, rx.recv()).await.ok().flatten();
        *lock(&entry.last_poll) = Instant::now();
        Ok(next)
    }

    /// The client's stream for connection `conn`.
    pub fn deliver(&self, handle: &str, conn: u64, stream: Stream) -> Result<(), SocketError> {
        let entry = self.entry(handle)?;
        let waiting = lock(&entry.pending).remove(&conn);
        match waiting {
            Some(tx) => tx
                .send(stream)
                .map_err(|_| SocketError::NoSuchConnection(conn)),
            None => Err(SocketError::NoSuchConnection(conn)),
        }
    }

    /// A unix socket on the engine's machine standing in for the client's: every connection
    /// to it reaches the client's socket.
    pub async fn stand_in(&self, handle: &str) -> Result<PathBuf, SocketError> {
        let entry = self.entry(handle)?;
        let path = self.inner.dir.join(format!("{}.sock", &handle[..16]));
        let stand_in = entry
            .stand_in
            .get_or_try_init(|| async {
                let _ = std::fs::remove_file(&path);
                let listener = tokio::net::UnixListener::bind(&path).map_err(|source| {
                    SocketError::Listen {
                        path: path.clone(),
                        source,
                    }
                })?;
                let task = tokio::spawn(accept_loop(
                    listener,
                    Arc::downgrade(&entry),
                    self.inner.clone(),
                ));
                Ok::<_, SocketError>(StandIn {
                    path: path.clone(),
                    task,
                })
            })
            .await?;
        Ok(stand_in.path.clone())
    }

    /// Drops sockets whose client stopped polling.
    fn forget_idle(&self) {
        lock(&self.inner.entries).retain(|_, e| lock(&e.last_poll).elapsed() < IDLE_LIMIT);
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    entry: std::sync::Weak<Entry>,
    inner: Arc<Inner>,
) {
    loop {
        let Ok((local, _)) = listener.accept().await else {
            continue;
        };
        let Some(entry) = entry.upgrade() else {
            return;
        };
        let conn = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&entry.pending).insert(conn, tx);
        if entry.wanted_tx.send(conn).is_err() {
            lock(&entry.pending).remove(&conn);
            continue;
        }
        let weak = Arc::downgrade(&entry);
        drop(entry);
        tokio::spawn(async move {
            let remote = tokio::time::timeout(CONNECT_TIMEOUT, rx).await;
            let Ok(Ok(mut remote)) = remote else {
                if let Some(e) = weak.upgrade() {
                    lock(&e.pending).remove(&conn);
                }
                tracing::debug!(conn, "the client did not answer a socket connection");
                return;
            };
            let mut local = local;
            let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
        });
    }
}

fn random_handle() -> String {
    let mut bytes = [0u8; 32];
    match std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        Ok(()) => hex::encode(bytes),
        // Without the kernel's randomness: far weaker, but still unique.
        Err(_) => crate::oci::Digest::of(format!("{:?}{:p}", Instant::now(), &bytes).as_bytes())
            .hex()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_connection_to_the_stand_in_reaches_the_clients_stream() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = ClientSockets::new(dir.path().join("sockets")).unwrap();
        let handle = sockets.register();
        assert_eq!(handle.len(), 64);
        let path = sockets.stand_in(&handle).await.unwrap();
        assert_eq!(
            sockets.stand_in(&handle).await.unwrap(),
            path,
            "one per socket"
        );

        // Nothing wanted yet.
        assert_eq!(
            sockets
                .next_wanted(&handle, Duration::from_millis(10))
                .await
                .unwrap(),
            None
        );
        let engine_side = tokio::spawn({
            let path = path.clone();
            async move {
                let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
                s.write_all(b"ping").await.unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).await.unwrap();
                buf
            }
        });
        let conn = sockets
            .next_wanted(&handle, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("a connection is wanted");
        // The client's side: a pair standing for the upgraded HTTP connection.
        let (ours, mut client) = tokio::io::duplex(64);
        sockets.deliver(&handle, conn, Box::new(ours)).unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        client.write_all(b"pong").await.unwrap();
        assert_eq!(&engine_side.await.unwrap(), b"pong");

        // Delivering twice, or for an unknown handle, fails.
        let (again, _) = tokio::io::duplex(8);
        assert!(sockets.deliver(&handle, conn, Box::new(again)).is_err());
        assert!(matches!(
            sockets.next_wanted("nope", Duration::ZERO).await,
            Err(SocketError::Unknown)
        ));
    }
}
