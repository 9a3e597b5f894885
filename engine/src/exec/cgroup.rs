//! The cgroups of an exec.
//!
//! runc creates the container's cgroup and removes it when the container exits, taking its
//! OOM counters with it. So each exec gets a parent we own, `dagger-exec/<id>`, relative to
//! the engine's own cgroup in every hierarchy; runc's cgroup is `dagger-exec/<id>/ctr`
//! below it. After the run we read the parent and remove both levels.
//!
//! * cgroup v1 (and hybrid, like the test machines: runc then uses its v1 manager): the
//!   memory limit goes on the parent, so an OOM happens there, and an eventfd registered on
//!   the parent's `memory.oom_control` sees it. (v1's `oom_kill` counter is charged to the
//!   victim's own cgroup, runc's, which is gone by the time we could read it.)
//! * cgroup v2: the limit stays in the runtime spec; `memory.events` counts `oom_kill`
//!   hierarchically, so the parent's counter includes runc's cgroup.

use crate::sys::proc::OomNotifier;
use std::io;
use std::path::{Path, PathBuf};

/// The engine-specific parent of every exec cgroup, below the engine's own cgroup.
pub(crate) const PARENT: &str = "dagger-exec";
/// runc's cgroup, below the exec's.
const LEAF: &str = "ctr";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the engine's own cgroups are.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hierarchies {
    /// `/sys/fs/cgroup` is a cgroup2 mount: runc uses its v2 manager.
    pub unified: bool,
    /// The engine's cgroup directory in every mounted hierarchy (v1 and v2).
    pub own: Vec<PathBuf>,
    /// The engine's v1 memory cgroup directory, if there is a v1 memory hierarchy.
    pub memory_v1: Option<PathBuf>,
    /// The engine's cgroup directory in the v2 hierarchy, when it is the only one.
    pub v2: Option<PathBuf>,
}

impl Hierarchies {
    pub fn discover() -> Hierarchies {
        let unified = crate::sys::fs_magic(Path::new("/sys/fs/cgroup"))
            .is_ok_and(|m| m == CGROUP2_SUPER_MAGIC);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::from_texts(unified, &mountinfo, &cgroup)
    }

    /// Matches each cgroup mount in `mountinfo` with the engine's path in that hierarchy from
    /// `/proc/self/cgroup`.
    pub fn from_texts(unified: bool, mountinfo: &str, cgroup: &str) -> Hierarchies {
        let mut h = Hierarchies {
            unified,
            ..Default::default()
        };
        let own_paths: Vec<(Vec<&str>, &str)> = cgroup
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                Some((ctrls.split(',').filter(|c| !c.is_empty()).collect(), path))
            })
            .collect();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mountpoint), Some(fstype), Some(opts)) =
                (left.get(3), left.get(4), right.first(), right.get(2))
            else {
                continue;
            };
            let own = match *fstype {
                "cgroup2" => own_paths
                    .iter()
                    .find(|(c, _)| c.is_empty())
                    .map(|(_, p)| *p),
                "cgroup" => {
                    let opts: Vec<&str> = opts.split(',').collect();
                    own_paths
                        .iter()
                        .find(|(c, _)| !c.is_empty() && c.iter().all(|c| opts.contains(c)))
                        .map(|(_, p)| *p)
                }
                _ => continue,
            };
            let Some(rel) = own.and_then(|p| relative_to_mount(p, root)) else {
                continue;
            };
            let dir = Path::new(mountpoint).join(rel);
            if h.own.contains(&dir) {
                continue;
            }
            if *fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
                h.memory_v1.get_or_insert(dir.clone());
            }
            if *fstype == "cgroup2" && unified {
                h.v2 = Some(dir.clone());
            }
            h.own.push(dir);
        }
        h
    }
}

/// `path` (from /proc/self/cgroup) relative to a mount whose root is `root`.
fn relative_to_mount<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let rest = if root == "/" {
        path
    } else {
        path.strip_prefix(root)?
    };
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(rest.trim_start_matches('/'))
}

/// The cgroups of one exec.
pub(crate) struct ExecCgroup {
    /// `dagger-exec/<id>` in every hierarchy.
    dirs: Vec<PathBuf>,
    oom: Option<OomNotifier>,
    memory_events: Option<PathBuf>,
}

impl ExecCgroup {
    /// runc's `linux.cgroupsPath` for exec `id`: relative, so it lands below the engine's own
    /// cgroup in each hierarchy.
    pub fn runc_path(id: &str) -> String {
        format!("{PARENT}/{id}/{LEAF}")
    }

    /// The exec's cgroups, without creating anything (for cleanup of a crashed run).
    pub fn existing(h: &Hierarchies, id: &str) -> ExecCgroup {
        ExecCgroup {
            dirs: h.own.iter().map(|d| d.join(PARENT).join(id)).collect(),
            oom: None,
            memory_events: None,
        }
    }

    /// Creates the parent where it matters (the v1 memory hierarchy, or v2) and, on v1, applies
    /// `memory_limit` there and starts watching for OOM. On v2 the limit goes in the spec.
    pub fn create(h: &Hierarchies, id: &str, memory_limit: Option<u64>) -> io::Result<ExecCgroup> {
        let mut cg = ExecCgroup::existing(h, id);
        if let Some(v2) = &h.v2 {
            let dir = v2.join(PARENT).join(id);
            std::fs::create_dir_all(&dir)?;
            cg.memory_events = Some(dir.join("memory.events"));
            return Ok(cg);
        }
        let Some(mem) = &h.memory_v1 else {
            if memory_limit.is_some() {
                return Err(io::Error::other(
                    "no cgroup memory controller is mounted, so a memory limit can't be applied",
                ));
            }
            return Ok(cg);
        };
        let dir = mem.join(PARENT).join(id);
        std::fs::create_dir_all(&dir)?;
        let setup = || -> io::Result<Option<OomNotifier>> {
            if let Some(limit) = memory_limit {
                std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
                // No swapping around the limit: memory+swap gets the same cap when the kernel
                // accounts swap at all.
                match std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(OomNotifier::register(&dir)
                .inspect_err(|e| tracing::debug!("no OOM notification for {id}: {e}"))
                .ok())
        };
        match setup() {
            Ok(oom) => cg.oom = oom,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// Whether the kernel OOM killer acted in this exec's cgroup. Call before [`remove`].
    pub fn oom_killed(&self) -> bool {
        if let Some(n) = &self.oom {
            return n.take().unwrap_or(0) > 0;
        }
        if let Some(events) = &self.memory_events {
            return std::fs::read_to_string(events).is_ok_and(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill "))
                    .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
            });
        }
        false
    }

    /// One pass of removal: removes the directories that are empty and, with `kill`, SIGKILLs
    /// whatever is left in the others. `true` when nothing is left.
    pub fn try_remove(&self, kill: bool) -> bool {
        let mut done = true;
        for dir in &self.dirs {
            for d in [dir.join(LEAF), dir.clone()] {
                match std::fs::remove_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => {
                        done = false;
                        if kill {
                            kill_members(&d);
                        }
                    }
                }
            }
        }
        done
    }

    /// Removes the exec's cgroups, waiting (without blocking a runtime thread) for killed
    /// processes to leave.
    pub async fn remove(&self) -> bool {
        for attempt in 0..50 {
            if self.try_remove(true) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10 + attempt * 2)).await;
        }
        false
    }

    /// The blocking twin of [`ExecCgroup::remove`].
    pub fn remove_blocking(&self) -> bool {
        for attempt in 0..50 {
            if self.try_remove(true) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10 + attempt * 2));
        }
        false
    }
}

fn kill_members(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let _ = crate::sys::proc::kill(pid);
    }
}

/// The ids below `dagger-exec/` in the engine's hierarchies (for the start-up sweep).
pub(crate) fn leftover_ids(h: &Hierarchies) -> Vec<String> {
    let mut ids: Vec<String> = h
        .own
        .iter()
        .filter_map(|d| std::fs::read_dir(d.join(PARENT)).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
