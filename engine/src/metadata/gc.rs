//! Queries the garbage collector needs: whole-table listings, labels, live leases, batched
//! last-used updates and the per-row deletions it runs inside one transaction.

use super::{parse_col, time_col, to_ms, Metadata, ResourceKind, Result, Tx};
use rusqlite::params;
use std::time::SystemTime;

/// A row of the solver's result cache, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRow {
    pub key: String,
    pub kind: String,
    pub snapshot: Option<String>,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
}

/// What made a snapshot: a GC record type (`regular`, `source.git.checkout`...) and a
/// human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLabel {
    pub record_type: String,
    pub description: String,
}

/// A cache volume directory's key and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheVolumeRow {
    pub name: String,
    pub key: String,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
}

impl Metadata {
    /// Labels snapshot `id`; a no-op when the snapshot is gone (a label is only a description).
    pub fn label_snapshot(&self, id: &str, record_type: &str, description: &str) -> Result<()> {
        self.with_tx(|tx| {
            tx.tx.execute(
                "INSERT INTO snapshot_labels (id, record_type, description)
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM snapshots WHERE id = ?1)
                 ON CONFLICT (id) DO UPDATE SET record_type = excluded.record_type,
                     description = excluded.description",
                params![id, record_type, description],
            )?;
            Ok(())
        })
    }

    pub fn snapshot_labels(&self) -> Result<Vec<(String, SnapshotLabel)>> {
        self.read(|tx| {
            tx.query(
                "SELECT id, record_type, description FROM snapshot_labels ORDER BY id",
                [],
                |r| {
                    Ok((
                        r.get(0)?,
                        SnapshotLabel {
                            record_type: r.get(1)?,
                            description: r.get(2)?,
                        },
                    ))
                },
            )
        })
    }

    pub fn list_results(&self) -> Result<Vec<ResultRow>> {
        self.read(|tx| {
            tx.query(
                "SELECT key, kind, snapshot, created_at, last_used_at FROM results ORDER BY key",
                [],
                |r| {
                    Ok(ResultRow {
                        key: r.get(0)?,
                        kind: r.get(1)?,
                        snapshot: r.get(2)?,
                        created_at: time_col(r, 3)?,
                        last_used_at: time_col(r, 4)?,
                    })
                },
            )
        })
    }

    /// Resources held by leases that have not expired at `now`.
    pub fn leased_resources(&self, now: SystemTime) -> Result<Vec<(ResourceKind, String)>> {
        self.read(|tx| tx.leased_resources(now))
    }

    /// Deletes every lease expired at `now` (with its resource list). Returns how many.
    pub fn delete_expired_leases(&self, now: SystemTime) -> Result<usize> {
        self.with_tx(|tx| {
            Ok(tx.tx.execute(
                "DELETE FROM leases WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [to_ms(now)],
            )?)
        })
    }

    /// Moves snapshots' last-used times forward (never back) in one transaction. Unknown ids
    /// are ignored.
    pub fn touch_snapshots_at(&self, times: &[(String, SystemTime)]) -> Result<()> {
        if times.is_empty() {
            return Ok(());
        }
        self.with_tx(|tx| {
            let mut stmt = tx.tx.prepare_cached(
                "UPDATE snapshots SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
            )?;
            for (id, at) in times {
                stmt.execute(params![id, to_ms(*at)])?;
            }
            Ok(())
        })
    }

    pub fn cache_volumes(&self) -> Result<Vec<CacheVolumeRow>> {
        self.read(|tx| {
            tx.query(
                "SELECT name, key, created_at, last_used_at FROM cache_volumes ORDER BY name",
                [],
                |r| {
                    Ok(CacheVolumeRow {
                        name: r.get(0)?,
                        key: r.get(1)?,
                        created_at: time_col(r, 2)?,
                        last_used_at: time_col(r, 3)?,
                    })
                },
            )
        })
    }

    /// Records that the volume directory `name` (for `key`) was used at `at`.
    pub fn touch_cache_volume(&self, name: &str, key: &str, at: SystemTime) -> Result<()> {
        self.with_tx(|tx| {
            tx.tx.execute(
                "INSERT INTO cache_volumes (name, key, created_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (name) DO UPDATE SET key = excluded.key,
                     last_used_at = max(last_used_at, excluded.last_used_at)",
                params![name, key, to_ms(at)],
            )?;
            Ok(())
        })
    }

    pub fn delete_cache_volume(&self, name: &str) -> Result<bool> {
        self.with_tx(|tx| {
            Ok(tx
                .tx
                .execute("DELETE FROM cache_volumes WHERE name = ?1", [name])?
                > 0)
        })
    }
}

impl Tx<'_> {
    /// Resources held by leases that have not expired at `now`.
    pub fn leased_resources(&self, now: SystemTime) -> Result<Vec<(ResourceKind, String)>> {
        self.query(
            "SELECT DISTINCT r.kind, r.resource_id FROM lease_resources r
             JOIN leases l ON l.id = r.lease_id
             WHERE l.expires_at IS NULL OR l.expires_at > ?1",
            [to_ms(now)],
            |r| Ok((parse_col(r, 0)?, r.get(1)?)),
        )
    }

    /// How many snapshots name `id` as their parent.
    pub fn child_count(&self, id: &str) -> Result<u64> {
        let n: i64 = self.tx.query_row(
            "SELECT count(*) FROM snapshots WHERE parent = ?1",
            [id],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes the cached results that hold snapshot `id`. Returns how many.
    pub fn delete_results_of(&self, id: &str) -> Result<usize> {
        Ok(self
            .tx
            .execute("DELETE FROM results WHERE snapshot = ?1", [id])?)
    }

    /// Deletes one cached result by its key text. Returns whether it existed.
    pub fn delete_result_key(&self, key: &str) -> Result<bool> {
        Ok(self
            .tx
            .execute("DELETE FROM results WHERE key = ?1", [key])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{MetadataError, ResultRecord, SnapshotKind, SnapshotState};
    use crate::oci::Digest;
    use std::time::Duration;

    fn open() -> (tempfile::TempDir, Metadata) {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::open(&dir.path().join("m.db")).unwrap();
        (dir, md)
    }

    fn snapshot(md: &Metadata, id: &str, parent: Option<&str>) {
        md.insert_snapshot(
            id,
            parent,
            SnapshotKind::Overlay,
            SnapshotState::Committed,
            None,
            None,
            1,
        )
        .unwrap();
    }

    #[test]
    fn labels_go_with_their_snapshot() {
        let (_d, md) = open();
        snapshot(&md, "s1", None);
        md.label_snapshot("s1", "source.git.checkout", "git snapshot for x#y")
            .unwrap();
        md.label_snapshot("gone", "regular", "nothing").unwrap();
        let labels = md.snapshot_labels().unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels[0].1.record_type, "source.git.checkout");
        md.with_tx(|tx| tx.remove_snapshot("s1")).unwrap();
        assert!(md.snapshot_labels().unwrap().is_empty());
    }

    #[test]
    fn leases_expire_and_last_used_only_moves_forward() {
        let (_d, md) = open();
        snapshot(&md, "s1", None);
        let now = SystemTime::now();
        md.create_lease("live", Some(now + Duration::from_secs(60)))
            .unwrap();
        md.create_lease("dead", Some(now - Duration::from_secs(60)))
            .unwrap();
        md.add_resource("live", ResourceKind::Snapshot, "s1")
            .unwrap();
        md.add_resource("dead", ResourceKind::Blob, "sha256:x")
            .unwrap();
        assert_eq!(
            md.leased_resources(now).unwrap(),
            vec![(ResourceKind::Snapshot, "s1".to_string())]
        );
        assert_eq!(md.delete_expired_leases(now).unwrap(), 1);

        let later = now + Duration::from_secs(3600);
        md.touch_snapshots_at(&[("s1".into(), later), ("unknown".into(), later)])
            .unwrap();
        md.touch_snapshots_at(&[("s1".into(), now - Duration::from_secs(3600))])
            .unwrap();
        let used = md.get_snapshot("s1").unwrap().unwrap().last_used_at;
        assert!(used >= later - Duration::from_millis(1), "{used:?}");
    }

    #[test]
    fn cache_volume_rows() {
        let (_d, md) = open();
        let t = SystemTime::now();
        md.touch_cache_volume("abc", "go-mod", t).unwrap();
        md.touch_cache_volume("abc", "go-mod", t - Duration::from_secs(10))
            .unwrap();
        let rows = md.cache_volumes().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].key, "go-mod");
        assert!(rows[0].last_used_at >= t - Duration::from_millis(1));
        assert!(md.delete_cache_volume("abc").unwrap());
        assert!(md.cache_volumes().unwrap().is_empty());
    }

    #[test]
    fn per_row_deletions() {
        let (_d, md) = open();
        snapshot(&md, "p", None);
        snapshot(&md, "c", Some("p"));
        let key = Digest::of(b"k");
        md.put_result(
            &key,
            &ResultRecord {
                kind: "exec".into(),
                value: "{}".into(),
                snapshot: Some("c".into()),
            },
        )
        .unwrap();
        md.with_tx(|tx| {
            assert_eq!(tx.child_count("p")?, 1);
            assert_eq!(tx.delete_results_of("c")?, 1);
            assert!(tx.remove_snapshot("c")?);
            assert_eq!(tx.child_count("p")?, 0);
            assert!(!tx.delete_result_key(&key.to_string())?);
            Ok::<_, MetadataError>(())
        })
        .unwrap();
        assert_eq!(md.list_results().unwrap(), vec![]);
    }

    /// A snapshot directory that vanished takes its cached results with it at start-up,
    /// instead of the results' foreign key failing the whole check.
    #[test]
    fn consistency_check_drops_results_of_missing_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::open(&dir.path().join("m.db")).unwrap();
        let (blobs, snaps) = (dir.path().join("blobs"), dir.path().join("snapshots"));
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(snaps.join("kept")).unwrap();
        snapshot(&md, "kept", None);
        snapshot(&md, "lost", None);
        for (name, snap) in [("a", "kept"), ("b", "lost")] {
            md.put_result(
                &Digest::of(name.as_bytes()),
                &ResultRecord {
                    kind: "exec".into(),
                    value: "{}".into(),
                    snapshot: Some(snap.into()),
                },
            )
            .unwrap();
        }
        let report = md.check_consistency(&blobs, &snaps).unwrap();
        assert_eq!(report.removed_snapshots, vec!["lost".to_string()]);
        let left: Vec<_> = md
            .list_results()
            .unwrap()
            .into_iter()
            .map(|r| r.snapshot)
            .collect();
        assert_eq!(left, vec![Some("kept".to_string())]);
    }
}
