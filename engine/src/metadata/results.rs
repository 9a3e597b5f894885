//! The solver's persistent cache: results of operations by cache key.

use super::{now_ms, Metadata, Result};
use crate::oci::Digest;
use rusqlite::{params, OptionalExtension};

/// A cached operation result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    pub kind: String,
    /// JSON written by the solver.
    pub value: String,
    pub snapshot: Option<String>,
}

impl Metadata {
    /// Records (or replaces) the result for `key`.
    pub fn put_result(&self, key: &Digest, record: &ResultRecord) -> Result<()> {
        self.with_tx(|tx| {
            tx.tx.execute(
                "INSERT INTO results (key, kind, value, snapshot, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, value = excluded.value,
                     snapshot = excluded.snapshot, last_used_at = excluded.last_used_at",
                params![
                    key.to_string(),
                    record.kind,
                    record.value,
                    record.snapshot,
                    now_ms()
                ],
            )?;
            Ok(())
        })
    }

    /// The result for `key`, marking it used.
    pub fn get_result(&self, key: &Digest) -> Result<Option<ResultRecord>> {
        self.with_tx(|tx| {
            let found = tx
                .tx
                .query_row(
                    "SELECT kind, value, snapshot FROM results WHERE key = ?1",
                    params![key.to_string()],
                    |r| {
                        Ok(ResultRecord {
                            kind: r.get(0)?,
                            value: r.get(1)?,
                            snapshot: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if found.is_some() {
                tx.tx.execute(
                    "UPDATE results SET last_used_at = ?2 WHERE key = ?1",
                    params![key.to_string(), now_ms()],
                )?;
            }
            Ok(found)
        })
    }

    pub fn delete_result(&self, key: &Digest) -> Result<bool> {
        self.with_tx(|tx| {
            Ok(tx.tx.execute(
                "DELETE FROM results WHERE key = ?1",
                params![key.to_string()],
            )? > 0)
        })
    }
}
