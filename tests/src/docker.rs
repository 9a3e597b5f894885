//! Docker for the runner-image tests: a private `dockerd` (Debian's docker.io) on its own
//! socket and data root, an offline-built Debian base image imported under the name the
//! Dockerfile's runtime stage uses, and the runner image built from the repository's
//! Dockerfile with the binaries of this build (`--target prebuilt`).
//!
//! Docker on these machines cannot start `--privileged` containers (CAP_SYS_RESOURCE is
//! missing from the bounding set): [`ENGINE_RUN_FLAGS`] are the flags that work instead.

use crate::registry::{require_binary, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The Dockerfile's runtime base (`ARG DEBIAN_IMAGE`).
pub const BASE_IMAGE: &str = "debian:bookworm-slim";

/// The packages the Dockerfile's runtime stage installs: the base image has them already, so
/// the stage's `apt-get install` only checks them.
pub const BASE_PACKAGES: &str = "ca-certificates,git,openssh-client,nftables,iproute2,tini";

/// `docker run` flags that stand in for `--privileged` here: every capability the bounding set
/// allows, no seccomp/AppArmor/masked paths, every device, and a writable cgroup tree for runc.
pub const ENGINE_RUN_FLAGS: &[&str] = &[
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device-cgroup-rule",
    "a *:* rwm",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup",
];

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `dockerd` of our own; stopped (with every container it runs) on drop.
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        crate::require_root();
        let dockerd = require_binary("dockerd", "docker.io");
        require_binary("docker", "docker.io");
        let dir = tempfile::Builder::new()
            .prefix("dockerd-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        // --bridge=none: containers get loopback only unless a test asks for the host network,
        // and dockerd changes no iptables rules of the machine.
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let mut d = Dockerd {
            dir,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dockerd exited ({status}):\n{}", d.log());
            }
            if d.try_docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return d;
            }
            assert!(Instant::now() < deadline, "dockerd not ready:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS` against this daemon, with no user configuration of the machine's.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("client-config"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `docker ARGS`, whatever its status.
    pub fn try_docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running docker")
    }

    /// Runs `docker ARGS` and returns its trimmed stdout; panics when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = run(self.command().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Imports the offline Debian base under [`BASE_IMAGE`].
    pub fn import_base_image(&self) {
        let tar = base_image_tar();
        run(self.command().arg("import").arg(&tar).arg(BASE_IMAGE));
    }

    /// Builds the runner image `tag` from the repository's Dockerfile with `--target prebuilt`
    /// and this build's `dagger-engine` and `dagger` (runc from the machine's package).
    pub fn build_runner_image(&self, tag: &str) {
        let ctx = self.dir.path().join("context");
        let prebuilt = ctx.join("prebuilt");
        std::fs::create_dir_all(&prebuilt).unwrap();
        let ws = crate::workspace();
        std::fs::copy(ws.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        std::fs::copy(ws.join("engine.toml"), ctx.join("engine.toml")).unwrap();
        std::fs::copy(crate::bin("dagger-engine"), prebuilt.join("dagger-engine")).unwrap();
        std::fs::copy(crate::bin("dagger"), prebuilt.join("dagger")).unwrap();
        let runc = require_binary("runc", "runc");
        std::fs::copy(runc, prebuilt.join("runc")).unwrap();
        // The host network only lets the runtime stage's `apt-get update` reach the Debian
        // mirror the machine uses; the packages are in the base image already.
        run(self
            .command()
            .args([
                "build",
                "--network",
                "host",
                "--target",
                "prebuilt",
                "-t",
                tag,
            ])
            .arg(&ctx));
    }

    /// Stops every container gracefully (the engines tear their networks down), then dockerd.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let ids = self.try_docker(&["ps", "-q"]);
        let ids = String::from_utf8_lossy(&ids.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["stop", "-t", "20"];
            args.extend(ids);
            let _ = self.try_docker(&args);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if crate::wait_timeout(&mut child, Duration::from_secs(30)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Mounts dockerd may leave under its data root would make the temp dir undeletable.
        let data = self.dir.path().to_path_buf();
        if let Ok(mounts) = dagger_engine::sys::mount::mounts_under(&data) {
            for m in mounts {
                let _ = dagger_engine::sys::mount::unmount_detach(&m);
            }
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tarball of a Debian 12 minbase root with [`BASE_PACKAGES`], made with debootstrap from
/// the machine's Debian mirror: built once per package list and cached under
/// `target/<profile>/test-images/`.
pub fn base_image_tar() -> PathBuf {
    let key =
        &dagger_engine::oci::Digest::of(format!("bookworm minbase {BASE_PACKAGES}").as_bytes())
            .hex()[..16]
            .to_string();
    let exe = std::env::current_exe().expect("test executable path");
    let mut target = exe.parent().expect("target dir");
    if target.file_name().is_some_and(|n| n == "deps") {
        target = target.parent().expect("target dir");
    }
    let cache = target.join("test-images");
    let tar = cache.join(format!("debian-bookworm-{key}.tar"));
    if tar.is_file() {
        return tar;
    }
    let debootstrap = require_binary("debootstrap", "debootstrap");
    std::fs::create_dir_all(&cache).unwrap();
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(&cache)
        .unwrap();
    let rootfs = work.path().join("rootfs");
    run(Command::new(debootstrap)
        .args(["--variant=minbase", &format!("--include={BASE_PACKAGES}")])
        .args(["bookworm"])
        .arg(&rootfs)
        .arg(mirror()));
    let partial = work.path().join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&partial)
        .arg("."));
    // Concurrent builders: the first rename wins, the others' copies go with their temp dirs.
    let _ = std::fs::rename(&partial, &tar);
    assert!(tar.is_file(), "cannot store {}", tar.display());
    tar
}

/// The Debian mirror apt uses on this machine (deb.debian.org when none is configured).
fn mirror() -> String {
    let sources = [
        Path::new("/etc/apt/sources.list.d/debian.sources"),
        Path::new("/etc/apt/sources.list"),
    ];
    for path in sources {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let url = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ")
                    .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("http")))
            });
            if let Some(url) = url {
                if !url.contains("security") {
                    return url.to_string();
                }
            }
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// Podman's stand-ins for `--privileged` here, as for Docker (plus runc: crun refuses this
/// machine's hybrid cgroups).
pub const PODMAN_RUN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "unmask=ALL",
    "--device-cgroup-rule",
    "a *:* rwm",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup",
];

/// Podman with storage of its own (graph root, run root and settings in a temp dir, through
/// `CONTAINERS_STORAGE_CONF` and `CONTAINERS_CONF`, which every `podman` the test or the CLI
/// runs inherits from [`Podman::env`]); everything is removed on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
}

impl Podman {
    pub fn setup() -> Podman {
        crate::require_root();
        require_binary("podman", "podman");
        let dir = tempfile::Builder::new()
            .prefix("podman-")
            .tempdir()
            .unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p.join("storage").display(),
                p.join("run").display()
            ),
        )
        .unwrap();
        // This machine's hard limits are below podman's defaults (nofile 1048576).
        std::fs::write(
            p.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n[engine]\ntmp_dir = \"{}\"\n",
                p.join("tmp").display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// The environment that points podman at this storage.
    pub fn env(&self) -> Vec<(String, String)> {
        let p = self.dir.path();
        vec![
            (
                "CONTAINERS_STORAGE_CONF".to_string(),
                p.join("storage.conf").display().to_string(),
            ),
            (
                "CONTAINERS_CONF".to_string(),
                p.join("containers.conf").display().to_string(),
            ),
        ]
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.envs(self.env()).stdin(Stdio::null());
        cmd
    }

    /// Runs `podman ARGS` and returns its trimmed stdout; panics when it fails.
    pub fn podman(&self, args: &[&str]) -> String {
        let out = run(self.command().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Copies `image` from `docker` (`docker save | podman load`).
    pub fn load_from(&self, docker: &Dockerd, image: &str) {
        let mut save = docker
            .command()
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let out = self
            .command()
            .args(["load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("podman load");
        assert!(save.wait().unwrap().success(), "docker save {image} failed");
        assert!(
            out.status.success(),
            "podman load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["stop", "-a", "-t", "20"]).output();
        let _ = self.command().args(["rm", "-a", "-f"]).output();
        let _ = self.command().args(["rmi", "-a", "-f"]).output();
        let _ = self.command().args(["volume", "prune", "-f"]).output();
        if let Ok(mounts) = dagger_engine::sys::mount::mounts_under(self.dir.path()) {
            for m in mounts {
                let _ = dagger_engine::sys::mount::unmount_detach(&m);
            }
        }
    }
}
