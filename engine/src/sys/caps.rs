//! Linux capabilities of the engine process, read from `/proc/self/status`, and their names.
//!
//! The engine never changes its own capabilities; it only needs to know which ones it holds so
//! an insecure exec asks runc for no more than that (runc fails the whole container with
//! "unable to apply caps: operation not permitted" when one is missing from the bounding set,
//! as `CAP_SYS_RESOURCE` is on some hosts).

use std::io;

/// Capability names indexed by their bit number (`linux/capability.h`, up to Linux 5.9).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability sets of a process, as bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
}

impl CapSets {
    /// What the process can hand to a child: what it holds, within its bounding set.
    pub fn grantable(&self) -> u64 {
        self.effective & self.bounding
    }
}

/// The engine process's capability sets.
pub fn current() -> io::Result<CapSets> {
    parse_status(&std::fs::read_to_string("/proc/self/status")?)
}

/// Parses the `CapEff`, `CapPrm` and `CapBnd` lines of a `/proc/<pid>/status` text.
pub fn parse_status(status: &str) -> io::Result<CapSets> {
    let field = |name: &str| -> io::Result<u64> {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| io::Error::other(format!("no {name} line in /proc/self/status")))?;
        parse_mask(value.trim())
            .ok_or_else(|| io::Error::other(format!("{name} is not a hex mask: {value:?}")))
    };
    Ok(CapSets {
        effective: field("CapEff")?,
        permitted: field("CapPrm")?,
        bounding: field("CapBnd")?,
    })
}

/// Parses a hex capability mask (`000001fffeffffff`).
pub fn parse_mask(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

/// The names of the capabilities set in `mask`, lowest bit first. Bits this table does not
/// know (newer kernels) are skipped: runc could not name them either.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The mask of the named capabilities; `None` if a name is unknown.
pub fn mask_of(names: &[&str]) -> Option<u64> {
    names.iter().try_fold(0u64, |acc, name| {
        let bit = NAMES.iter().position(|n| n == name)?;
        Some(acc | 1u64 << bit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_names_bits() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
                      CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        let sets = parse_status(status).unwrap();
        assert_eq!(sets.bounding, 0x1fffeffffff);
        let names = names(sets.grantable());
        assert_eq!(names.len(), 40);
        assert!(!names.contains(&"CAP_SYS_RESOURCE"));
        assert_eq!(names[0], "CAP_CHOWN");
        assert_eq!(names[39], "CAP_CHECKPOINT_RESTORE");
        assert_eq!(mask_of(&["CAP_CHOWN", "CAP_KILL"]), Some(0b10_0001));
        assert_eq!(mask_of(&["CAP_NOPE"]), None);
        assert!(parse_status("CapEff:\tzz\n").is_err());
    }
}
