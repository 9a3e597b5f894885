//! The OCI runtime spec of an exec: containerd's default Unix spec as BuildKit and Dagger
//! change it (engine-facts §5.3), or the insecure variant (§5.1).

use crate::sys::caps;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::path::{Path, PathBuf};

/// Where the init binary is mounted, and PID 1 when the exec has an init.
pub const INIT_PATH: &str = "/.init";

/// containerd's default capabilities (`oci/spec.go` `defaultUnixCaps`).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// containerd's masked paths.
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// containerd's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes an insecure exec gets when the host has them (BuildKit's list; loop devices
/// are added as found).
pub const INSECURE_DEVICES: [&str; 6] = [
    "/dev/kmsg",
    "/dev/cuse",
    "/dev/fuse",
    "/dev/kvm",
    "/dev/net/tun",
    "/dev/loop-control",
];

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the spec depends on, already validated and resolved.
#[derive(Debug, Clone)]
pub(crate) struct SpecInput {
    pub rootfs: PathBuf,
    /// The final argv (the init in front when there is one).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    /// `Some(mask)`: insecure, with these capabilities. `None`: the 14 defaults.
    pub insecure_caps: Option<u64>,
    pub netns: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    pub init: Option<PathBuf>,
    pub extra_mounts: Vec<Mount>,
    pub cgroups_path: String,
    /// runc will use its cgroup v2 manager: add a cgroup namespace, put the memory limit here.
    pub cgroup_v2: bool,
    pub memory_limit: Option<u64>,
    /// Host device nodes for an insecure exec.
    pub devices: Vec<LinuxDevice>,
}

fn opts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(opts(options))
        .build()
        .map_err(|e| e.to_string())
}

fn bind_ro(dest: &str, source: &Path) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(opts(&["rbind", "ro", "nosuid", "nodev", "noexec"]))
        .build()
        .map_err(|e| e.to_string())
}

/// The OCI capability set for a mask; capabilities runc's spec types don't know are skipped.
pub(crate) fn oci_caps(mask: u64) -> Capabilities {
    caps::names(mask)
        .into_iter()
        .filter_map(|n| serde_json::from_value::<Capability>(serde_json::Value::from(n)).ok())
        .collect()
}

pub(crate) fn build(input: &SpecInput) -> Result<Spec, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let insecure = input.insecure_caps.is_some();

    let capabilities = match input.insecure_caps {
        // Everything the engine holds, in every set, as `docker run --privileged` does.
        Some(mask) => {
            let set = oci_caps(mask);
            LinuxCapabilitiesBuilder::default()
                .bounding(set.clone())
                .effective(set.clone())
                .permitted(set.clone())
                .inheritable(set.clone())
                .ambient(set)
                .build()
                .map_err(e)?
        }
        // Not inheritable or ambient: that would let file capabilities grant more (CVE-2022-24769).
        None => {
            let set = oci_caps(caps::mask_of(&DEFAULT_CAPS).unwrap_or(0));
            LinuxCapabilitiesBuilder::default()
                .bounding(set.clone())
                .effective(set.clone())
                .permitted(set)
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()
                .map_err(e)?
        }
    };

    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(input.uid)
                .gid(input.gid)
                .additional_gids(input.additional_gids.clone())
                .build()
                .map_err(e)?,
        )
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(&input.cwd)
        .capabilities(capabilities)
        // BuildKit's WithNewPrivileges: setuid binaries (sudo, ping) work as in `docker run`.
        .no_new_privileges(false)
        .build()
        .map_err(e)?;
    // No rlimits: the process inherits the engine's, which are within the host's hard limits
    // (asking for more, like podman's nofile=1048576, fails the container). The builder
    // fills unset fields from `Process::default()`, which has nofile=1024: clear it.
    process.set_rlimits(None);

    let ro = |rw: &[&'static str]| -> Vec<&'static str> {
        let mut v = rw.to_vec();
        if !insecure {
            v.insert(0, "ro");
        }
        v
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &ro(&["nosuid", "noexec", "nodev"]),
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &ro(&["nosuid", "noexec", "nodev", "relatime"]),
        )?,
    ];
    if let Some(init) = &input.init {
        mounts.push(
            MountBuilder::default()
                .destination(INIT_PATH)
                .typ("bind")
                .source(init)
                .options(opts(&["rbind", "ro", "nosuid", "nodev"]))
                .build()
                .map_err(e)?,
        );
    }
    if let Some(p) = &input.resolv_conf {
        mounts.push(bind_ro("/etc/resolv.conf", p)?);
    }
    if let Some(p) = &input.hosts {
        mounts.push(bind_ro("/etc/hosts", p)?);
    }
    mounts.extend(input.extra_mounts.iter().cloned());

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()
            .map_err(e)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Ipc)
            .build()
            .map_err(e)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Uts)
            .build()
            .map_err(e)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()
            .map_err(e)?,
    ];
    let net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    namespaces.push(
        match &input.netns {
            Some(path) => net.path(path.clone()),
            // A fresh namespace: runc brings up loopback and nothing else.
            None => net,
        }
        .build()
        .map_err(e)?,
    );
    if input.cgroup_v2 {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Cgroup)
                .build()
                .map_err(e)?,
        );
    }

    let device_rule = LinuxDeviceCgroupBuilder::default()
        .allow(insecure)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()
        .map_err(e)?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![device_rule]);
    if input.cgroup_v2 {
        if let Some(limit) = input.memory_limit {
            let limit = i64::try_from(limit).map_err(|_| "memory limit is too large")?;
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .swap(limit)
                    .build()
                    .map_err(e)?,
            );
        }
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(resources.build().map_err(e)?);
    if insecure {
        linux = linux
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new())
            .devices(input.devices.clone());
    } else {
        linux = linux
            .masked_paths(opts(&MASKED_PATHS))
            .readonly_paths(opts(&READONLY_PATHS));
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&input.rootfs)
                .readonly(false)
                .build()
                .map_err(e)?,
        )
        .hostname(&input.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux.build().map_err(e)?)
        .build()
        .map_err(e)
}

/// The insecure device list: the host's nodes among [`INSECURE_DEVICES`] and its loop devices.
pub(crate) fn host_devices() -> Vec<LinuxDevice> {
    let mut paths: Vec<PathBuf> = INSECURE_DEVICES.iter().map(PathBuf::from).collect();
    if let Ok(dir) = std::fs::read_dir("/dev") {
        let mut loops: Vec<(u32, PathBuf)> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_prefix("loop")?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        loops.sort();
        paths.extend(loops.into_iter().map(|(_, p)| p));
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let node = crate::sys::proc::device_node(&p)?;
            LinuxDeviceBuilder::default()
                .path(p)
                .typ(if node.char {
                    LinuxDeviceType::C
                } else {
                    LinuxDeviceType::B
                })
                .major(i64::from(node.major))
                .minor(i64::from(node.minor))
                .file_mode(node.mode)
                .uid(0u32)
                .gid(0u32)
                .build()
                .ok()
        })
        .collect()
}
