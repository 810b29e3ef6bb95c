//! The proxy's stream sockets: TCP to Redis, TCP or a Unix socket from clients.
//!
//! Why a Unix socket at all: in a sidecar (and in local mode on the client's host) the hop
//! from the application to the proxy never leaves the machine, and a Unix socket carries it
//! with far less kernel work than loopback TCP: no TCP state machine, no ACKs, no checksum or
//! routing. That work is most of what a proxy costs (docs/PERFORMANCE.md), and the
//! application's own socket calls get cheaper too. Redis itself is in another pod, so only
//! this hop can use one.

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// A client's connection to the proxy.
pub enum ClientSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// What the copy path and the shared path need of a stream socket, so both work on either
/// kind of client socket and on the server's.
pub(super) trait Socket: AsFd + Sync {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Tells tokio the socket has nothing more to read (see `mux::after_short_read`).
    fn clear_read_readiness(&self);
}

/// tokio's TCP and Unix streams have the same inherent methods; this names them once.
macro_rules! impl_socket {
    ($($stream:ty),*) => {$(
        impl Socket for $stream {
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$stream>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$stream>::try_write(self, buf)
            }
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$stream>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$stream>::writable(self)
            }
            fn clear_read_readiness(&self) {
                // The closure makes no syscall: it only reports "would block" to tokio.
                let _ = self.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
        }
    )*};
}

impl_socket!(TcpStream, UnixStream);

/// Writes as much of `bytes` as the socket takes now, without waiting; returns how much.
pub(super) fn write_now(socket: &impl Socket, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Runs `$body` with `$s` bound to whichever stream the client socket holds.
macro_rules! on_stream {
    ($socket:expr, $s:ident => $body:expr) => {
        match $socket {
            ClientSocket::Tcp($s) => $body,
            ClientSocket::Unix($s) => $body,
        }
    };
}

impl AsFd for ClientSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        on_stream!(self, s => s.as_fd())
    }
}

impl Socket for ClientSocket {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        on_stream!(self, s => s.try_read(buf))
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        on_stream!(self, s => s.try_write(buf))
    }
    async fn readable(&self) -> io::Result<()> {
        on_stream!(self, s => s.readable().await)
    }
    async fn writable(&self) -> io::Result<()> {
        on_stream!(self, s => s.writable().await)
    }
    fn clear_read_readiness(&self) {
        on_stream!(self, s => s.clear_read_readiness())
    }
}

/// Half- or fully closes a socket now, whoever else still holds it.
pub(super) fn shutdown(socket: &impl AsFd, how: std::net::Shutdown) -> io::Result<()> {
    socket2::SockRef::from(socket).shutdown(how)
}

#[derive(Debug, thiserror::Error)]
pub enum UnixListenError {
    #[error(
        "another process is serving {0} (a connection to it was accepted); stop it or pick another path"
    )]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket; the proxy only replaces a socket left behind by a stopped process, so remove it or pick another path"
    )]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}: {source}; check that its directory exists and is writable")]
    Bind { path: PathBuf, source: io::Error },
}

/// A listening Unix socket whose file is removed when this is dropped, so a clean stop leaves
/// nothing behind.
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocketListener {
    /// Binds `path`, taking over a socket file left by a process that is gone (nothing accepts
    /// connections on it), and makes it connectable by every user (0666): whoever can reach
    /// the path may use the proxy, just as anyone on the host or pod can reach its loopback
    /// port. Restrict access with the directory's permissions.
    pub fn bind(path: &Path) -> Result<Self, UnixListenError> {
        let bind_error = |source| UnixListenError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(UnixListenError::NotASocket(path.to_path_buf()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(UnixListenError::InUse(path.to_path_buf())),
                Err(_) => std::fs::remove_file(path).map_err(bind_error)?,
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(bind_error(error)),
        }
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        let listener = Self {
            listener,
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(bind_error)?;
        Ok(listener)
    }

    pub(super) async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
