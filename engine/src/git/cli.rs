//! Runs the git CLI hardened the way BuildKit's `util/gitutil/git_cli.go` does, and more:
//!
//! * the environment is rebuilt from nothing, so none of the engine's (or the host's) git
//!   configuration, `GIT_*` variables, templates, hooks or ssh keys reach git (G5);
//! * `protocol.file.allow=never` (our own cache is the one local source, allowed per call),
//!   `protocol.ext.allow=never`, no hooks, no fsmonitor, no credential helpers, no prompts;
//! * credentials travel only in the environment, as an `http.<origin>.extraHeader` set through
//!   `GIT_CONFIG_COUNT`, never in argv (which every local user can read) (G6);
//! * ssh runs with `-F /dev/null`, strict host key checking against the given known hosts only,
//!   and none of the engine user's identities.

use super::url::GitUrl;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Most of git's stderr a message keeps (the end, where the reason is).
const MAX_DETAIL: usize = 2000;

/// Proxy and TLS settings an operator sets for the engine apply to git too.
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Configuration that applies to every git command, whatever its config files say.
const HARDENING: &[&str] = &[
    "protocol.ext.allow=never",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.askPass=",
    "credential.helper=",
    "gc.auto=0",
    "maintenance.auto=false",
    "fetch.recurseSubmodules=false",
    "advice.detachedHead=false",
    "init.defaultBranch=main",
];

/// How one command reaches a remote.
#[derive(Clone, Copy, Default)]
pub(crate) struct RemoteCtx<'a> {
    /// Credentials for this URL's origin, and redaction of its secrets.
    pub url: Option<&'a GitUrl>,
    /// A known_hosts file for ssh; `None` trusts no host key.
    pub known_hosts: Option<&'a Path>,
    /// An SSH agent socket (`sshAuthSocket`): the only keys ssh may use.
    pub ssh_agent: Option<&'a Path>,
}

/// A failed or unstartable git command. Its text is already redacted.
#[derive(Debug)]
pub(crate) enum CmdError {
    Spawn(std::io::Error),
    Failed { status: String, stderr: String },
}

impl CmdError {
    /// What to show: git's own reason, or how the command ended.
    pub fn detail(&self) -> String {
        match self {
            CmdError::Spawn(e) => format!("cannot run git: {e}"),
            CmdError::Failed { status, stderr } if stderr.is_empty() => status.clone(),
            CmdError::Failed { stderr, .. } => stderr.clone(),
        }
    }

    pub fn stderr(&self) -> &str {
        match self {
            CmdError::Spawn(_) => "",
            CmdError::Failed { stderr, .. } => stderr,
        }
    }
}

#[derive(Clone)]
pub(crate) struct GitCli {
    program: PathBuf,
    /// An empty directory owned by the engine: git's `HOME` and `XDG_CONFIG_HOME`.
    home: PathBuf,
}

impl GitCli {
    pub fn new(program: PathBuf, home: PathBuf) -> Self {
        GitCli { program, home }
    }

    /// The command git would run, fully configured: for inspection in tests and for `run`.
    pub fn command(
        &self,
        cwd: &Path,
        remote: RemoteCtx<'_>,
        allow_local: bool,
        args: &[OsString],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.env_clear();
        for key in PASSTHROUGH_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env(
                "GIT_SSH_COMMAND",
                ssh_command(remote.known_hosts, remote.ssh_agent.is_some()),
            )
            .env("LC_ALL", "C")
            .env("LANG", "C");
        // Repository discovery stops at `cwd`: a checkout inside some other repository (a
        // state directory under a source tree) must never pick up that repository's config.
        if let Some(parent) = cwd.parent() {
            cmd.env("GIT_CEILING_DIRECTORIES", parent);
        }
        if let Some(agent) = remote.ssh_agent {
            cmd.env("SSH_AUTH_SOCK", agent);
        }
        if let Some(auth) = remote.url.and_then(|u| u.auth().map(|a| (u.origin(), a))) {
            // Scoped to the origin, so a submodule or redirect elsewhere never gets it.
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", format!("http.{}.extraHeader", auth.0))
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: {}", auth.1.header),
                );
        }
        let file_policy = if allow_local { "always" } else { "never" };
        cmd.arg("-c")
            .arg(format!("protocol.file.allow={file_policy}"));
        for c in HARDENING {
            cmd.arg("-c").arg(c);
        }
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs git and returns its stdout.
    pub async fn run(
        &self,
        cwd: &Path,
        remote: RemoteCtx<'_>,
        allow_local: bool,
        args: &[OsString],
    ) -> Result<String, CmdError> {
        let redact = |s: &str| match remote.url {
            Some(u) => u.redact(s),
            None => super::url::redact_userinfo(s),
        };
        let shown: Vec<String> = args.iter().map(|a| redact(&a.to_string_lossy())).collect();
        tracing::debug!("running git {}", shown.join(" "));
        let out = self
            .command(cwd, remote, allow_local, args)
            .output()
            .await
            .map_err(CmdError::Spawn)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = redact(String::from_utf8_lossy(&out.stderr).trim());
        let stderr = match stderr.char_indices().rev().nth(MAX_DETAIL) {
            Some((i, _)) => format!("…{}", &stderr[i..]),
            None => stderr,
        };
        tracing::debug!("git {} failed: {stderr}", shown.first().map_or("", |s| s));
        Err(CmdError::Failed {
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// `GIT_SSH_COMMAND` (run by a shell, hence the quoting).
/// ssh with no configuration file, no prompts and only the given host keys. Keys come from the
/// agent when there is one (git's HOME is an empty directory: there are no key files), and
/// from nowhere otherwise.
fn ssh_command(known_hosts: Option<&Path>, agent: bool) -> String {
    let known = known_hosts
        .map(|p| shell_quote(p.as_os_str()))
        .unwrap_or_else(|| "/dev/null".into());
    let identities = if agent {
        ""
    } else {
        " -o IdentitiesOnly=yes -o IdentityFile=/dev/null"
    };
    format!(
        "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known} \
         -o GlobalKnownHostsFile=/dev/null{identities}"
    )
}

fn shell_quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(cmd: &tokio::process::Command) -> Vec<(String, String)> {
        cmd.as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect()
    }

    #[test]
    fn hardened_environment_and_credentials_only_in_env() {
        let cli = GitCli::new("git".into(), "/state/git/home".into());
        let url = GitUrl::parse("https://bob:hunter2-token@127.0.0.1:8443/r.git").unwrap();
        let argv: Vec<OsString> = vec!["ls-remote".into(), "--".into(), url.remote().into()];
        let cmd = cli.command(
            Path::new("/state/git/home"),
            RemoteCtx {
                url: Some(&url),
                known_hosts: None,
                ssh_agent: None,
            },
            false,
            &argv,
        );
        let std = cmd.as_std();
        let all_args: Vec<String> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = all_args.join(" ");
        assert!(!joined.contains("hunter2"), "{joined}");
        assert!(!joined.contains("bob"), "{joined}");
        assert!(joined.contains("protocol.file.allow=never"));
        assert!(joined.contains("core.hooksPath=/dev/null"));
        assert!(joined.ends_with("ls-remote -- https://127.0.0.1:8443/r.git"));
        let env = env_of(&cmd);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_NOSYSTEM"), Some("1"));
        assert_eq!(get("GIT_CONFIG_GLOBAL"), Some("/dev/null"));
        assert_eq!(get("HOME"), Some("/state/git/home"));
        assert_eq!(get("GIT_TERMINAL_PROMPT"), Some("0"));
        assert_eq!(get("LC_ALL"), Some("C"));
        assert_eq!(get("GIT_CEILING_DIRECTORIES"), Some("/state/git"));
        assert_eq!(
            get("GIT_CONFIG_KEY_0"),
            Some("http.https://127.0.0.1:8443/.extraHeader")
        );
        assert!(get("GIT_CONFIG_VALUE_0")
            .unwrap()
            .starts_with("Authorization: Basic "));
        let ssh = get("GIT_SSH_COMMAND").unwrap();
        assert!(ssh.starts_with("ssh -F /dev/null "), "{ssh}");
        assert!(ssh.contains("StrictHostKeyChecking=yes"));
        // Nothing else from the engine's environment gets through.
        let allowed = [
            "PATH",
            "HOME",
            "XDG_CONFIG_HOME",
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
            "GIT_TERMINAL_PROMPT",
            "GIT_SSH_COMMAND",
            "LC_ALL",
            "LANG",
            "GIT_CEILING_DIRECTORIES",
            "GIT_CONFIG_COUNT",
            "GIT_CONFIG_KEY_0",
            "GIT_CONFIG_VALUE_0",
        ];
        for (k, _) in &env {
            assert!(
                allowed.contains(&k.as_str()) || PASSTHROUGH_ENV.contains(&k.as_str()),
                "{k} leaked into git's environment"
            );
        }
    }

    #[test]
    fn known_hosts_path_is_quoted_for_the_shell() {
        let s = ssh_command(Some(Path::new("/tmp/it's here/kh")), false);
        assert!(
            s.contains("UserKnownHostsFile='/tmp/it'\\''s here/kh'"),
            "{s}"
        );
        assert!(ssh_command(None, false).contains("UserKnownHostsFile=/dev/null"));
        assert!(ssh_command(None, false).contains("IdentityFile=/dev/null"));
        assert!(!ssh_command(None, true).contains("IdentitiesOnly"));
    }
}
