//! Layer blobs per snapshot and compression (migration 4): what image export reuses instead of
//! compressing a snapshot again, and what the garbage collector attaches to a snapshot.

use super::{now_ms, parse_col, size_col, to_i64, Metadata, Result};
use crate::oci::Digest;
use rusqlite::{params, OptionalExtension};

/// One compressed (or uncompressed) layer blob of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlobRecord {
    pub snapshot: String,
    /// `gzip`, `zstd` or `none`.
    pub compression: String,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    /// The repository (`host/repo`) the blob was pulled from, if it was pulled.
    pub source: Option<String>,
}

fn layer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LayerBlobRecord> {
    Ok(LayerBlobRecord {
        snapshot: r.get(0)?,
        compression: r.get(1)?,
        digest: parse_col(r, 2)?,
        size: size_col(r, 3)?,
        diff_id: parse_col(r, 4)?,
        source: r.get(5)?,
    })
}

const COLUMNS: &str = "snapshot, compression, digest, size, diff_id, source";

impl Metadata {
    /// Records a layer blob of `rec.snapshot`; a no-op when the snapshot is gone. An existing
    /// row for the same snapshot and compression is replaced.
    pub fn put_layer_blob(&self, rec: &LayerBlobRecord) -> Result<()> {
        let size = to_i64(rec.size)?;
        self.with_tx(|tx| {
            tx.tx.execute(
                "INSERT INTO layer_blobs (snapshot, compression, digest, size, diff_id, source, created_at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM snapshots WHERE id = ?1)
                 ON CONFLICT (snapshot, compression) DO UPDATE SET digest = excluded.digest,
                     size = excluded.size, diff_id = excluded.diff_id,
                     source = coalesce(excluded.source, source)",
                params![
                    rec.snapshot,
                    rec.compression,
                    rec.digest.to_string(),
                    size,
                    rec.diff_id.to_string(),
                    rec.source,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// The layer blobs recorded for `snapshot`, by compression name.
    pub fn layer_blobs(&self, snapshot: &str) -> Result<Vec<LayerBlobRecord>> {
        self.read(|tx| {
            tx.query(
                &format!(
                    "SELECT {COLUMNS} FROM layer_blobs WHERE snapshot = ?1 ORDER BY compression"
                ),
                [snapshot],
                layer_row,
            )
        })
    }

    /// Every layer blob row (for the garbage collector: a blob belongs to its snapshot).
    pub fn list_layer_blobs(&self) -> Result<Vec<LayerBlobRecord>> {
        self.read(|tx| {
            tx.query(
                &format!("SELECT {COLUMNS} FROM layer_blobs ORDER BY snapshot, compression"),
                [],
                layer_row,
            )
        })
    }

    /// Repositories a blob was pulled from (for cross-repository mounts).
    pub fn layer_sources(&self, digest: &Digest) -> Result<Vec<String>> {
        self.read(|tx| {
            let mut out: Vec<String> = tx.query(
                "SELECT DISTINCT source FROM layer_blobs WHERE digest = ?1 AND source IS NOT NULL ORDER BY source",
                [digest.to_string()],
                |r| r.get(0),
            )?;
            out.dedup();
            Ok(out)
        })
    }

    /// The row for one snapshot and compression, if any.
    pub fn layer_blob(&self, snapshot: &str, compression: &str) -> Result<Option<LayerBlobRecord>> {
        self.read(|tx| {
            Ok(tx
                .tx
                .query_row(
                    &format!("SELECT {COLUMNS} FROM layer_blobs WHERE snapshot = ?1 AND compression = ?2"),
                    [snapshot, compression],
                    layer_row,
                )
                .optional()?)
        })
    }
}
