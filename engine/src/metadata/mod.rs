//! Metadata: the SQLite database of blobs, images, snapshots and leases
//! (`<state>/metadata/metadata.db`).
//!
//! Durability: WAL with `synchronous=FULL`, so a committed transaction survives power loss, and
//! SQLite's own recovery handles a crash mid-transaction (K2). What SQLite can't know is whether
//! the files the rows describe exist; [`Metadata::check_consistency`] reconciles the two at
//! startup.
//!
//! Concurrency: one connection behind a `std::sync::Mutex`. SQLite allows a single writer at a
//! time anyway, so a pool would only add `SQLITE_BUSY` retries between our own connections; one
//! connection also makes [`Metadata::with_tx`] transactions strictly serial within the process.
//! Every statement is short and indexed, so readers waiting on the mutex wait microseconds.
//! `busy_timeout` covers other processes (the `sqlite3` shell, a second handle in tests).
//!
//! Async: every method is synchronous and may block on disk I/O (fsync on commit). From async
//! code, call them inside `tokio::task::spawn_blocking`, or through [`Metadata::run`], which
//! does exactly that. Never hold the handle's lock across an `.await` (the API gives no way to).

mod consistency;
mod gc;
mod layers;
mod results;
mod schema;

#[cfg(test)]
mod tests;

pub use consistency::ConsistencyReport;
pub use gc::{CacheVolumeRow, ResultRow, SnapshotLabel};
pub use layers::LayerBlobRecord;
pub use results::ResultRecord;

use crate::error::{Classify, ErrorKind};
use crate::oci::Digest;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The database's file name inside the state directory's `metadata/`.
pub const DB_FILE: &str = "metadata.db";

/// How long a statement waits for another process's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("cannot open metadata database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("metadata database {path} has schema version {found}, but this engine supports versions up to {supported}; it was written by a newer engine")]
    UnsupportedSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well-formed but the current state forbids it (containerd's
    /// FailedPrecondition), e.g. removing a snapshot that has children.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("metadata database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("metadata consistency check: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata task failed: {0}")]
    Task(String),
}

impl Classify for MetadataError {
    fn kind(&self) -> ErrorKind {
        use rusqlite::ErrorCode as C;
        match self {
            MetadataError::NotFound { .. } => ErrorKind::NotFound,
            MetadataError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            MetadataError::InvalidArgument(_) | MetadataError::FailedPrecondition(_) => {
                ErrorKind::InvalidArgument
            }
            MetadataError::Open { .. } | MetadataError::Io { .. } => ErrorKind::Unavailable,
            MetadataError::Sqlite(e) => match e.sqlite_error_code() {
                Some(
                    C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen,
                ) => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            MetadataError::UnsupportedSchema { .. } | MetadataError::Task(_) => ErrorKind::Internal,
        }
    }
}

type Result<T, E = MetadataError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    Overlay,
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotState {
    /// Being written (a layer being applied, an exec's upper dir). Never survives a restart.
    Active,
    /// Immutable; may be a parent.
    Committed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Blob,
    Snapshot,
}

/// The names stored in the database for the small enums above.
macro_rules! sql_names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!("unknown {} {s:?}", stringify!($ty))),
                }
            }
        }
    };
}
sql_names!(SnapshotKind { Overlay => "overlay", Native => "native" });
sql_names!(SnapshotState { Active => "active", Committed => "committed" });
sql_names!(ResourceKind { Blob => "blob", Snapshot => "snapshot" });

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// The normalized reference, e.g. `docker.io/library/alpine:3.20`.
    pub name: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// The index the manifest was selected from, if the reference named one.
    pub index_digest: Option<Digest>,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Also the directory name under `snapshots/` (see [`validate_snapshot_id`]).
    pub id: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    pub state: SnapshotState,
    /// For image layers: the OCI chain id, unique across snapshots.
    pub chain_id: Option<Digest>,
    pub diff_id: Option<Digest>,
    pub size: u64,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
}

/// Checks that `id` can name a snapshot directory: 1-128 ASCII letters, digits, `_`, `-` and
/// `.`, starting with a letter or digit, and not `new-*`/`tmp-*` (names reserved for
/// directories under construction, which the consistency check always treats as orphans).
pub fn validate_snapshot_id(id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !id.starts_with("new-")
        && !id.starts_with("tmp-");
    if ok {
        Ok(())
    } else {
        Err(MetadataError::InvalidArgument(format!(
            "invalid snapshot id {:?}: expected 1-128 of [A-Za-z0-9_.-] starting with a letter or digit, not new-* or tmp-*",
            id.chars().take(200).collect::<String>()
        )))
    }
}

/// A handle on the metadata database. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Metadata {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Metadata {
    /// Opens (creating if needed) the database file at `path` and migrates it to the current
    /// schema.
    pub fn open(path: &Path) -> Result<Self> {
        let open_err = |source| MetadataError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure(&conn).map_err(|e| match e {
            MetadataError::Sqlite(source) => open_err(source),
            other => other,
        })?;
        schema::migrate(&mut conn, path)?;
        Ok(Metadata {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::from(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Runs `f` on a blocking thread: the way to call this API from async code.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Metadata) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || f(&this)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(MetadataError::Task(e.to_string())),
        }
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`), committing if it returns `Ok`
    /// and rolling back if it returns `Err` or panics.
    ///
    /// This is how a filesystem change and its row stay together: the snapshotter renames
    /// `new-XXXX` to `<id>` *inside* `f`, after inserting the row. If `f` fails, the row is
    /// rolled back (and `f` undoes or leaves its rename for the consistency check); if the
    /// commit itself fails after the rename, the directory is an orphan that
    /// [`Metadata::check_consistency`] reports at the next startup.
    pub fn with_tx<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Tx<'_>) -> Result<T, E>,
        E: From<MetadataError>,
    {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(MetadataError::from)?;
        let tx = Tx { tx };
        let value = f(&tx)?;
        tx.tx.commit().map_err(MetadataError::from)?;
        Ok(value)
    }

    /// Reads in one deferred transaction, so multi-statement reads see one snapshot.
    fn read<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = Tx {
            tx: conn.transaction_with_behavior(TransactionBehavior::Deferred)?,
        };
        f(&tx)
    }

    /// A poisoned mutex is safe to reuse: a panic inside `with_tx` drops the `Transaction`,
    /// which rolls back, so the connection is always back in autocommit mode.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // Blobs.

    pub fn put_blob(&self, digest: &Digest, size: u64, media_type: &str) -> Result<()> {
        self.with_tx(|tx| tx.put_blob(digest, size, media_type))
    }
    pub fn get_blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        self.read(|tx| tx.get_blob(digest))
    }
    pub fn touch_blob(&self, digest: &Digest) -> Result<()> {
        self.with_tx(|tx| tx.touch_blob(digest))
    }
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        self.with_tx(|tx| tx.delete_blob(digest))
    }
    pub fn list_blobs(&self) -> Result<Vec<BlobRecord>> {
        self.read(|tx| tx.list_blobs())
    }

    // Images.

    pub fn put_image(
        &self,
        name: &str,
        platform: &str,
        manifest_digest: &Digest,
        config_digest: &Digest,
        index_digest: Option<&Digest>,
    ) -> Result<()> {
        self.with_tx(|tx| {
            tx.put_image(name, platform, manifest_digest, config_digest, index_digest)
        })
    }
    pub fn get_image(&self, name: &str, platform: &str) -> Result<Option<ImageRecord>> {
        self.read(|tx| tx.get_image(name, platform))
    }
    pub fn touch_image(&self, name: &str, platform: &str) -> Result<()> {
        self.with_tx(|tx| tx.touch_image(name, platform))
    }
    pub fn delete_image(&self, name: &str, platform: &str) -> Result<bool> {
        self.with_tx(|tx| tx.delete_image(name, platform))
    }
    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        self.read(|tx| tx.list_images())
    }

    // Snapshots.

    #[allow(clippy::too_many_arguments)] // one per column; a struct would just restate them
    pub fn insert_snapshot(
        &self,
        id: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        state: SnapshotState,
        chain_id: Option<&Digest>,
        diff_id: Option<&Digest>,
        size: u64,
    ) -> Result<()> {
        self.with_tx(|tx| tx.insert_snapshot(id, parent, kind, state, chain_id, diff_id, size))
    }
    pub fn commit_snapshot(
        &self,
        id: &str,
        chain_id: Option<&Digest>,
        diff_id: Option<&Digest>,
        size: u64,
    ) -> Result<()> {
        self.with_tx(|tx| tx.commit_snapshot(id, chain_id, diff_id, size))
    }
    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        self.read(|tx| tx.get_snapshot(id))
    }
    pub fn snapshot_by_chain_id(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>> {
        self.read(|tx| tx.snapshot_by_chain_id(chain_id))
    }
    pub fn touch_snapshot(&self, id: &str) -> Result<()> {
        self.with_tx(|tx| tx.touch_snapshot(id))
    }
    pub fn remove_snapshot(&self, id: &str) -> Result<bool> {
        self.with_tx(|tx| tx.remove_snapshot(id))
    }
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.read(|tx| tx.list_snapshots())
    }
    pub fn children_of(&self, id: &str) -> Result<Vec<SnapshotRecord>> {
        self.read(|tx| tx.children_of(id))
    }

    // Leases.

    pub fn create_lease(&self, id: &str, expires_at: Option<SystemTime>) -> Result<()> {
        self.with_tx(|tx| tx.create_lease(id, expires_at))
    }
    pub fn add_resource(
        &self,
        lease_id: &str,
        kind: ResourceKind,
        resource_id: &str,
    ) -> Result<()> {
        self.with_tx(|tx| tx.add_resource(lease_id, kind, resource_id))
    }
    pub fn delete_lease(&self, id: &str) -> Result<bool> {
        self.with_tx(|tx| tx.delete_lease(id))
    }
    pub fn expired_leases(&self, now: SystemTime) -> Result<Vec<String>> {
        self.read(|tx| tx.expired_leases(now))
    }
    pub fn lease_resources(&self, lease_id: &str) -> Result<Vec<(ResourceKind, String)>> {
        self.read(|tx| tx.lease_resources(lease_id))
    }
}

/// Connection settings; per connection except `journal_mode`, which the file remembers.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // SQLite falls back silently where WAL can't work (no shared memory, some network
        // filesystems); our durability reasoning assumes WAL, so refuse.
        return Err(MetadataError::InvalidArgument(format!(
            "the metadata database cannot use WAL here (journal_mode is {mode:?})"
        )));
    }
    // FULL: in WAL mode, NORMAL may lose the last commits on power loss, and the content store
    // and snapshotter act on a commit as soon as it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    if !fk {
        return Err(MetadataError::InvalidArgument(
            "this SQLite build does not enforce foreign keys".into(),
        ));
    }
    Ok(())
}

/// One transaction, handed to [`Metadata::with_tx`] closures. Every operation of the API is
/// available here too, so several can commit or roll back together.
pub struct Tx<'a> {
    tx: rusqlite::Transaction<'a>,
}

const BLOB_COLUMNS: &str = "digest, size, media_type, created_at, last_used_at";
const IMAGE_COLUMNS: &str =
    "name, platform, manifest_digest, config_digest, index_digest, created_at, last_used_at";
const SNAPSHOT_COLUMNS: &str =
    "id, parent, kind, state, chain_id, diff_id, size, created_at, last_used_at";

impl Tx<'_> {
    // Blobs.

    /// Records a committed blob (after the content store's commit returned). Recording it
    /// again only refreshes `last_used_at`; a different size for the same digest is refused.
    pub fn put_blob(&self, digest: &Digest, size: u64, media_type: &str) -> Result<()> {
        if let Some(existing) = self.get_blob(digest)? {
            if existing.size != size {
                return Err(MetadataError::InvalidArgument(format!(
                    "blob {digest} is recorded with size {}, not {size}",
                    existing.size
                )));
            }
            return self.touch_blob(digest);
        }
        let now = now_ms();
        self.tx.execute(
            "INSERT INTO blobs (digest, size, media_type, created_at, last_used_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![digest.to_string(), to_i64(size)?, media_type, now],
        )?;
        Ok(())
    }

    pub fn get_blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        Ok(self
            .tx
            .query_row(
                &format!("SELECT {BLOB_COLUMNS} FROM blobs WHERE digest = ?1"),
                [digest.to_string()],
                blob_row,
            )
            .optional()?)
    }

    pub fn touch_blob(&self, digest: &Digest) -> Result<()> {
        let n = self.tx.execute(
            "UPDATE blobs SET last_used_at = ?2 WHERE digest = ?1",
            params![digest.to_string(), now_ms()],
        )?;
        found(n, || format!("blob {digest}"))
    }

    /// Removes the row (not the file). Returns whether there was one.
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let n = self
            .tx
            .execute("DELETE FROM blobs WHERE digest = ?1", [digest.to_string()])?;
        Ok(n > 0)
    }

    pub fn list_blobs(&self) -> Result<Vec<BlobRecord>> {
        self.query(
            &format!("SELECT {BLOB_COLUMNS} FROM blobs ORDER BY digest"),
            [],
            blob_row,
        )
    }

    // Images.

    /// Records (or moves, when the tag now points elsewhere) the image `name` for `platform`.
    pub fn put_image(
        &self,
        name: &str,
        platform: &str,
        manifest_digest: &Digest,
        config_digest: &Digest,
        index_digest: Option<&Digest>,
    ) -> Result<()> {
        self.tx.execute(
            "INSERT INTO images (name, platform, manifest_digest, config_digest, index_digest,
                                 created_at, last_used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (name, platform) DO UPDATE SET
                 manifest_digest = excluded.manifest_digest,
                 config_digest = excluded.config_digest,
                 index_digest = excluded.index_digest,
                 last_used_at = excluded.last_used_at",
            params![
                name,
                platform,
                manifest_digest.to_string(),
                config_digest.to_string(),
                index_digest.map(Digest::to_string),
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub fn get_image(&self, name: &str, platform: &str) -> Result<Option<ImageRecord>> {
        Ok(self
            .tx
            .query_row(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE name = ?1 AND platform = ?2"),
                [name, platform],
                image_row,
            )
            .optional()?)
    }

    pub fn touch_image(&self, name: &str, platform: &str) -> Result<()> {
        let n = self.tx.execute(
            "UPDATE images SET last_used_at = ?3 WHERE name = ?1 AND platform = ?2",
            params![name, platform, now_ms()],
        )?;
        found(n, || format!("image {name} ({platform})"))
    }

    pub fn delete_image(&self, name: &str, platform: &str) -> Result<bool> {
        let n = self.tx.execute(
            "DELETE FROM images WHERE name = ?1 AND platform = ?2",
            [name, platform],
        )?;
        Ok(n > 0)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        self.query(
            &format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY name, platform"),
            [],
            image_row,
        )
    }

    // Snapshots.

    /// Adds a snapshot row. The parent must exist and be committed; `id` must pass
    /// [`validate_snapshot_id`]; `chain_id` must not be taken.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_snapshot(
        &self,
        id: &str,
        parent: Option<&str>,
        kind: SnapshotKind,
        state: SnapshotState,
        chain_id: Option<&Digest>,
        diff_id: Option<&Digest>,
        size: u64,
    ) -> Result<()> {
        validate_snapshot_id(id)?;
        if self.get_snapshot(id)?.is_some() {
            return Err(MetadataError::AlreadyExists {
                what: format!("snapshot {id:?}"),
            });
        }
        if let Some(parent) = parent {
            match self.get_snapshot(parent)? {
                None => {
                    return Err(MetadataError::NotFound {
                        what: format!("parent snapshot {parent:?}"),
                    })
                }
                Some(p) if p.state != SnapshotState::Committed => {
                    return Err(MetadataError::FailedPrecondition(format!(
                        "parent snapshot {parent:?} is not committed"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(chain_id) = chain_id {
            self.chain_id_free(chain_id)?;
        }
        let now = now_ms();
        self.tx.execute(
            "INSERT INTO snapshots (id, parent, kind, state, chain_id, diff_id, size,
                                    created_at, last_used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                id,
                parent,
                kind.as_str(),
                state.as_str(),
                chain_id.map(Digest::to_string),
                diff_id.map(Digest::to_string),
                to_i64(size)?,
                now
            ],
        )?;
        Ok(())
    }

    /// Turns an active snapshot into a committed one. `chain_id`/`diff_id` of `None` keep
    /// what was recorded at insert. A chain id already taken is `AlreadyExists`: another pull
    /// of the same layer won, and the caller should discard its copy and use that one.
    pub fn commit_snapshot(
        &self,
        id: &str,
        chain_id: Option<&Digest>,
        diff_id: Option<&Digest>,
        size: u64,
    ) -> Result<()> {
        let snap = self
            .get_snapshot(id)?
            .ok_or_else(|| MetadataError::NotFound {
                what: format!("snapshot {id:?}"),
            })?;
        if snap.state != SnapshotState::Active {
            return Err(MetadataError::FailedPrecondition(format!(
                "snapshot {id:?} is already committed"
            )));
        }
        if let Some(chain_id) = chain_id {
            if snap.chain_id.as_ref() != Some(chain_id) {
                self.chain_id_free(chain_id)?;
            }
        }
        self.tx.execute(
            "UPDATE snapshots SET state = 'committed',
                 chain_id = COALESCE(?2, chain_id), diff_id = COALESCE(?3, diff_id),
                 size = ?4, last_used_at = ?5
             WHERE id = ?1",
            params![
                id,
                chain_id.map(Digest::to_string),
                diff_id.map(Digest::to_string),
                to_i64(size)?,
                now_ms()
            ],
        )?;
        Ok(())
    }

    fn chain_id_free(&self, chain_id: &Digest) -> Result<()> {
        match self.snapshot_by_chain_id(chain_id)? {
            Some(other) => Err(MetadataError::AlreadyExists {
                what: format!("snapshot with chain id {chain_id} ({:?})", other.id),
            }),
            None => Ok(()),
        }
    }

    pub fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .tx
            .query_row(
                &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"),
                [id],
                snapshot_row,
            )
            .optional()?)
    }

    pub fn snapshot_by_chain_id(&self, chain_id: &Digest) -> Result<Option<SnapshotRecord>> {
        Ok(self
            .tx
            .query_row(
                &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE chain_id = ?1"),
                [chain_id.to_string()],
                snapshot_row,
            )
            .optional()?)
    }

    pub fn touch_snapshot(&self, id: &str) -> Result<()> {
        let n = self.tx.execute(
            "UPDATE snapshots SET last_used_at = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        found(n, || format!("snapshot {id:?}"))
    }

    /// Removes the row (not the directory). Returns whether there was one; a snapshot with
    /// children is refused (remove the children first).
    pub fn remove_snapshot(&self, id: &str) -> Result<bool> {
        let children: i64 = self.tx.query_row(
            "SELECT count(*) FROM snapshots WHERE parent = ?1",
            [id],
            |r| r.get(0),
        )?;
        if children > 0 {
            return Err(MetadataError::FailedPrecondition(format!(
                "snapshot {id:?} has {children} children"
            )));
        }
        let n = self
            .tx
            .execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    /// Every snapshot, parents before their children.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        // A parent always exists before its child is inserted, and rows are never re-parented,
        // so rowid order is a topological order.
        self.query(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY rowid"),
            [],
            snapshot_row,
        )
    }

    pub fn children_of(&self, id: &str) -> Result<Vec<SnapshotRecord>> {
        self.query(
            &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE parent = ?1 ORDER BY id"),
            [id],
            snapshot_row,
        )
    }

    // Leases.

    /// Creates a lease; `expires_at` of `None` never expires (delete it explicitly).
    pub fn create_lease(&self, id: &str, expires_at: Option<SystemTime>) -> Result<()> {
        if id.is_empty() {
            return Err(MetadataError::InvalidArgument("empty lease id".into()));
        }
        let n = self.tx.execute(
            "INSERT INTO leases (id, expires_at, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
            params![id, expires_at.map(to_ms), now_ms()],
        )?;
        if n == 0 {
            return Err(MetadataError::AlreadyExists {
                what: format!("lease {id:?}"),
            });
        }
        Ok(())
    }

    /// Adds a resource to a lease (idempotent). The resource need not have a row yet.
    pub fn add_resource(
        &self,
        lease_id: &str,
        kind: ResourceKind,
        resource_id: &str,
    ) -> Result<()> {
        let lease: Option<String> = self
            .tx
            .query_row("SELECT id FROM leases WHERE id = ?1", [lease_id], |r| {
                r.get(0)
            })
            .optional()?;
        if lease.is_none() {
            return Err(MetadataError::NotFound {
                what: format!("lease {lease_id:?}"),
            });
        }
        self.tx.execute(
            "INSERT INTO lease_resources (lease_id, kind, resource_id) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            [lease_id, kind.as_str(), resource_id],
        )?;
        Ok(())
    }

    /// Deletes a lease and its resource list. Returns whether it existed.
    pub fn delete_lease(&self, id: &str) -> Result<bool> {
        let n = self.tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    /// Leases whose expiry is at or before `now`, oldest first.
    pub fn expired_leases(&self, now: SystemTime) -> Result<Vec<String>> {
        self.query(
            "SELECT id FROM leases WHERE expires_at IS NOT NULL AND expires_at <= ?1
             ORDER BY expires_at, id",
            [to_ms(now)],
            |r| r.get(0),
        )
    }

    pub fn lease_resources(&self, lease_id: &str) -> Result<Vec<(ResourceKind, String)>> {
        self.query(
            "SELECT kind, resource_id FROM lease_resources WHERE lease_id = ?1
             ORDER BY kind, resource_id",
            [lease_id],
            |r| Ok((parse_col(r, 0)?, r.get(1)?)),
        )
    }

    fn query<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.tx.prepare_cached(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.collect::<rusqlite::Result<Vec<T>>>()?)
    }
}

fn found(changed: usize, what: impl FnOnce() -> String) -> Result<()> {
    if changed == 0 {
        return Err(MetadataError::NotFound { what: what() });
    }
    Ok(())
}

fn blob_row(r: &Row<'_>) -> rusqlite::Result<BlobRecord> {
    Ok(BlobRecord {
        digest: parse_col(r, 0)?,
        size: size_col(r, 1)?,
        media_type: r.get(2)?,
        created_at: time_col(r, 3)?,
        last_used_at: time_col(r, 4)?,
    })
}

fn image_row(r: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        platform: r.get(1)?,
        manifest_digest: parse_col(r, 2)?,
        config_digest: parse_col(r, 3)?,
        index_digest: parse_opt_col(r, 4)?,
        created_at: time_col(r, 5)?,
        last_used_at: time_col(r, 6)?,
    })
}

fn snapshot_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        parent: r.get(1)?,
        kind: parse_col(r, 2)?,
        state: parse_col(r, 3)?,
        chain_id: parse_opt_col(r, 4)?,
        diff_id: parse_opt_col(r, 5)?,
        size: size_col(r, 6)?,
        created_at: time_col(r, 7)?,
        last_used_at: time_col(r, 8)?,
    })
}

/// A text column parsed with `FromStr`; a value that doesn't parse is reported as a
/// conversion failure of that column (the database was edited by hand or is corrupt).
fn parse_col<T>(r: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: ToString,
{
    let s: String = r.get(idx)?;
    s.parse()
        .map_err(|e: T::Err| conversion(idx, e.to_string()))
}

fn parse_opt_col<T>(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>>
where
    T: FromStr,
    T::Err: ToString,
{
    match r.get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e: T::Err| conversion(idx, e.to_string())),
    }
}

fn size_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(idx)?;
    u64::try_from(v).map_err(|_| conversion(idx, format!("negative size {v}")))
}

fn time_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<SystemTime> {
    Ok(from_ms(r.get(idx)?))
}

fn conversion(idx: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, message.into())
}

fn to_i64(size: u64) -> Result<i64> {
    i64::try_from(size)
        .map_err(|_| MetadataError::InvalidArgument(format!("size {size} is out of range")))
}

/// Unix milliseconds; times before the epoch clamp to it.
fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}
