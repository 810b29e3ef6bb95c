//! A deliberately small RESP2/RESP3 client for the end-to-end tests.
//!
//! Written here rather than taken from a Redis crate so that a test controls every byte: it can
//! pipeline without waiting, read pub/sub pushes and RESP3 maps as they arrive, and tell a
//! closed connection (EOF or reset) apart from a slow one, which is what proxy tests assert on.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// How long a single request/reply may take before the client gives up (a test failure).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// One reply, RESP2 and RESP3 types folded into what the tests need to compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// RESP2 null bulk string / null array and RESP3 `_`.
    Nil,
    Array(Vec<Resp>),
    /// RESP3 map (`%`).
    Map(Vec<(Resp, Resp)>),
    /// RESP3 set (`~`).
    Set(Vec<Resp>),
    /// RESP3 out-of-band push (`>`), e.g. pub/sub messages after HELLO 3.
    Push(Vec<Resp>),
    /// RESP3 double, boolean, big number or verbatim string, kept as its text.
    Other(String),
}

impl Resp {
    /// The text of a simple or bulk string reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) | Resp::Other(s) => Some(s.clone()),
            Resp::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Resp::Simple(s) if s == "OK")
    }

    /// Elements of an array, set or push reply.
    pub fn items(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(v) | Resp::Set(v) | Resp::Push(v) => Some(v),
            _ => None,
        }
    }

    /// The value under a string key of a RESP3 map.
    pub fn map_get(&self, key: &str) -> Option<&Resp> {
        match self {
            Resp::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.text().as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A compact rendering for assertion messages (long bulk strings are shortened).
    pub fn brief(&self) -> String {
        match self {
            Resp::Bulk(b) if b.len() > 64 => format!("<{} bytes>", b.len()),
            other => format!("{other:?}"),
        }
    }
}

/// Encodes one command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

type Reader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;

/// One client connection (direct to a redis-server or through the proxy), over TCP or a
/// Unix socket.
pub struct Conn {
    reader: Reader,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Conn {
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = connect_within(addr, TcpStream::connect(addr)).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Conn::from_halves(Box::new(r), Box::new(w)))
    }

    /// Connects from the loopback address `source` (say 127.0.0.99), so that a test can cut
    /// other addresses off from the server and leave this client's path open.
    pub async fn connect_from(source: &str, addr: &str) -> io::Result<Conn> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        let source: std::net::IpAddr = source.parse().map_err(io::Error::other)?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let target: std::net::SocketAddr = addr.parse().map_err(io::Error::other)?;
        let stream = connect_within(addr, socket.connect(target)).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Conn::from_halves(Box::new(r), Box::new(w)))
    }

    pub async fn connect_unix(path: &Path) -> io::Result<Conn> {
        let stream = connect_within(&path.display().to_string(), UnixStream::connect(path)).await?;
        let (r, w) = stream.into_split();
        Ok(Conn::from_halves(Box::new(r), Box::new(w)))
    }

    fn from_halves(
        reader: Box<dyn AsyncRead + Unpin + Send>,
        writer: Box<dyn AsyncWrite + Unpin + Send>,
    ) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
        }
    }

    /// Connects and authenticates with `AUTH password` when a password is given.
    pub async fn connect_auth(addr: &str, password: Option<&str>) -> io::Result<Conn> {
        let mut conn = Conn::connect(addr).await?;
        if let Some(pw) = password {
            match conn.cmd(&["AUTH", pw]).await? {
                r if r.is_ok() => {}
                other => {
                    return Err(io::Error::other(format!(
                        "AUTH on {addr}: {}",
                        other.brief()
                    )));
                }
            }
        }
        Ok(conn)
    }

    /// Writes bytes without reading anything back. A peer that does not take them within
    /// `COMMAND_TIMEOUT` (nobody reading) is an error, not a hang.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let write = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, write).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer did not take {} bytes within {COMMAND_TIMEOUT:?}",
                    bytes.len()
                ),
            )),
        }
    }

    /// Half-closes: the peer sees end of stream, replies can still be read.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }

    pub async fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        self.send_raw(&encode(args)).await
    }

    /// Reads one reply, waiting as long as it takes.
    pub async fn read(&mut self) -> io::Result<Resp> {
        read_value(&mut self.reader).await
    }

    /// Reads one reply or fails with `TimedOut` after `within`.
    pub async fn read_within(&mut self, within: Duration) -> io::Result<Resp> {
        match tokio::time::timeout(within, self.read()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply within {within:?}"),
            )),
        }
    }

    /// Sends one command and reads its reply (server errors come back as `Resp::Error`).
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Resp> {
        self.send(args).await?;
        self.read_within(COMMAND_TIMEOUT).await
    }

    /// Sends every command in one write, then reads one reply per command.
    pub async fn pipeline(&mut self, cmds: &[Vec<String>]) -> io::Result<Vec<Resp>> {
        let mut buf = Vec::new();
        for c in cmds {
            buf.extend_from_slice(&encode(c));
        }
        self.send_raw(&buf).await?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(self.read_within(COMMAND_TIMEOUT).await?);
        }
        Ok(replies)
    }

    /// Waits up to `within` for the peer to close the connection. Returns `Ok(())` on EOF or a
    /// reset, an error naming what arrived instead (bytes that are not a close) or `TimedOut`.
    /// Replies that arrive first (e.g. an error line before the close) are skipped.
    pub async fn await_closed(&mut self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.reader.read(&mut buf)).await {
                Err(_) => return Err(format!("connection still open after {within:?}")),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) if is_close_error(&e) => return Ok(()),
                Ok(Err(e)) => return Err(format!("unexpected read error: {e}")),
            }
        }
    }
}

/// Errors that mean "the other side closed the connection".
pub fn is_close_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A connect that has not finished in 2 s is an error naming `what`, not a hang.
async fn connect_within<S>(
    what: &str,
    connect: impl Future<Output = io::Result<S>>,
) -> io::Result<S> {
    tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect {what} timed out")))?
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

async fn read_line(r: &mut Reader) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-reply",
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse::<i64>()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad length {s:?}")))
}

async fn read_blob(r: &mut Reader, len: i64) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; len as usize + 2];
    r.read_exact(&mut data).await?;
    data.truncate(len as usize);
    Ok(data)
}

async fn read_many(r: &mut Reader, n: i64) -> io::Result<Vec<Resp>> {
    let mut items = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        items.push(read_value(r).await?);
    }
    Ok(items)
}

fn read_value(r: &mut Reader) -> BoxFut<'_, io::Result<Resp>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        Ok(match kind {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(parse_len(rest)?),
            "_" => Resp::Nil,
            "," | "#" | "(" => Resp::Other(rest.to_string()),
            "$" | "=" | "!" => {
                let len = parse_len(rest)?;
                if len < 0 {
                    Resp::Nil
                } else {
                    let blob = read_blob(r, len).await?;
                    match kind {
                        "!" => Resp::Error(String::from_utf8_lossy(&blob).into_owned()),
                        "=" => Resp::Other(String::from_utf8_lossy(&blob).into_owned()),
                        _ => Resp::Bulk(blob),
                    }
                }
            }
            "*" | "~" | ">" => {
                let len = parse_len(rest)?;
                if len < 0 {
                    Resp::Nil
                } else {
                    let items = read_many(r, len).await?;
                    match kind {
                        "~" => Resp::Set(items),
                        ">" => Resp::Push(items),
                        _ => Resp::Array(items),
                    }
                }
            }
            "%" => {
                let len = parse_len(rest)?;
                let flat = read_many(r, len * 2).await?;
                let mut pairs = Vec::with_capacity(len as usize);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Resp::Map(pairs)
            }
            "|" => {
                // An attribute precedes the real reply; the tests have no use for it.
                let len = parse_len(rest)?;
                read_many(r, len * 2).await?;
                read_value(r).await?
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown RESP line {line:?}"),
                ));
            }
        })
    })
}
