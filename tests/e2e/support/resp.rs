//! A small blocking Redis client: enough RESP2 for AUTH, INCR and GET, with a deadline on
//! every reply, over a socket a caller may have opened inside a pod's network namespace.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The longest one request and its reply may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
}

pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects (in the calling thread's network namespace) and authenticates.
    pub fn connect(addr: &str, password: &str) -> io::Result<Conn> {
        let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            reader: BufReader::new(stream),
        };
        match conn.cmd(&["AUTH", password])? {
            Reply::Simple(_) => Ok(conn),
            other => Err(io::Error::other(format!("AUTH: {other:?}"))),
        }
    }

    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader.get_mut().write_all(request.as_bytes())?;
        self.read()
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches("\r\n").to_owned())
    }

    fn read(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let bad = || io::Error::other(format!("unexpected reply {line:?}"));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut body = vec![0; len as usize + 2];
                    std::io::Read::read_exact(&mut self.reader, &mut body)?;
                    body.truncate(len as usize);
                    Reply::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
                }
            }
            _ => return Err(bad()),
        })
    }
}
