//! Listener addresses: `unix:///absolute/path` and `tcp://HOST:PORT`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    /// `HOST:PORT` as written; resolved when binding.
    Tcp(String),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix address needs an absolute path, as in unix:///run/dagger/engine.sock"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
                format!("{s:?}: a tcp address needs a port, as in tcp://127.0.0.1:1234")
            })?;
            if host.is_empty() {
                return Err(format!(
                    "{s:?}: a tcp address needs a host, as in tcp://0.0.0.0:1234"
                ));
            }
            port.parse::<u16>()
                .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
            return Ok(ListenAddr::Tcp(hostport.to_string()));
        }
        Err(format!(
            "{s:?}: unsupported listener address: expected unix:///PATH or tcp://HOST:PORT"
        ))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Tcp(hp) => write!(f, "tcp://{hp}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners() {
        assert_eq!(
            ListenAddr::parse("unix:///run/dagger/engine.sock"),
            Ok(ListenAddr::Unix("/run/dagger/engine.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp://0.0.0.0:1234"),
            Ok(ListenAddr::Tcp("0.0.0.0:1234".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp://[::1]:1234"),
            Ok(ListenAddr::Tcp("[::1]:1234".into()))
        );
        assert!(ListenAddr::parse("unix://relative.sock").is_err());
        assert!(ListenAddr::parse("tcp://host").is_err());
        assert!(ListenAddr::parse("tcp://:80").is_err());
        assert!(ListenAddr::parse("tcp://h:99999").is_err());
        assert!(ListenAddr::parse("fd://3").is_err());
        assert_eq!(
            ListenAddr::parse("tcp://127.0.0.1:9").unwrap().to_string(),
            "tcp://127.0.0.1:9"
        );
    }
}
