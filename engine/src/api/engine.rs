//! `Query.engine`: the engine's local cache, for inspection and pruning (see `crate::gc`).

use super::scalars::Void;
use super::{classified, state};
use crate::gc::{Entry, PruneRequest};
use async_graphql::{Context, Object, Result, SimpleObject};
use std::time::SystemTime;

/// Bytes as a GraphQL Int (64-bit here), saturating.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The Dagger engine container configuration and state
pub struct Engine;

#[Object]
impl Engine {
    /// The local (on-disk) cache for the Dagger engine
    async fn local_cache(&self) -> EngineCache {
        EngineCache
    }

    /// The name of the engine instance.
    async fn name(&self) -> String {
        // Dagger names an engine after its host (the engine container's hostname).
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "dagger-engine".into())
    }
}

/// A cache storage for the Dagger engine
pub struct EngineCache;

#[Object]
impl EngineCache {
    /// The maximum bytes to keep in the cache without pruning.
    async fn max_used_space(&self, ctx: &Context<'_>) -> i64 {
        int(state(ctx).gc.space_limits().max_used_space)
    }

    /// The minimum amount of disk space this policy is guaranteed to retain.
    async fn reserved_space(&self, ctx: &Context<'_>) -> i64 {
        int(state(ctx).gc.space_limits().reserved_space)
    }

    /// The target amount of free disk space the garbage collector will attempt to leave.
    async fn min_free_space(&self, ctx: &Context<'_>) -> i64 {
        int(state(ctx).gc.space_limits().min_free_space)
    }

    /// The target number of bytes to keep when pruning.
    async fn target_space(&self, ctx: &Context<'_>) -> i64 {
        int(state(ctx).gc.space_limits().target_space)
    }

    /// The current set of entries in the cache
    async fn entry_set(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] key: String,
    ) -> Result<EngineCacheEntrySet> {
        // `key` only makes each call distinct in Dagger's own call cache.
        let _ = key;
        let entries = state(ctx).gc.entries().await.map_err(|e| classified(&e))?;
        Ok(EngineCacheEntrySet::from(entries))
    }

    /// Prune the cache of releaseable entries
    async fn prune(
        &self,
        ctx: &Context<'_>,
        #[graphql(
            default = false,
            desc = "Use the engine-wide default pruning policy if true, otherwise prune the whole cache of any releasable entries."
        )]
        use_default_policy: bool,
        #[graphql(
            default,
            desc = "Override the maximum disk space to keep before pruning (e.g. \"200GB\" or \"80%\")."
        )]
        max_used_space: String,
        #[graphql(
            default,
            desc = "Override the minimum disk space to retain during pruning (e.g. \"500GB\" or \"10%\")."
        )]
        reserved_space: String,
        #[graphql(
            default,
            desc = "Override the minimum free disk space target during pruning (e.g. \"10GB\" or \"20%\")."
        )]
        min_free_space: String,
        #[graphql(
            default,
            desc = "Override the target disk space to keep after pruning (e.g. \"200GB\" or \"50%\")."
        )]
        target_space: String,
    ) -> Result<Option<Void>> {
        let req = PruneRequest::parse(
            use_default_policy,
            &max_used_space,
            &reserved_space,
            &min_free_space,
            &target_space,
        )
        .map_err(|e| classified(&e))?;
        state(ctx)
            .gc
            .prune(&req)
            .await
            .map_err(|e| classified(&e))?;
        Ok(None)
    }
}

/// A set of cache entries returned by a query to a cache
#[derive(SimpleObject)]
pub struct EngineCacheEntrySet {
    /// The total disk space used by the cache entries in this set.
    disk_space_bytes: i64,
    /// The number of cache entries in this set.
    entry_count: i64,
    /// The list of individual cache entries in the set
    entries: Vec<EngineCacheEntry>,
}

impl From<Vec<Entry>> for EngineCacheEntrySet {
    fn from(list: Vec<Entry>) -> Self {
        let entries: Vec<EngineCacheEntry> = list
            .into_iter()
            .map(|e| EngineCacheEntry {
                description: e.description,
                disk_space_bytes: int(e.size),
                created_time_unix_nano: unix_nanos(e.created),
                most_recent_use_time_unix_nano: unix_nanos(e.last_used),
                actively_used: e.in_use,
                record_type: e.record_type.as_str().to_string(),
            })
            .collect();
        EngineCacheEntrySet {
            disk_space_bytes: entries
                .iter()
                .fold(0i64, |acc, e| acc.saturating_add(e.disk_space_bytes)),
            entry_count: entries.len() as i64,
            entries,
        }
    }
}

/// An individual cache entry in a cache entry set
#[derive(SimpleObject)]
pub struct EngineCacheEntry {
    /// The description of the cache entry.
    description: String,
    /// The disk space used by the cache entry.
    disk_space_bytes: i64,
    /// The time the cache entry was created, in Unix nanoseconds.
    created_time_unix_nano: i64,
    /// The most recent time the cache entry was used, in Unix nanoseconds.
    most_recent_use_time_unix_nano: i64,
    /// Whether the cache entry is actively being used.
    actively_used: bool,
    /// The type of the cache record (e.g. regular, internal, frontend, source.local, source.git.checkout, exec.cachemount).
    record_type: String,
}
