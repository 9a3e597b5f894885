//! `dagger-engine dial-stdio` (also reached as `buildctl dial-stdio`): joins standard input and
//! output to the engine's unix socket, so `docker exec -i`, `kubectl exec -i` or `ssh` can
//! carry a connection to an engine that listens only inside its container.
//!
//! Like BuildKit's helper: standard input is copied to the socket, and its end half-closes the
//! socket's write side; the command returns once the socket side ends (the engine closed the
//! connection), without waiting for standard input. Plain threads: a blocking read of standard
//! input cannot be cancelled, and the process exits as soon as this returns.

use crate::config::{Config, ListenAddr, DEFAULT_ADDRESS};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The socket to dial: `addr` when given (only `unix://` is accepted), otherwise the first
/// unix address the configuration listens on, otherwise the default socket.
pub fn socket_path(addr: Option<&str>, config: Option<&Config>) -> Result<PathBuf, String> {
    if let Some(addr) = addr {
        return match ListenAddr::parse(addr)? {
            ListenAddr::Unix(path) => Ok(path),
            ListenAddr::Tcp(_) => Err(format!(
                "{addr:?}: dial-stdio joins standard input and output to a unix socket; use unix:///PATH"
            )),
        };
    }
    let from_config = config.and_then(|c| {
        c.grpc.addresses.iter().find_map(|a| match a {
            ListenAddr::Unix(path) => Some(path.clone()),
            ListenAddr::Tcp(_) => None,
        })
    });
    match from_config {
        Some(path) => Ok(path),
        None => match ListenAddr::parse(DEFAULT_ADDRESS)? {
            ListenAddr::Unix(path) => Ok(path),
            ListenAddr::Tcp(_) => Err("the default address is not a unix socket".into()),
        },
    }
}

/// Connects to `socket` and joins it to this process's standard input and output.
pub fn run(socket: &Path) -> io::Result<()> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the engine at unix://{}: {e} (is the engine running?)",
                socket.display()
            ),
        )
    })?;
    splice(stream, io::stdin(), io::stdout())
}

/// Copies `input` to `stream` on a thread of its own (half-closing the stream's write side at
/// the end of `input`) and `stream` to `output` on this one; returns when `stream` ends.
pub fn splice<R, W>(stream: UnixStream, input: R, mut output: W) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write,
{
    let mut upstream = stream.try_clone()?;
    // Not joined: a read of a terminal or pipe cannot be interrupted, and the caller exits.
    std::thread::Builder::new()
        .name("dial-stdio-in".into())
        .spawn(move || {
            let mut input = input;
            let _ = copy_flushing(&mut input, &mut upstream);
            let _ = upstream.shutdown(Shutdown::Write);
        })?;
    let mut downstream = stream;
    copy_flushing(&mut downstream, &mut output)?;
    Ok(())
}

/// `io::copy` that flushes after every chunk: standard output is line-buffered, and an HTTP
/// answer rarely ends with a newline.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// An output that the test can read after `splice` returns.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copies_both_ways_and_half_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // A server that answers with what it read, in upper case, once the client half-closes.
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(&got.to_ascii_uppercase()).unwrap();
            got
        });
        let out = Shared::default();
        let stream = UnixStream::connect(&path).unwrap();
        splice(
            stream,
            io::Cursor::new(b"ping\nno newline".to_vec()),
            out.clone(),
        )
        .unwrap();
        assert_eq!(server.join().unwrap(), b"ping\nno newline");
        assert_eq!(&*out.0.lock().unwrap(), b"PING\nNO NEWLINE");
    }

    #[test]
    fn returns_when_the_engine_closes_even_if_input_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"bye").unwrap();
        });
        // Input that never ends: a pipe whose write end stays open.
        let (reader, _writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let out = Shared::default();
        splice(UnixStream::connect(&path).unwrap(), reader, out.clone()).unwrap();
        server.join().unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"bye");
    }

    #[test]
    fn address_choice() {
        assert_eq!(
            socket_path(Some("unix:///x/e.sock"), None).unwrap(),
            PathBuf::from("/x/e.sock")
        );
        assert!(socket_path(Some("tcp://127.0.0.1:1234"), None)
            .unwrap_err()
            .contains("unix socket"));
        assert_eq!(
            socket_path(None, None).unwrap(),
            PathBuf::from("/run/dagger/engine.sock")
        );
        let mut config = Config::default();
        config.grpc.addresses = vec![
            ListenAddr::Tcp("127.0.0.1:1234".into()),
            ListenAddr::Unix("/run/custom.sock".into()),
        ];
        assert_eq!(
            socket_path(None, Some(&config)).unwrap(),
            PathBuf::from("/run/custom.sock")
        );
    }
}
