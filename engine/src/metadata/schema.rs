//! The schema as an append-only list of migrations; `PRAGMA user_version` records how many have
//! run. Never edit a released migration: add a new one.

use super::MetadataError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// Migration `i` takes the database from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: blobs, images, snapshots, leases. Times are unix milliseconds. STRICT makes SQLite
    // enforce the column types instead of silently storing whatever it is given.
    r#"
    CREATE TABLE blobs (
        digest       TEXT PRIMARY KEY NOT NULL,
        size         INTEGER NOT NULL CHECK (size >= 0),
        media_type   TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE images (
        name            TEXT NOT NULL,
        platform        TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        config_digest   TEXT NOT NULL,
        index_digest    TEXT,
        created_at      INTEGER NOT NULL,
        last_used_at    INTEGER NOT NULL,
        PRIMARY KEY (name, platform)
    ) STRICT;

    -- A parent can't be deleted while a child references it (foreign_keys is on).
    CREATE TABLE snapshots (
        id           TEXT PRIMARY KEY NOT NULL,
        parent       TEXT REFERENCES snapshots(id),
        kind         TEXT NOT NULL CHECK (kind IN ('overlay', 'native')),
        state        TEXT NOT NULL CHECK (state IN ('active', 'committed')),
        chain_id     TEXT UNIQUE,
        diff_id      TEXT,
        size         INTEGER NOT NULL CHECK (size >= 0),
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX snapshots_by_parent ON snapshots(parent);

    CREATE TABLE leases (
        id         TEXT PRIMARY KEY NOT NULL,
        expires_at INTEGER,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX leases_by_expiry ON leases(expires_at) WHERE expires_at IS NOT NULL;

    -- No foreign key to blobs/snapshots: a lease protects a resource from its first write,
    -- before the resource has a row, and outlives a resource removed under it.
    CREATE TABLE lease_resources (
        lease_id    TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
        kind        TEXT NOT NULL CHECK (kind IN ('blob', 'snapshot')),
        resource_id TEXT NOT NULL,
        PRIMARY KEY (lease_id, kind, resource_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX lease_resources_by_resource ON lease_resources(kind, resource_id);
    "#,
    // 2: the solver's persistent cache: operation cache key -> result (JSON). A result that
    // holds a snapshot keeps it (the foreign key stops the snapshot's row from going first).
    r#"
    CREATE TABLE results (
        key          TEXT PRIMARY KEY NOT NULL,
        kind         TEXT NOT NULL,
        value        TEXT NOT NULL,
        snapshot     TEXT REFERENCES snapshots(id),
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX results_by_snapshot ON results(snapshot);
    "#,
    // 3: what the garbage collector reports and ages. A label says what made a snapshot (its
    // record type and a description); it goes with the snapshot. Cache volumes are directories
    // under `cachemounts/` named by a digest of their key: the key (for descriptions) and the
    // times are kept here.
    r#"
    CREATE TABLE snapshot_labels (
        id          TEXT PRIMARY KEY NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        record_type TEXT NOT NULL,
        description TEXT NOT NULL
    ) STRICT;

    CREATE TABLE cache_volumes (
        name         TEXT PRIMARY KEY NOT NULL,
        key          TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL
    ) STRICT;
    "#,
    // 4: image layer blobs made from (or pulled for) a snapshot, one per compression, so a
    // snapshot is never compressed twice and a pulled layer is pushed as pulled. `source` is
    // the repository ("host/repo") a pulled blob came from. The row goes with its snapshot; the
    // blob file itself is owned by the snapshot for the garbage collector.
    r#"
    CREATE TABLE layer_blobs (
        snapshot    TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        compression TEXT NOT NULL CHECK (compression IN ('gzip', 'zstd', 'none')),
        digest      TEXT NOT NULL,
        size        INTEGER NOT NULL CHECK (size >= 0),
        diff_id     TEXT NOT NULL,
        source      TEXT,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (snapshot, compression)
    ) STRICT;
    CREATE INDEX layer_blobs_by_digest ON layer_blobs(digest);
    "#,
];

/// Brings the database at `path` up to the latest version, refusing one written by a newer
/// engine (its schema may mean something we don't know).
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), MetadataError> {
    let latest = MIGRATIONS.len() as i64;
    // IMMEDIATE: two processes opening a fresh database at once must not both run migration 1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if !(0..=latest).contains(&version) {
        return Err(MetadataError::UnsupportedSchema {
            path: path.to_path_buf(),
            found: version,
            supported: latest,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        // user_version lives in the database header, so it commits with the migration.
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tracing::info!(
            "metadata: migrated {} to schema version {}",
            path.display(),
            i + 1
        );
    }
    tx.commit()?;
    Ok(())
}
