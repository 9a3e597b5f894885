//! Network namespaces: create one pinned at a file, run code inside one, remove one.
//!
//! A network namespace belongs to a thread, not to the process, so every operation here runs
//! on a dedicated short-lived thread. Such a thread never returns to a pool (tokio's blocking
//! threads are reused) and the rest of the process never sees the switch. Sockets keep the
//! namespace they were created in, so a socket made on that thread can be used from anywhere.

use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The calling thread's own namespace file (the per-process `/proc/self/ns/net` is the main
/// thread's, which is not the one a freshly unshared thread is in).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Creates a network namespace, pins it by bind-mounting its namespace file onto `pin` (created
/// here; it must not exist yet) and runs `inside` in it. The namespace lives until
/// [`remove_pinned`], even with nothing running in it. On any error nothing is left behind.
///
/// Blocks for the duration (thread start, unshare, mount, `inside`): call it from a blocking
/// context.
pub fn create_pinned<T, F>(pin: &Path, inside: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    on_fresh_thread(move || {
        // SAFETY: `unshare_unsafe` is unsafe because of CLONE_FILES (fds stop being shared
        // between threads); CLONE_NEWNET only moves this thread, which exits afterwards.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(pin)?;
        if let Err(e) = rustix::mount::mount_bind(THREAD_NETNS, pin) {
            let _ = std::fs::remove_file(pin);
            return Err(e.into());
        }
        inside().inspect_err(|_| {
            let _ = remove_pinned(pin);
        })
    })
}

/// Opens the calling thread's network namespace (for `IFLA_NET_NS_FD` and the like). Meant to
/// be called from the `inside` closure of [`create_pinned`].
pub fn open_current() -> io::Result<File> {
    File::open(THREAD_NETNS)
}

/// Runs `f` on a fresh thread that has joined the network namespace at `ns` (a pinned file or
/// a `/proc/<pid>/ns/net` link). Blocks until `f` returns.
pub fn run_in<T, F>(ns: &Path, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(ns)?;
    on_fresh_thread(move || {
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))?;
        Ok(f())
    })
}

/// Unmounts and removes a pinned namespace file. Missing or already unmounted files are fine,
/// so this also cleans up after a crash. The namespace itself goes away once nothing else
/// (a process, an open fd, a socket) holds it.
pub fn remove_pinned(pin: &Path) -> io::Result<()> {
    // A loop, because a file can carry stacked mounts if something pinned it twice.
    for _ in 0..8 {
        match rustix::mount::unmount(pin, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::INVAL) | Err(Errno::NOENT) => break,
            Err(e) => return Err(e.into()),
        }
    }
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn on_fresh_thread<T, F>(f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, f)?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("network namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(path: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let wanted = path.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(wanted))
    }

    #[test]
    fn pinned_namespace_round_trip() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("ns");
        let host = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let created =
            create_pinned(&pin, || std::fs::read_link("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(created, host, "a new namespace");
        assert!(mounted(&pin));
        let inside = run_in(&pin, || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_eq!(inside, created, "run_in joins the pinned namespace");
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            host,
            "the calling thread did not move"
        );
        // An existing file is refused and left alone.
        assert!(create_pinned(&pin, || Ok(())).is_err());
        assert!(mounted(&pin));
        remove_pinned(&pin).unwrap();
        assert!(!pin.exists());
        assert!(!mounted(&pin));
        remove_pinned(&pin).unwrap();
        // A failing `inside` leaves nothing behind.
        let err = create_pinned(&pin, || Err::<(), _>(io::Error::other("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(!pin.exists());
    }
}
