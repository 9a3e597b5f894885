//! Garbage collection of the local cache, with BuildKit/Dagger policy semantics.
//!
//! **Records.** Every committed snapshot is one record; what depends on it travels with it: the
//! solver's cached results that hold it, the image rows whose top layer it is, and the blobs
//! of those images (a layer blob goes with its layer's snapshot). What is left over becomes its
//! own record: results without a snapshot, images whose layers are gone, blobs no image names,
//! and cache volumes (directories under `cachemounts/`). Each byte on disk is counted in
//! exactly one record, so the records' sizes add up to the cache's size.
//!
//! **Order.** A snapshot's record goes only after every record of its children (the snapshot
//! table's foreign key would refuse it anyway); among those that may go, the least recently
//! used goes first.
//!
//! **Never in use.** A record is kept when its snapshot is pinned or was obtained by a running
//! operation ([`Usage`]), when an unexpired lease names its snapshot or one of its blobs, or
//! (cache volumes) while an exec holds it. The check and the row deletion run together inside
//! [`Usage::exclusive`]; the solver forgets memoised values naming a removed snapshot before
//! that lock is released.
//!
//! **Crash safety.** Rows go first, in one transaction; directories and blob files after. A
//! crash in between leaves files without rows, which the start-up consistency check removes
//! (snapshot directories) or adopts (blobs, collected on a later run).

mod du;
pub mod policy;

#[cfg(test)]
mod tests;

pub use crate::snapshot::usage::{Operation, Usage};
pub use policy::{Filter, Policy, RecordType};

use crate::config::{DiskSpace, WorkerConfig};
use crate::content::{ContentError, ContentStore};
use crate::error::{Classify, ErrorKind};
use crate::metadata::{ImageRecord, Metadata, MetadataError, ResourceKind, SnapshotState};
use crate::oci::Digest;
use crate::snapshot::{SnapshotError, Snapshotter};
use crate::solver::Solver;
use policy::Candidate;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// Dagger's default reserve: min(10% of the disk, 10 GB).
const DEFAULT_RESERVE_PERCENT: u8 = 10;
const DEFAULT_RESERVE_CAP: u64 = 10_000_000_000;
/// Cap on manifests and configs read to find an image's blobs.
const MAX_IMAGE_JSON: u64 = 4 << 20;
/// Automatic runs after operations finish: at most this often.
const AFTER_OPERATIONS_THROTTLE: Duration = Duration::from_secs(60);
const PRESSURE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const PRESSURE_THROTTLE: Duration = Duration::from_secs(30);
/// Names of cache-volume directories being deleted.
const VOLUME_TRASH_PREFIX: &str = ".gc-";

#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot read the disk space of {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache volume {path}: {source}")]
    Volume {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("garbage collection task failed: {0}")]
    Task(String),
}

impl Classify for GcError {
    fn kind(&self) -> ErrorKind {
        match self {
            GcError::Metadata(e) => e.kind(),
            GcError::Snapshot(e) => e.kind(),
            GcError::Content(e) => e.kind(),
            GcError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            GcError::Disk { .. } | GcError::Volume { .. } => ErrorKind::Unavailable,
            GcError::Task(_) => ErrorKind::Internal,
        }
    }
}

/// A space limit before the disk's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Unset,
    Set(DiskSpace),
    /// Dagger's default reserve (see [`DEFAULT_RESERVE_CAP`]).
    DefaultReserve,
}

impl Space {
    fn of(v: Option<DiskSpace>) -> Space {
        v.map_or(Space::Unset, Space::Set)
    }

    fn bytes(self, disk_total: Option<u64>) -> u64 {
        match self {
            Space::Unset => 0,
            Space::Set(d) => d.to_bytes(disk_total),
            Space::DefaultReserve => DiskSpace::Percent(DEFAULT_RESERVE_PERCENT)
                .to_bytes(disk_total)
                .min(DEFAULT_RESERVE_CAP),
        }
    }
}

/// A policy as configured; byte values are resolved against the disk at each run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicySpec {
    all: bool,
    filter: Filter,
    keep_duration: Option<Duration>,
    reserved: Space,
    max_used: Space,
    min_free: Space,
}

impl PolicySpec {
    fn resolve(&self, disk_total: Option<u64>) -> Policy {
        Policy {
            all: self.all,
            filter: self.filter.clone(),
            keep_duration: self.keep_duration,
            reserved_space: self.reserved.bytes(disk_total),
            max_used_space: self.max_used.bytes(disk_total),
            min_free_space: self.min_free.bytes(disk_total),
            target_space: 0,
        }
    }
}

/// The collector's configuration (`[worker.oci]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Automatic collection (`gc`); manual pruning works either way.
    pub enabled: bool,
    policies: Vec<PolicySpec>,
}

impl Settings {
    /// The policies Dagger v0.21 runs: `[[worker.oci.gcpolicy]]` when given, otherwise three
    /// generated ones over the engine-wide space limits (themselves defaulted when none of
    /// `reservedSpace`, `maxUsedSpace`, `minFreeSpace`, `gckeepstorage` is set).
    pub fn from_config(w: &WorkerConfig) -> Result<Settings, GcError> {
        let policies = if w.gc_policies.is_empty() {
            let mut reserved = Space::of(w.reserved_space.or(w.gc_keep_storage));
            let mut max_used = Space::of(w.max_used_space);
            let mut min_free = Space::of(w.min_free_space);
            if [reserved, max_used, min_free] == [Space::Unset; 3] {
                reserved = Space::DefaultReserve;
                max_used = Space::Set(DiskSpace::Percent(75));
                min_free = Space::Set(DiskSpace::Percent(20));
            }
            default_policies(reserved, max_used, min_free)
        } else {
            let mut out = Vec::new();
            for (i, p) in w.gc_policies.iter().enumerate() {
                let filter = Filter::parse(&p.filters).map_err(|e| {
                    GcError::InvalidArgument(format!("worker.oci.gcpolicy[{i}].filters: {e}"))
                })?;
                out.push(PolicySpec {
                    all: p.all,
                    filter,
                    keep_duration: p.keep_duration.map(|d| d.0).filter(|d| !d.is_zero()),
                    // keepBytes is the legacy name of reservedSpace.
                    reserved: Space::of(p.reserved_space.or(p.keep_bytes)),
                    max_used: Space::of(p.max_used_space),
                    min_free: Space::of(p.min_free_space),
                });
            }
            out
        };
        Ok(Settings {
            enabled: w.gc,
            policies,
        })
    }

    fn resolve(&self, disk_total: Option<u64>) -> Vec<Policy> {
        self.policies
            .iter()
            .map(|p| p.resolve(disk_total))
            .collect()
    }
}

/// Dagger v0.21's three default policies. The first one's filter is three ORed strings: the
/// single comma-joined string Dagger passes ANDs its selectors and never matches (fixed in
/// BuildKit #6856); this is the intended behaviour.
fn default_policies(reserved: Space, max_used: Space, min_free: Space) -> Vec<PolicySpec> {
    let reproducible = Filter::parse(&[
        "type==source.local",
        "type==exec.cachemount",
        "type==source.git.checkout",
    ])
    .unwrap_or_default();
    vec![
        PolicySpec {
            all: false,
            filter: reproducible,
            keep_duration: Some(Duration::from_secs(48 * 3600)),
            reserved: Space::Unset,
            max_used: Space::Set(DiskSpace::Bytes(512_000_000)),
            min_free: Space::Unset,
        },
        PolicySpec {
            all: false,
            filter: Filter::default(),
            keep_duration: Some(Duration::from_secs(60 * 24 * 3600)),
            reserved,
            max_used,
            min_free,
        },
        PolicySpec {
            all: true,
            filter: Filter::default(),
            keep_duration: None,
            reserved,
            max_used,
            min_free,
        },
    ]
}

/// The space limits `EngineCache` reports: the last (catch-all) policy's, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceLimits {
    pub reserved_space: u64,
    pub max_used_space: u64,
    pub min_free_space: u64,
    pub target_space: u64,
}

/// What `prune` was asked to do. Space overrides apply to every policy that runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneRequest {
    pub use_default_policy: bool,
    pub max_used_space: Option<DiskSpace>,
    pub reserved_space: Option<DiskSpace>,
    pub min_free_space: Option<DiskSpace>,
    pub target_space: Option<DiskSpace>,
}

impl PruneRequest {
    /// From the GraphQL arguments; an empty string means "not set".
    pub fn parse(
        use_default_policy: bool,
        max_used_space: &str,
        reserved_space: &str,
        min_free_space: &str,
        target_space: &str,
    ) -> Result<PruneRequest, GcError> {
        let space = |name: &str, v: &str| -> Result<Option<DiskSpace>, GcError> {
            if v.trim().is_empty() {
                return Ok(None);
            }
            DiskSpace::parse(v)
                .map(Some)
                .map_err(|e| GcError::InvalidArgument(format!("{name}: {e}")))
        };
        Ok(PruneRequest {
            use_default_policy,
            max_used_space: space("maxUsedSpace", max_used_space)?,
            reserved_space: space("reservedSpace", reserved_space)?,
            min_free_space: space("minFreeSpace", min_free_space)?,
            target_space: space("targetSpace", target_space)?,
        })
    }
}

/// One cache entry, as `EngineCacheEntry` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub description: String,
    pub size: u64,
    pub created: SystemTime,
    pub last_used: SystemTime,
    pub in_use: bool,
    pub record_type: RecordType,
}

/// What one run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub snapshots: usize,
    pub results: usize,
    pub images: usize,
    pub blobs: usize,
    pub volumes: usize,
    pub freed: u64,
    pub cache_before: u64,
    pub cache_after: u64,
    pub free_before: Option<u64>,
    pub free_after: Option<u64>,
}

/// The collector. Cheap to clone.
#[derive(Clone)]
pub struct Gc {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Metadata,
    content: ContentStore,
    snapshots: Snapshotter,
    solver: Solver,
    /// The state directory: its filesystem is the disk the limits refer to.
    root: PathBuf,
    settings: Settings,
    /// One run at a time (automatic runs and prunes alike).
    running: tokio::sync::Mutex<()>,
    /// Measured sizes of snapshots that recorded none (snapshots never change).
    snapshot_sizes: Mutex<HashMap<String, u64>>,
    /// Measured sizes of cache volumes, valid while their last-used time is unchanged.
    volume_sizes: Mutex<HashMap<String, (SystemTime, u64)>>,
}

impl Gc {
    pub fn new(solver: Solver, content: ContentStore, settings: Settings, root: PathBuf) -> Gc {
        Gc {
            inner: Arc::new(Inner {
                meta: solver.metadata().clone(),
                snapshots: solver.snapshotter().clone(),
                content,
                solver,
                root,
                settings,
                running: tokio::sync::Mutex::new(()),
                snapshot_sizes: Mutex::new(HashMap::new()),
                volume_sizes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The registry of what is in use (operations register here).
    pub fn usage(&self) -> &Usage {
        self.inner.snapshots.usage()
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn disk_total(&self) -> Option<u64> {
        crate::sys::fs_total_bytes(&self.inner.root).ok()
    }

    fn disk_free(&self) -> Option<u64> {
        crate::sys::fs_free_bytes(&self.inner.root).ok()
    }

    /// The configured default policy's limits (zero when automatic GC is off, as in Dagger).
    pub fn space_limits(&self) -> SpaceLimits {
        if !self.inner.settings.enabled {
            return SpaceLimits::default();
        }
        match self.inner.settings.resolve(self.disk_total()).pop() {
            Some(p) => SpaceLimits {
                reserved_space: p.reserved_space,
                max_used_space: p.max_used_space,
                min_free_space: p.min_free_space,
                target_space: p.target_space,
            },
            None => SpaceLimits::default(),
        }
    }

    /// Every record in the cache.
    pub async fn entries(&self) -> Result<Vec<Entry>, GcError> {
        let this = self.clone();
        blocking(move || {
            let g = this.gather()?;
            Ok(g.records
                .into_iter()
                .map(|r| Entry {
                    description: r.cand.description,
                    size: r.cand.size,
                    created: r.created,
                    last_used: r.cand.last_used,
                    in_use: r.cand.in_use,
                    record_type: r.cand.record_type,
                })
                .collect())
        })
        .await
    }

    /// `EngineCache.prune`: everything not in use, or the configured policies, with the
    /// request's space overrides applied to each policy.
    pub async fn prune(&self, req: &PruneRequest) -> Result<Report, GcError> {
        let total = self.disk_total();
        let mut policies = if req.use_default_policy && self.inner.settings.enabled {
            self.inner.settings.resolve(total)
        } else {
            vec![Policy {
                all: true,
                ..Policy::default()
            }]
        };
        for p in &mut policies {
            if let Some(v) = req.max_used_space {
                p.max_used_space = v.to_bytes(total);
            }
            if let Some(v) = req.reserved_space {
                p.reserved_space = v.to_bytes(total);
            }
            if let Some(v) = req.min_free_space {
                p.min_free_space = v.to_bytes(total);
            }
            if let Some(v) = req.target_space {
                p.target_space = v.to_bytes(total);
            }
        }
        self.run(policies, "prune").await
    }

    /// One automatic run with the configured policies.
    pub async fn collect(&self, reason: &'static str) -> Result<Report, GcError> {
        let policies = self.inner.settings.resolve(self.disk_total());
        self.run(policies, reason).await
    }

    async fn run(&self, policies: Vec<Policy>, reason: &'static str) -> Result<Report, GcError> {
        let _one = self.inner.running.lock().await;
        let this = self.clone();
        blocking(move || this.run_blocking(&policies, reason)).await
    }

    fn run_blocking(&self, policies: &[Policy], reason: &str) -> Result<Report, GcError> {
        let started = Instant::now();
        let free_before = self.disk_free();
        let g = self.gather()?;
        let cache_before: u64 = g.records.iter().map(|r| r.cand.size).sum();
        let candidates: Vec<Candidate> = g.records.iter().map(|r| r.cand.clone()).collect();
        let chosen = policy::plan(
            &candidates,
            policies,
            free_before.unwrap_or(u64::MAX),
            SystemTime::now(),
        );
        let mut report = self.execute(&g, &chosen)?;
        report.cache_before = cache_before;
        report.cache_after = cache_before.saturating_sub(report.freed);
        report.free_before = free_before;
        report.free_after = self.disk_free();
        tracing::info!(
            reason,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "gc: removed {} snapshots, {} cached results, {} images, {} blobs, {} cache volumes; freed {}; cache {} -> {}; disk free {} -> {}",
            report.snapshots,
            report.results,
            report.images,
            report.blobs,
            report.volumes,
            human(report.freed),
            human(report.cache_before),
            human(report.cache_after),
            report.free_before.map_or("?".into(), human),
            report.free_after.map_or("?".into(), human),
        );
        Ok(report)
    }

    /// Starts automatic collection: once now, then after operations finish (at most once a
    /// minute) and whenever free disk space drops below a policy's `minFreeSpace` (checked
    /// every 5 s, at most one run per 30 s). `None` when `gc = false`.
    pub fn start(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.inner.settings.enabled {
            tracing::info!("automatic garbage collection is off (worker.oci.gc = false)");
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move { this.background().await }))
    }

    /// Waits for a run in progress to finish.
    pub async fn wait_idle(&self) {
        let _idle = self.inner.running.lock().await;
    }

    async fn background(self) {
        let finished = self.usage().finished_notify();
        let mut last_run = Instant::now();
        let mut freed_nothing = self.auto("startup").await;
        let mut pending = false;
        let mut last_pressure: Option<Instant> = None;
        let mut tick = tokio::time::interval(PRESSURE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = finished.notified() => pending = true,
                _ = tick.tick() => {}
            }
            if pending && last_run.elapsed() >= AFTER_OPERATIONS_THROTTLE {
                pending = false;
                last_run = Instant::now();
                freed_nothing = self.auto("operations finished").await;
            } else if (pending || !freed_nothing) // else: same records, same answer
                && last_pressure.is_none_or(|t| t.elapsed() >= PRESSURE_THROTTLE)
                && self.under_pressure()
            {
                last_pressure = Some(Instant::now());
                last_run = Instant::now();
                pending = false;
                freed_nothing = self.auto("disk pressure").await;
            }
        }
    }

    /// Runs the configured policies; returns whether the run freed nothing.
    async fn auto(&self, reason: &'static str) -> bool {
        match self.collect(reason).await {
            Ok(r) => r.freed == 0,
            Err(e) => {
                tracing::warn!("gc ({reason}) failed: {e}");
                false
            }
        }
    }

    /// Whether free space is below any policy's `minFreeSpace`.
    fn under_pressure(&self) -> bool {
        let Some(free) = self.disk_free() else {
            return false;
        };
        self.inner
            .settings
            .resolve(self.disk_total())
            .iter()
            .any(|p| p.min_free_space > 0 && free < p.min_free_space)
    }

    // Gathering.

    fn gather(&self) -> Result<Gathered, GcError> {
        let inner = &self.inner;
        let meta = &inner.meta;
        let now = SystemTime::now();
        // Persist what memory knows about recent use before reading the times back.
        meta.touch_snapshots_at(&self.usage().drain_last_used())?;
        let volumes = inner.solver.cache_volumes();
        let volume_usage: HashMap<String, _> = volumes
            .usage()
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect();
        for v in volume_usage.values() {
            if let Some(at) = v.last_used {
                meta.touch_cache_volume(&v.name, &v.key, at)?;
            }
        }
        meta.delete_expired_leases(now)?;

        let snapshots = meta.list_snapshots()?;
        let results = meta.list_results()?;
        let mut images = meta.list_images()?;
        images.sort_by(|a, b| (&a.name, &a.platform).cmp(&(&b.name, &b.platform)));
        let blob_rows: HashMap<Digest, _> = meta
            .list_blobs()?
            .into_iter()
            .map(|b| (b.digest.clone(), b))
            .collect();
        let labels: HashMap<String, _> = meta.snapshot_labels()?.into_iter().collect();
        let (leased_snapshots, leased_blobs) = split_leases(meta.leased_resources(now)?);
        let protected = self.usage().protected_ids();
        let files = inner.content.list()?;

        let mut g = Gathered::default();
        let mut by_snapshot: HashMap<String, usize> = HashMap::new();
        let mut by_chain: HashMap<Digest, usize> = HashMap::new();
        // Parents come before their children in this listing.
        for s in &snapshots {
            let idx = g.records.len();
            let size = self.snapshot_size(&s.id, s.size);
            g.records.push(Record {
                cand: Candidate {
                    id: s.id.clone(),
                    record_type: RecordType::Regular,
                    description: String::new(),
                    size,
                    last_used: s.last_used_at,
                    in_use: s.state != SnapshotState::Committed
                        || protected.contains(&s.id)
                        || leased_snapshots.contains(&s.id),
                    parent: s.parent.as_ref().and_then(|p| by_snapshot.get(p).copied()),
                },
                created: s.created_at,
                own_size: size,
                what: What::Snapshot {
                    id: s.id.clone(),
                    images: Vec::new(),
                    blobs: Vec::new(),
                },
                result_kinds: Vec::new(),
            });
            by_snapshot.insert(s.id.clone(), idx);
            if let Some(c) = &s.chain_id {
                by_chain.insert(c.clone(), idx);
            }
        }

        for r in results {
            match r.snapshot.as_ref().and_then(|s| by_snapshot.get(s)) {
                Some(&i) => {
                    let rec = &mut g.records[i];
                    rec.cand.last_used = rec.cand.last_used.max(r.last_used_at);
                    rec.result_kinds.push(r.kind);
                }
                None => g.records.push(Record {
                    cand: Candidate {
                        id: r.key.clone(),
                        record_type: RecordType::Regular,
                        description: format!("cached {} result", r.kind),
                        size: 0,
                        last_used: r.last_used_at,
                        in_use: false,
                        parent: None,
                    },
                    created: r.created_at,
                    own_size: 0,
                    what: What::Result { key: r.key },
                    result_kinds: Vec::new(),
                }),
            }
        }

        // Images: their row and blobs go with their top layer's snapshot.
        let mut blob_owner: HashMap<Digest, usize> = HashMap::new();
        let mut layer_image: HashMap<Digest, String> = HashMap::new();
        for img in &images {
            let refs = g
                .image_refs
                .entry(img.manifest_digest.clone())
                .or_insert_with(|| image_refs(&inner.content, img))
                .clone();
            let home = match refs.chain.last().and_then(|c| by_chain.get(c)) {
                Some(&i) => {
                    let rec = &mut g.records[i];
                    rec.cand.last_used = rec.cand.last_used.max(img.last_used_at);
                    if let What::Snapshot { images, .. } = &mut rec.what {
                        images.push((img.name.clone(), img.platform.clone()));
                    }
                    i
                }
                None => {
                    g.records.push(Record {
                        cand: Candidate {
                            id: format!("{}@{}", img.name, img.platform),
                            record_type: RecordType::Regular,
                            description: format!("pulled from {}", img.name),
                            size: 0,
                            last_used: img.last_used_at,
                            in_use: false,
                            parent: None,
                        },
                        created: img.created_at,
                        own_size: 0,
                        what: What::Image {
                            name: img.name.clone(),
                            platform: img.platform.clone(),
                            blobs: Vec::new(),
                        },
                        result_kinds: Vec::new(),
                    });
                    g.records.len() - 1
                }
            };
            for d in &refs.meta {
                blob_owner.entry(d.clone()).or_insert(home);
            }
            for (layer, chain) in refs.layers.iter().zip(&refs.chain) {
                let owner = by_chain.get(chain).copied().unwrap_or(home);
                blob_owner.entry(layer.clone()).or_insert(owner);
                layer_image
                    .entry(chain.clone())
                    .or_insert_with(|| img.name.clone());
            }
        }

        // Layer blobs made for (or pulled into) a snapshot go with that snapshot.
        for l in meta.list_layer_blobs()? {
            if let Some(&i) = by_snapshot.get(&l.snapshot) {
                blob_owner.entry(l.digest).or_insert(i);
            }
        }

        for (digest, size) in files {
            let leased = leased_blobs.contains(&digest.to_string());
            g.blob_sizes.insert(digest.clone(), size);
            let owner = match blob_owner.get(&digest) {
                Some(&i) => i,
                None => {
                    let row = blob_rows.get(&digest);
                    let kind = row
                        .map(|r| r.media_type.as_str())
                        .filter(|m| !m.is_empty())
                        .unwrap_or("unknown type");
                    g.records.push(Record {
                        cand: Candidate {
                            id: digest.to_string(),
                            record_type: RecordType::Regular,
                            description: format!("blob {digest} ({kind})"),
                            size: 0,
                            last_used: row.map_or(now, |r| r.last_used_at),
                            in_use: false,
                            parent: None,
                        },
                        created: row.map_or(now, |r| r.created_at),
                        own_size: 0,
                        what: What::Blob {
                            digest: digest.clone(),
                        },
                        result_kinds: Vec::new(),
                    });
                    g.records.len() - 1
                }
            };
            let rec = &mut g.records[owner];
            rec.cand.size += size;
            rec.cand.in_use |= leased;
            match &mut rec.what {
                What::Snapshot { blobs, .. } | What::Image { blobs, .. } => blobs.push(digest),
                _ => {}
            }
        }

        // Descriptions of snapshot records, now that everything attached to them is known.
        let chain_of: HashMap<&str, &Digest> = snapshots
            .iter()
            .filter_map(|s| s.chain_id.as_ref().map(|c| (s.id.as_str(), c)))
            .collect();
        for rec in &mut g.records {
            let What::Snapshot { id, images, .. } = &rec.what else {
                continue;
            };
            let chain = chain_of.get(id.as_str()).copied();
            let (kind, description) = if let Some(l) = labels.get(id) {
                (
                    RecordType::parse(&l.record_type).unwrap_or(RecordType::Regular),
                    l.description.clone(),
                )
            } else if let Some((name, _)) = images.first() {
                (RecordType::Regular, format!("pulled from {name}"))
            } else if let Some(name) = chain.and_then(|c| layer_image.get(c)) {
                (RecordType::Regular, format!("pulled from {name}"))
            } else if chain.is_some() {
                (RecordType::Regular, "image layer".to_string())
            } else if let Some(kind) = rec.result_kinds.first() {
                (RecordType::Regular, format!("cached {kind} result"))
            } else {
                (RecordType::Regular, format!("snapshot {id}"))
            };
            rec.cand.record_type = kind;
            rec.cand.description = description;
        }

        self.gather_volumes(&mut g, &volume_usage)?;
        Ok(g)
    }

    fn gather_volumes(
        &self,
        g: &mut Gathered,
        usage: &HashMap<String, crate::solver::VolumeUsage>,
    ) -> Result<(), GcError> {
        let meta = &self.inner.meta;
        let dir = self.inner.solver.cache_volumes().dir().to_path_buf();
        let rows: HashMap<String, _> = meta
            .cache_volumes()?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(GcError::Volume { path: dir, source }),
        };
        let mut seen = HashSet::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            if name.starts_with(VOLUME_TRASH_PREFIX) {
                // Left by a run that stopped halfway.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            // `.init-*` are volumes being created.
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            seen.insert(name.clone());
            let live = usage.get(&name);
            let row = rows.get(&name);
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let last_used = [live.and_then(|v| v.last_used), row.map(|r| r.last_used_at)]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(mtime);
            let key = live
                .map(|v| v.key.clone())
                .or_else(|| row.map(|r| r.key.clone()));
            let size = self.volume_size(&name, &path, last_used);
            g.records.push(Record {
                cand: Candidate {
                    id: name.clone(),
                    record_type: RecordType::ExecCacheMount,
                    description: match key {
                        Some(k) => format!("cache volume {k}"),
                        None => format!("cache volume {name}"),
                    },
                    size,
                    last_used,
                    in_use: live.is_some_and(|v| v.in_use),
                    parent: None,
                },
                created: row.map_or(mtime, |r| r.created_at),
                own_size: size,
                what: What::Volume { name },
                result_kinds: Vec::new(),
            });
        }
        for name in rows.keys().filter(|n| !seen.contains(*n)) {
            meta.delete_cache_volume(name)?;
        }
        Ok(())
    }

    fn snapshot_size(&self, id: &str, recorded: u64) -> u64 {
        if recorded > 0 {
            return recorded;
        }
        let mut sizes = lock(&self.inner.snapshot_sizes);
        if let Some(s) = sizes.get(id) {
            return *s;
        }
        let size = du::disk_usage(&self.inner.snapshots.snapshots_dir().join(id));
        sizes.insert(id.to_string(), size);
        size
    }

    fn volume_size(&self, name: &str, path: &Path, last_used: SystemTime) -> u64 {
        let mut sizes = lock(&self.inner.volume_sizes);
        match sizes.get(name) {
            Some((at, size)) if *at == last_used => *size,
            _ => {
                let size = du::disk_usage(path);
                sizes.insert(name.to_string(), (last_used, size));
                size
            }
        }
    }

    // Deleting.

    fn execute(&self, g: &Gathered, chosen: &[usize]) -> Result<Report, GcError> {
        let inner = &self.inner;
        let mut report = Report::default();
        let rows = self.usage().exclusive(|in_use| {
            let deleted = self.delete_rows(g, chosen, in_use);
            let removed = deleted
                .as_ref()
                .map(|d| d.snapshots.iter().map(|(id, _)| id.clone()).collect())
                .unwrap_or_default();
            (deleted, removed)
        })?;
        report.results = rows.results;
        report.images = rows.images;

        // Blob files: the lease check and the removal run under the database lock, so a pull
        // that leases a blob from now on either comes first (the file stays) or finds it gone.
        let blobs = inner.meta.with_tx(|tx| -> Result<Vec<Digest>, GcError> {
            let (_, leased_now) = split_leases(tx.leased_resources(SystemTime::now())?);
            let mut removed = Vec::new();
            for d in &rows.blobs {
                if leased_now.contains(&d.to_string()) {
                    continue;
                }
                match inner.content.delete(d) {
                    Ok(()) | Err(ContentError::NotFound { .. }) => removed.push(d.clone()),
                    Err(e) => tracing::warn!("gc: cannot delete blob {d}: {e}"),
                }
            }
            Ok(removed)
        })?;
        for d in &blobs {
            report.freed += g.blob_sizes.get(d).copied().unwrap_or(0);
        }
        report.blobs = blobs.len();

        // Snapshot directories (their rows are gone, so nothing can reach them any more).
        let snapshots_dir = inner.snapshots.snapshots_dir();
        let mounts = crate::sys::mount::mounts_under(snapshots_dir).unwrap_or_default();
        let mut sizes = lock(&inner.snapshot_sizes);
        for (id, size) in &rows.snapshots {
            sizes.remove(id);
            let dir = snapshots_dir.join(id);
            if mounts.iter().any(|m| m.starts_with(&dir)) {
                tracing::warn!(
                    "gc: {} still has mounts; leaving it to the start-up cleanup",
                    dir.display()
                );
                continue;
            }
            match inner.snapshots.remove_dir(id) {
                Ok(()) => report.freed += size,
                Err(e) => tracing::warn!("gc: cannot remove snapshot {id}: {e}"),
            }
        }
        drop(sizes);
        report.snapshots = rows.snapshots.len();

        // Cache volumes, each under the volumes' own lock.
        let volumes = inner.solver.cache_volumes();
        for &i in chosen {
            let What::Volume { name } = &g.records[i].what else {
                continue;
            };
            let trash = volumes.dir().join(format!(
                "{VOLUME_TRASH_PREFIX}{name}-{}",
                std::process::id()
            ));
            let taken = volumes
                .take_unused(name, &trash)
                .map_err(|source| GcError::Volume {
                    path: volumes.dir().join(name),
                    source,
                })?;
            if !taken {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&trash) {
                tracing::warn!("gc: cannot remove {}: {e}", trash.display());
            }
            inner.meta.delete_cache_volume(name)?;
            lock(&inner.volume_sizes).remove(name);
            report.volumes += 1;
            report.freed += g.records[i].own_size;
        }
        Ok(report)
    }

    /// Deletes the rows of the chosen records that are still free to go, in one transaction.
    /// Runs inside [`Usage::exclusive`].
    fn delete_rows(
        &self,
        g: &Gathered,
        chosen: &[usize],
        in_use: &crate::snapshot::usage::InUse<'_>,
    ) -> Result<DeletedRows, GcError> {
        self.inner
            .meta
            .with_tx(|tx| -> Result<DeletedRows, GcError> {
                let (leased_snapshots, leased_blobs) =
                    split_leases(tx.leased_resources(SystemTime::now())?);
                let blob_leased = |d: &Digest| leased_blobs.contains(&d.to_string());
                let mut out = DeletedRows::default();
                let mut deleted_images = HashSet::new();
                let mut blobs: Vec<Digest> = Vec::new();
                for &i in chosen {
                    let rec = &g.records[i];
                    match &rec.what {
                        What::Snapshot {
                            id,
                            images,
                            blobs: own,
                        } => {
                            if in_use.contains(id)
                                || leased_snapshots.contains(id)
                                || own.iter().any(blob_leased)
                                || tx.child_count(id)? > 0
                            {
                                continue;
                            }
                            out.results += tx.delete_results_of(id)?;
                            for (name, platform) in images {
                                if tx.delete_image(name, platform)? {
                                    out.images += 1;
                                    deleted_images.insert((name.clone(), platform.clone()));
                                }
                            }
                            if tx.remove_snapshot(id)? {
                                out.snapshots.push((id.clone(), rec.own_size));
                            }
                            blobs.extend(own.iter().cloned());
                        }
                        What::Result { key } => {
                            if tx.delete_result_key(key)? {
                                out.results += 1;
                            }
                        }
                        What::Image {
                            name,
                            platform,
                            blobs: own,
                        } => {
                            if own.iter().any(blob_leased) {
                                continue;
                            }
                            if tx.delete_image(name, platform)? {
                                out.images += 1;
                                deleted_images.insert((name.clone(), platform.clone()));
                            }
                            blobs.extend(own.iter().cloned());
                        }
                        What::Blob { digest } => {
                            if !blob_leased(digest) {
                                blobs.push(digest.clone());
                            }
                        }
                        What::Volume { .. } => {}
                    }
                }
                // A blob that a surviving image still names stays (two tags can share an index
                // or a manifest; an image may have been pulled since the records were read).
                let mut keep: HashSet<Digest> = HashSet::new();
                for img in tx.list_images()? {
                    if deleted_images.contains(&(img.name.clone(), img.platform.clone())) {
                        continue;
                    }
                    let refs = match g.image_refs.get(&img.manifest_digest) {
                        Some(r) => r.clone(),
                        None => image_refs(&self.inner.content, &img),
                    };
                    keep.extend(refs.meta);
                    keep.extend(refs.layers);
                }
                let mut seen = HashSet::new();
                for d in blobs {
                    if keep.contains(&d) || !seen.insert(d.clone()) {
                        continue;
                    }
                    tx.delete_blob(&d)?;
                    out.blobs.push(d);
                }
                Ok(out)
            })
    }
}

/// Leased resources as (snapshot ids, blob digests).
fn split_leases(leased: Vec<(ResourceKind, String)>) -> (HashSet<String>, HashSet<String>) {
    let mut snapshots = HashSet::new();
    let mut blobs = HashSet::new();
    for (kind, id) in leased {
        match kind {
            ResourceKind::Snapshot => snapshots.insert(id),
            ResourceKind::Blob => blobs.insert(id),
        };
    }
    (snapshots, blobs)
}

#[derive(Default)]
struct Gathered {
    records: Vec<Record>,
    /// Blobs of each image, by manifest digest.
    image_refs: HashMap<Digest, ImageRefs>,
    blob_sizes: HashMap<Digest, u64>,
}

struct Record {
    cand: Candidate,
    created: SystemTime,
    /// The record's own bytes (snapshot directory or volume), without attached blobs.
    own_size: u64,
    what: What,
    /// Kinds of the cached results attached to a snapshot (for descriptions).
    result_kinds: Vec<String>,
}

enum What {
    Snapshot {
        id: String,
        images: Vec<(String, String)>,
        blobs: Vec<Digest>,
    },
    Result {
        key: String,
    },
    Image {
        name: String,
        platform: String,
        blobs: Vec<Digest>,
    },
    Blob {
        digest: Digest,
    },
    Volume {
        name: String,
    },
}

#[derive(Default)]
struct DeletedRows {
    /// Removed snapshot ids with their directory sizes.
    snapshots: Vec<(String, u64)>,
    results: usize,
    images: usize,
    /// Blob rows removed; their files go next.
    blobs: Vec<Digest>,
}

/// The blobs an image names: manifest, config and index (`meta`), and its layers with their
/// chain ids. Unreadable parts are left out (the image is then only partly accounted for).
#[derive(Debug, Clone, Default)]
struct ImageRefs {
    meta: Vec<Digest>,
    layers: Vec<Digest>,
    chain: Vec<Digest>,
}

fn image_refs(content: &ContentStore, img: &ImageRecord) -> ImageRefs {
    let mut refs = ImageRefs::default();
    refs.meta.push(img.manifest_digest.clone());
    refs.meta.push(img.config_digest.clone());
    refs.meta.extend(img.index_digest.clone());
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    if let Some(m) = content
        .read_blob(&img.manifest_digest, MAX_IMAGE_JSON)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
    {
        refs.layers = m
            .layers
            .iter()
            .filter_map(|l| Digest::parse(&l.digest).ok())
            .collect();
    }
    if let Some(config) = content
        .read_blob(&img.config_digest, MAX_IMAGE_JSON)
        .ok()
        .and_then(|b| crate::image::ImageConfig::parse(&b).ok())
    {
        let diff_ids: Vec<Digest> = config
            .diff_ids
            .iter()
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        if diff_ids.len() == config.diff_ids.len() {
            refs.chain = crate::image::chain_ids(&diff_ids);
        }
    }
    refs
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GcError> + Send + 'static,
) -> Result<T, GcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GcError::Task(e.to_string()))?
}

/// Bytes in the units `du -h` uses.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
