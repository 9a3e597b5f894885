//! `_EXPERIMENTAL_DAGGER_RUNNER_HOST`: where the engine is and how to reach it.

use std::fmt;
use std::path::PathBuf;

pub const RUNNER_HOST_ENV: &str = "_EXPERIMENTAL_DAGGER_RUNNER_HOST";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerHost {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    DockerContainer {
        name: String,
    },
    DockerImage {
        reference: String,
    },
    PodmanContainer {
        name: String,
    },
    KubePod {
        pod: String,
        context: Option<String>,
        namespace: Option<String>,
        container: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {RUNNER_HOST_ENV}: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

const SCHEMES: &str =
    "unix://, tcp://, docker-container://, docker-image://, podman-container://, kube-pod://";

impl RunnerHost {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let err = |m: String| Err(ParseError(format!("{value:?}: {m}")));
        let Some((scheme, rest)) = value.split_once("://") else {
            return err(format!("expected SCHEME://..., one of {SCHEMES}"));
        };
        match scheme {
            "unix" => {
                if !rest.starts_with('/') {
                    return err(
                        "expected an absolute socket path, as in unix:///run/dagger/engine.sock"
                            .into(),
                    );
                }
                Ok(RunnerHost::Unix(PathBuf::from(rest)))
            }
            "tcp" => {
                let hostport = rest.trim_end_matches('/');
                let Some((host, port)) = hostport.rsplit_once(':') else {
                    return err("expected tcp://HOST:PORT".into());
                };
                if host.is_empty() || host.contains('/') {
                    return err("expected tcp://HOST:PORT".into());
                }
                let Ok(port) = port.parse::<u16>() else {
                    return err(format!("{port:?} is not a port number"));
                };
                Ok(RunnerHost::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "docker-container" | "podman-container" => {
                if !is_container_name(rest) {
                    return err(format!(
                        "{rest:?} is not a container name (letters, digits, '_', '.', '-', starting with a letter or digit)"
                    ));
                }
                let name = rest.to_string();
                Ok(if scheme == "docker-container" {
                    RunnerHost::DockerContainer { name }
                } else {
                    RunnerHost::PodmanContainer { name }
                })
            }
            "docker-image" => {
                if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return err("expected an image reference, as in docker-image://registry.example.com/engine:v1".into());
                }
                Ok(RunnerHost::DockerImage {
                    reference: rest.to_string(),
                })
            }
            "kube-pod" => {
                let (pod, query) = rest.split_once('?').unwrap_or((rest, ""));
                if !is_dns_label_path(pod) {
                    return err(format!("{pod:?} is not a pod name"));
                }
                let (mut context, mut namespace, mut container) = (None, None, None);
                for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                    let slot = match k.as_ref() {
                        "context" => &mut context,
                        "namespace" => &mut namespace,
                        "container" => &mut container,
                        other => {
                            return err(format!(
                            "unknown parameter {other:?}: expected context, namespace or container"
                        ))
                        }
                    };
                    if v.is_empty() {
                        return err(format!("parameter {k:?} is empty"));
                    }
                    *slot = Some(v.into_owned());
                }
                Ok(RunnerHost::KubePod {
                    pod: pod.to_string(),
                    context,
                    namespace,
                    container,
                })
            }
            other => err(format!(
                "unsupported scheme {other:?}: expected one of {SCHEMES}"
            )),
        }
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            RunnerHost::Unix(_) => "unix",
            RunnerHost::Tcp { .. } => "tcp",
            RunnerHost::DockerContainer { .. } => "docker-container",
            RunnerHost::DockerImage { .. } => "docker-image",
            RunnerHost::PodmanContainer { .. } => "podman-container",
            RunnerHost::KubePod { .. } => "kube-pod",
        }
    }
}

fn is_container_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_dns_label_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl fmt::Display for RunnerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerHost::Unix(p) => write!(f, "unix://{}", p.display()),
            RunnerHost::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            RunnerHost::DockerContainer { name } => write!(f, "docker-container://{name}"),
            RunnerHost::DockerImage { reference } => write!(f, "docker-image://{reference}"),
            RunnerHost::PodmanContainer { name } => write!(f, "podman-container://{name}"),
            RunnerHost::KubePod {
                pod,
                context,
                namespace,
                container,
            } => {
                write!(f, "kube-pod://{pod}")?;
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in [
                    ("context", context),
                    ("namespace", namespace),
                    ("container", container),
                ] {
                    if let Some(v) = v {
                        q.append_pair(k, v);
                    }
                }
                let q = q.finish();
                if !q.is_empty() {
                    write!(f, "?{q}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> RunnerHost {
        RunnerHost::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str) -> String {
        RunnerHost::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn all_six_schemes() {
        assert_eq!(
            ok("unix:///run/dagger/engine.sock"),
            RunnerHost::Unix("/run/dagger/engine.sock".into())
        );
        assert_eq!(
            ok("tcp://127.0.0.1:1234"),
            RunnerHost::Tcp {
                host: "127.0.0.1".into(),
                port: 1234
            }
        );
        assert_eq!(
            ok("tcp://[::1]:1234"),
            RunnerHost::Tcp {
                host: "[::1]".into(),
                port: 1234
            }
        );
        assert_eq!(
            ok("docker-container://dagger-engine.v1"),
            RunnerHost::DockerContainer {
                name: "dagger-engine.v1".into()
            }
        );
        assert_eq!(
            ok("docker-image://localhost:5000/dagger/engine:v0.1.0"),
            RunnerHost::DockerImage {
                reference: "localhost:5000/dagger/engine:v0.1.0".into()
            }
        );
        assert_eq!(
            ok("podman-container://my_engine"),
            RunnerHost::PodmanContainer {
                name: "my_engine".into()
            }
        );
        assert_eq!(
            ok("kube-pod://dagger-engine-x7k2p?context=prod&namespace=dagger&container=engine"),
            RunnerHost::KubePod {
                pod: "dagger-engine-x7k2p".into(),
                context: Some("prod".into()),
                namespace: Some("dagger".into()),
                container: Some("engine".into()),
            }
        );
        assert_eq!(
            ok("kube-pod://p1"),
            RunnerHost::KubePod {
                pod: "p1".into(),
                context: None,
                namespace: None,
                container: None
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "unix:///run/dagger/engine.sock",
            "tcp://127.0.0.1:1234",
            "docker-container://e",
            "docker-image://registry.example.com/engine@sha256:abc",
            "podman-container://e",
            "kube-pod://p?context=c%2Fx&namespace=n",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
        assert_eq!(
            RunnerHost::parse("kube-pod://p?context=c%2Fx").unwrap(),
            RunnerHost::KubePod {
                pod: "p".into(),
                context: Some("c/x".into()),
                namespace: None,
                container: None
            }
        );
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        assert!(bad("/run/dagger/engine.sock").contains("expected SCHEME://"));
        assert!(bad("unix://relative.sock").contains("absolute socket path"));
        assert!(bad("tcp://localhost").contains("tcp://HOST:PORT"));
        assert!(bad("tcp://:80").contains("tcp://HOST:PORT"));
        assert!(bad("tcp://h:http").contains("not a port number"));
        assert!(bad("docker-container://").contains("not a container name"));
        assert!(bad("docker-container://-x").contains("not a container name"));
        assert!(bad("podman-container://a/b").contains("not a container name"));
        assert!(bad("docker-image://").contains("image reference"));
        assert!(bad("docker-image://a b").contains("image reference"));
        assert!(bad("kube-pod://").contains("not a pod name"));
        assert!(bad("kube-pod://Pod").contains("not a pod name"));
        assert!(bad("kube-pod://p?cluster=x").contains("unknown parameter \"cluster\""));
        assert!(bad("kube-pod://p?context=").contains("is empty"));
        let e = bad("ssh://host");
        assert!(
            e.contains("unsupported scheme \"ssh\"") && e.contains("kube-pod://"),
            "{e}"
        );
        assert!(
            e.starts_with("invalid _EXPERIMENTAL_DAGGER_RUNNER_HOST"),
            "{e}"
        );
    }
}
