//! The pure half of the collector: record types, filters, BuildKit's space arithmetic, and the
//! planner that picks what to delete. No I/O, so every rule is unit-tested without root.

use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

/// BuildKit's usage record types (`client.UsageRecordType`), as filters and `recordType` name
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Regular,
    ExecCacheMount,
    SourceLocal,
    SourceGitCheckout,
    Internal,
    Frontend,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Regular => "regular",
            RecordType::ExecCacheMount => "exec.cachemount",
            RecordType::SourceLocal => "source.local",
            RecordType::SourceGitCheckout => "source.git.checkout",
            RecordType::Internal => "internal",
            RecordType::Frontend => "frontend",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "regular" => RecordType::Regular,
            "exec.cachemount" => RecordType::ExecCacheMount,
            "source.local" => RecordType::SourceLocal,
            "source.git.checkout" => RecordType::SourceGitCheckout,
            "internal" => RecordType::Internal,
            "frontend" => RecordType::Frontend,
            _ => return None,
        })
    }
}

/// What the planner knows about one record.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub record_type: RecordType,
    pub description: String,
    /// Bytes freed by deleting it (each byte on disk is counted in exactly one record).
    pub size: u64,
    pub last_used: SystemTime,
    pub in_use: bool,
    /// A record that can only go after this one (the parent of this record's snapshot).
    pub parent: Option<usize>,
}

/// A containerd filter list: the strings are ORed; within one string, comma-separated
/// selectors are ANDed (`containerd/filters.ParseAll`). An empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    field: Field,
    op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    Id,
    Description,
    InUse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// The bare field name: the field is present (non-empty, or true for `inuse`).
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filter {
    /// Parses filter strings such as `type==exec.cachemount` or
    /// `type!=regular,description=="pulled from x"`. Supported fields: `type`, `id`,
    /// `description`, `inuse`; operators `==` and `!=` and a bare field name (present).
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filter, String> {
        let mut any_of = Vec::new();
        for f in filters {
            let f = f.as_ref();
            let mut all_of = Vec::new();
            for part in split_selectors(f)? {
                all_of.push(Selector::parse(&part).map_err(|e| format!("filter {f:?}: {e}"))?);
            }
            if !all_of.is_empty() {
                any_of.push(all_of);
            }
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, c: &Candidate) -> bool {
        self.any_of.is_empty()
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|s| s.matches(c)))
    }
}

/// Splits on commas outside double quotes.
fn split_selectors(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '\\' if quoted => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("filter {s:?}: unterminated quote"));
    }
    out.push(cur);
    Ok(out
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect())
}

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let (name, op) = if let Some((n, v)) = s.split_once("!=") {
            (n, Op::NotEqual(unquote(v)?))
        } else if let Some((n, v)) = s.split_once("==") {
            (n, Op::Equal(unquote(v)?))
        } else if s.contains("~=") {
            return Err("regular-expression selectors (~=) are not supported".into());
        } else if s.contains('=') {
            return Err(format!("{s:?}: expected field==value or field!=value"));
        } else {
            (s, Op::Present)
        };
        let field = match name.trim() {
            "type" => Field::Type,
            "id" => Field::Id,
            "description" => Field::Description,
            "inuse" => Field::InUse,
            other => {
                return Err(format!(
                    "unknown field {other:?} (supported: type, id, description, inuse)"
                ))
            }
        };
        if let (Field::Type, Op::Equal(v) | Op::NotEqual(v)) = (field, &op) {
            if RecordType::parse(v).is_none() {
                return Err(format!(
                    "unknown record type {v:?} (expected regular, exec.cachemount, source.local, source.git.checkout, internal or frontend)"
                ));
            }
        }
        Ok(Selector { field, op })
    }

    fn matches(&self, c: &Candidate) -> bool {
        let value = match self.field {
            Field::Type => c.record_type.as_str().to_string(),
            Field::Id => c.id.clone(),
            Field::Description => c.description.clone(),
            Field::InUse => {
                if c.in_use {
                    "true".into()
                } else {
                    String::new()
                }
            }
        };
        match &self.op {
            Op::Present => !value.is_empty(),
            Op::Equal(v) => value == *v,
            Op::NotEqual(v) => value != *v,
        }
    }
}

fn unquote(v: &str) -> Result<String, String> {
    let v = v.trim();
    let Some(inner) = v.strip_prefix('"') else {
        return Ok(v.to_string());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| format!("{v:?}: unterminated quote"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// One GC policy with its space limits in bytes (0 = unset, as in BuildKit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Also consider `internal` and `frontend` records (this engine makes none).
    pub all: bool,
    pub filter: Filter,
    /// Only records unused for longer than this are candidates.
    pub keep_duration: Option<Duration>,
    pub reserved_space: u64,
    pub max_used_space: u64,
    pub min_free_space: u64,
    /// Once pruning starts, go down to this instead of `max_used_space` (Dagger's sweep).
    pub target_space: u64,
}

/// BuildKit's `calculateKeepBytes`: how much cache this policy keeps, given the cache's `total`
/// and the disk's `free` bytes. `None` means the policy has no space limits (delete every
/// candidate).
pub fn keep_bytes(total: u64, free: u64, p: &Policy) -> Option<u64> {
    if p.max_used_space == 0 && p.reserved_space == 0 && p.min_free_space == 0 {
        return None;
    }
    let mut keep = p.max_used_space;
    if p.min_free_space > free {
        // Shrink the cache by the missing free space.
        let shrunk = total.saturating_sub(p.min_free_space - free);
        keep = if keep == 0 { shrunk } else { keep.min(shrunk) };
    } else if p.min_free_space != 0 && keep == 0 {
        // Only minFreeSpace is set, and there is enough free space.
        keep = total;
    }
    // Never below the reserved floor.
    Some(keep.max(p.reserved_space))
}

/// The level a triggered policy prunes down to.
fn prune_target(keep: u64, p: &Policy) -> u64 {
    if p.target_space == 0 {
        keep
    } else {
        keep.min(p.target_space).max(p.reserved_space)
    }
}

/// Applies `policies` in order to `records` (disk `free` bytes, at `now`) and returns the
/// records to delete, in deletion order: least recently used first, a record only after every
/// record that depends on it, records in use never.
pub fn plan(records: &[Candidate], policies: &[Policy], free: u64, now: SystemTime) -> Vec<usize> {
    let mut alive = vec![true; records.len()];
    let mut children = vec![0usize; records.len()];
    for r in records {
        if let Some(p) = r.parent.filter(|p| *p < records.len()) {
            children[p] += 1;
        }
    }
    let mut total: u64 = records.iter().map(|r| r.size).sum();
    let mut free = free;
    let mut out = Vec::new();
    for policy in policies {
        let keep = keep_bytes(total, free, policy);
        if keep.is_some_and(|k| total <= k) {
            continue;
        }
        let target = keep.map(|k| prune_target(k, policy));
        let cutoff = policy.keep_duration.and_then(|d| now.checked_sub(d));
        let eligible = |i: usize, alive: &[bool]| {
            let r = &records[i];
            alive[i]
                && !r.in_use
                && (policy.all
                    || !matches!(r.record_type, RecordType::Internal | RecordType::Frontend))
                && cutoff.is_none_or(|c| r.last_used <= c)
                && policy.filter.matches(r)
        };
        // Min-heap on (last used, index): the least recently used leaf first.
        let mut heap: BinaryHeap<std::cmp::Reverse<(SystemTime, usize)>> = (0..records.len())
            .filter(|&i| children[i] == 0 && eligible(i, &alive))
            .map(|i| std::cmp::Reverse((records[i].last_used, i)))
            .collect();
        while let Some(std::cmp::Reverse((_, i))) = heap.pop() {
            if target.is_some_and(|t| total <= t) {
                break;
            }
            alive[i] = false;
            total = total.saturating_sub(records[i].size);
            free = free.saturating_add(records[i].size);
            out.push(i);
            if let Some(p) = records[i].parent.filter(|p| *p < records.len()) {
                children[p] -= 1;
                if children[p] == 0 && eligible(p, &alive) {
                    heap.push(std::cmp::Reverse((records[p].last_used, p)));
                }
            }
        }
    }
    out
}
