//! Process-level system calls for the executor: file-descriptor hygiene when spawning runc,
//! signals, device nodes, and the cgroup v1 OOM notification.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Makes every file descriptor from 3 up close on exec in the child `cmd` forks, just before
/// it execs. Rust marks its own fds close-on-exec, but a library (or a future module) that
/// opens one without `O_CLOEXEC` would otherwise leak it into runc and, with an unpatched runc,
/// into the container (CVE-2024-21626). The descriptors std itself hands to the child (0, 1, 2)
/// are unaffected; its exec-error pipe keeps working because it is only marked, not closed.
pub fn cloexec_from_3_on_spawn(cmd: &mut std::process::Command) {
    let hook = || {
        // The result is ignored: kernels before 5.11 lack CLOSE_RANGE_CLOEXEC, and runc still
        // marks every fd above 2 close-on-exec before it starts the container process.
        // SAFETY: close_range(2) is a single async-signal-safe system call that touches no
        // memory; it is the only thing this runs between fork and exec.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3u32,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        Ok(())
    };
    // SAFETY: the hook allocates nothing, takes no locks and only makes one system call.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Sends SIGKILL to `pid`. A process that is already gone is not an error.
pub fn kill(pid: u32) -> io::Result<()> {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return Ok(());
    };
    match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether a process with this pid exists (signal 0).
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// A device node on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    /// A character device (`false`: a block device).
    pub char: bool,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

/// The device node at `path` (following symlinks); `None` if it is missing or not a device.
pub fn device_node(path: &Path) -> Option<DeviceNode> {
    let st = rustix::fs::stat(path).ok()?;
    #[allow(clippy::unnecessary_cast)] // field widths differ between architectures
    let (mode, rdev) = (st.st_mode as u32, st.st_rdev as u64);
    let char = match FileType::from_raw_mode(mode as _) {
        FileType::CharacterDevice => true,
        FileType::BlockDevice => false,
        _ => return None,
    };
    Some(DeviceNode {
        char,
        major: rustix::fs::major(rdev as _),
        minor: rustix::fs::minor(rdev as _),
        mode: mode & 0o7777,
    })
}

/// A cgroup v1 memory OOM notification: an eventfd registered on `memory.oom_control`
/// through `cgroup.event_control`. The kernel signals it whenever that cgroup, or an ancestor
/// whose subtree contains it, enters an OOM condition. (The `oom_kill` counter in
/// `memory.oom_control` is charged to the victim's own cgroup, which runc removes when the
/// container exits, so it cannot be read afterwards.)
pub struct OomNotifier {
    eventfd: OwnedFd,
}

impl OomNotifier {
    /// Registers on the v1 memory cgroup directory `cgroup`.
    pub fn register(cgroup: &Path) -> io::Result<OomNotifier> {
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let control = rustix::fs::open(
            cgroup.join("memory.oom_control"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        use std::os::fd::AsRawFd;
        let line = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
        // The kernel takes its own reference to the eventfd; `control` is only read while
        // registering and may be closed afterwards.
        std::fs::write(cgroup.join("cgroup.event_control"), line)?;
        Ok(OomNotifier { eventfd })
    }

    /// How many OOM notifications arrived so far (resets the count). Read it before the
    /// cgroup is removed: removal signals the eventfd too.
    pub fn take(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        match rustix::io::read(self.eventfd.as_fd(), &mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(n) => Err(io::Error::other(format!("short eventfd read ({n} bytes)"))),
            Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_children_get_no_inherited_fds() {
        use std::os::fd::AsRawFd;
        // dup(2) makes a descriptor without close-on-exec: what a careless library leaks.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let leaked = nix::unistd::dup(file.as_raw_fd()).unwrap();
        let listing = |hook: bool| {
            let mut cmd = std::process::Command::new("ls");
            cmd.arg("/proc/self/fd");
            if hook {
                cloexec_from_3_on_spawn(&mut cmd);
            }
            let out = cmd.output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let fd = leaked.to_string();
        assert!(listing(false).lines().any(|l| l == fd), "the leak is real");
        assert!(!listing(true).lines().any(|l| l == fd), "the hook stops it");
        nix::unistd::close(leaked).unwrap();
    }

    #[test]
    fn device_nodes_and_processes() {
        let null = device_node(Path::new("/dev/null")).unwrap();
        assert!(null.char);
        assert_eq!((null.major, null.minor), (1, 3));
        assert!(device_node(Path::new("/etc/hostname")).is_none());
        assert!(device_node(Path::new("/nonexistent")).is_none());
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(u32::MAX));
        kill(u32::MAX).unwrap();
    }
}
