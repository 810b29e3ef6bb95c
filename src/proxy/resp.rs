//! Just enough RESP to multiplex: where each request and each reply ends, and whether a
//! request may share a server connection with other clients' requests.
//!
//! Nothing here decodes values or allocates. The proxy never changes a byte; it only needs
//! frame boundaries, so it can hand each client exactly its own replies, and the command name,
//! so that anything that changes connection state, blocks, or does not answer with exactly one
//! reply is kept off the shared connection (the client is *pinned* to a connection of its own).
//!
//! The request scanner is strict on purpose: it accepts only the canonical form clients send
//! (`*N\r\n` then N `$len\r\n<bytes>\r\n`). Anything else (inline commands, empty arrays, odd
//! lengths) goes to a pinned connection, where Redis itself answers it, protocol errors
//! included, exactly as it would have without the proxy. A malformed request can therefore
//! never reach, and close, a connection other clients depend on.

/// Requests larger than this pin their client instead of being buffered whole: a shared
/// connection needs a request complete before it can be queued behind others, and buffering a
/// 512 MB value to do that would cost the memory a byte stream does not need.
pub const MAX_SHARED_REQUEST: usize = 1024 * 1024;

/// Requests with more arguments than this pin their client (the same reason as above, and it
/// keeps the scanner's worst case small).
const MAX_SHARED_ARGS: u64 = 1024 * 1024;

/// What the front of a client's buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A complete request of this many bytes that may go on a shared connection, with
    /// exactly one reply.
    Shared(usize),
    /// The request starting here must go on a connection of its own, as must everything
    /// after it (it may change connection state, block, subscribe, or be malformed).
    Pin,
    /// Not a whole request yet: read more.
    Incomplete,
}

/// Classifies the request at the start of `buf`.
pub fn scan_request(buf: &[u8]) -> Request {
    let mut pos = 0;
    if buf.first() != Some(&b'*') {
        return if buf.is_empty() {
            Request::Incomplete
        } else {
            Request::Pin
        };
    }
    pos += 1;
    let args = match read_len(buf, &mut pos) {
        Number::Complete(n) if (1..=MAX_SHARED_ARGS).contains(&n) => n,
        Number::Complete(_) | Number::Invalid => return Request::Pin,
        Number::Incomplete => return Request::Incomplete,
    };
    for index in 0..args {
        match buf.get(pos) {
            None => return Request::Incomplete,
            Some(b'$') => pos += 1,
            Some(_) => return Request::Pin,
        }
        let len = match read_len(buf, &mut pos) {
            Number::Complete(n) => n as usize,
            Number::Invalid => return Request::Pin,
            Number::Incomplete => return Request::Incomplete,
        };
        if len > MAX_SHARED_REQUEST || pos + len + 2 > MAX_SHARED_REQUEST {
            return Request::Pin;
        }
        if index == 0 {
            // The command name: decided as soon as it is here, so a pinning command is never
            // waited on for the rest of its arguments.
            let Some(name) = buf.get(pos..pos + len) else {
                return Request::Incomplete;
            };
            match is_shareable(name, args, buf, pos + len) {
                Some(true) => {}
                Some(false) => return Request::Pin,
                None => return Request::Incomplete,
            }
        }
        pos += len;
        match buf.get(pos..pos + 2) {
            None => return Request::Incomplete,
            Some(b"\r\n") => pos += 2,
            // Not even a well-formed bulk string: let Redis say so on a pinned connection.
            Some(_) if buf.len() >= pos + 2 => return Request::Pin,
            Some(_) => return Request::Incomplete,
        }
    }
    Request::Shared(pos)
}

/// The outcome of scanning one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A complete reply of this many bytes.
    Complete(usize),
    Incomplete,
    /// Not RESP: the shared connection is out of step and must be closed.
    Invalid,
}

/// Finds the end of the reply at the start of `buf`, nested aggregates included. It accepts
/// RESP3 types as well, although a shared connection never says HELLO 3.
pub fn scan_reply(buf: &[u8]) -> Reply {
    let mut pos = 0;
    // Elements still to read; aggregates add theirs.
    let mut wanted: u64 = 1;
    while wanted > 0 {
        let Some(&kind) = buf.get(pos) else {
            return Reply::Incomplete;
        };
        pos += 1;
        wanted -= 1;
        match kind {
            // Simple string, error, integer, null, double, boolean, big number: one line.
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                match memchr::memchr(b'\n', &buf[pos..]) {
                    Some(offset) if offset > 0 && buf[pos + offset - 1] == b'\r' => {
                        pos += offset + 1;
                    }
                    Some(_) => return Reply::Invalid,
                    None => return Reply::Incomplete,
                }
            }
            // Bulk string, blob error, verbatim string: length-prefixed, -1 is null.
            b'$' | b'!' | b'=' => match read_signed_len(buf, &mut pos) {
                Number::Complete(None) => {}
                Number::Complete(Some(len)) => {
                    let end = pos + len as usize;
                    match buf.get(end..end + 2) {
                        Some(b"\r\n") => pos = end + 2,
                        Some(_) => return Reply::Invalid,
                        None => return Reply::Incomplete,
                    }
                }
                Number::Invalid => return Reply::Invalid,
                Number::Incomplete => return Reply::Incomplete,
            },
            // Array, set, push: N elements; map, attribute: N pairs (an attribute is followed
            // by the reply it annotates).
            b'*' | b'~' | b'>' | b'%' | b'|' => match read_signed_len(buf, &mut pos) {
                Number::Complete(None) => {}
                Number::Complete(Some(n)) => {
                    wanted = wanted.saturating_add(match kind {
                        b'%' => 2 * n,
                        b'|' => 2 * n + 1,
                        _ => n,
                    });
                }
                Number::Invalid => return Reply::Invalid,
                Number::Incomplete => return Reply::Incomplete,
            },
            _ => return Reply::Invalid,
        }
    }
    Reply::Complete(pos)
}

enum Number<T> {
    Complete(T),
    Incomplete,
    Invalid,
}

/// Reads a request length: a non-negative decimal terminated by CRLF, as Redis requires.
fn read_len(buf: &[u8], pos: &mut usize) -> Number<u64> {
    // Far above anything shareable; only keeps the arithmetic small.
    read_decimal(buf, pos, MAX_SHARED_REQUEST as u64 * 1024)
}

/// Reads a reply length: a decimal, or -1 for null (`None`).
fn read_signed_len(buf: &[u8], pos: &mut usize) -> Number<Option<u64>> {
    if buf.get(*pos) == Some(&b'-') {
        return match buf.get(*pos + 1..*pos + 4) {
            Some(b"1\r\n") => {
                *pos += 4;
                Number::Complete(None)
            }
            Some(_) => Number::Invalid,
            None if b"1\r\n".starts_with(&buf[*pos + 1..]) => Number::Incomplete,
            None => Number::Invalid,
        };
    }
    // Redis caps a bulk string at 512 MB and aggregates far below this.
    match read_decimal(buf, pos, 1 << 40) {
        Number::Complete(n) => Number::Complete(Some(n)),
        Number::Incomplete => Number::Incomplete,
        Number::Invalid => Number::Invalid,
    }
}

/// Reads at least one digit, then CRLF; a value over `max` is invalid.
fn read_decimal(buf: &[u8], pos: &mut usize, max: u64) -> Number<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    loop {
        match buf.get(*pos) {
            None => return Number::Incomplete,
            Some(&byte @ b'0'..=b'9') => {
                value = value * 10 + u64::from(byte - b'0');
                if value > max {
                    return Number::Invalid;
                }
                digits += 1;
                *pos += 1;
            }
            Some(b'\r') if digits > 0 => {
                return match buf.get(*pos + 1) {
                    None => Number::Incomplete,
                    Some(b'\n') => {
                        *pos += 2;
                        Number::Complete(value)
                    }
                    Some(_) => Number::Invalid,
                };
            }
            Some(_) => return Number::Invalid,
        }
    }
}

/// Whether a command may share a server connection: it answers with exactly one reply, never
/// blocks, and leaves the connection as it found it. Everything not listed pins, so a command
/// added to Redis later is safe by default. `None`: the bytes that decide it have not arrived.
///
/// `args` and `rest` (where the bytes after the name start) tell apart the harmless and the
/// harmful forms of a few commands.
fn is_shareable(name: &[u8], args: u64, buf: &[u8], rest: usize) -> Option<bool> {
    let mut upper = [0u8; NAME_KEY_LEN];
    let Some(slot) = upper.get_mut(..name.len()) else {
        return Some(false);
    };
    slot.copy_from_slice(name);
    slot.make_ascii_uppercase();
    if SHAREABLE_KEYS
        .binary_search(&u128::from_be_bytes(upper))
        .is_ok()
    {
        return Some(true);
    }
    let name = &upper[..name.len()];
    let after_name = buf.get(rest..).unwrap_or_default();
    match name {
        // SELECT 0 on a shared connection (always on database 0) changes nothing; other
        // databases pin.
        b"SELECT" if args == 2 => starts_with_ci(after_name, b"\r\n$1\r\n0\r\n"),
        // Client libraries announce themselves on connect (redis-py, go-redis, Jedis); the
        // name only shows in CLIENT LIST, so it need not cost the client the shared path.
        b"CLIENT" if args >= 2 => starts_with_ci(after_name, b"\r\n$7\r\nSETINFO\r\n"),
        _ => Some(false),
    }
}

/// Whether `haystack` starts with `prefix` (ASCII case-insensitive); `None` while what has
/// arrived matches but is shorter. With `args` checked, a complete request is always long
/// enough to decide, so this cannot wait for bytes that will never come.
fn starts_with_ci(haystack: &[u8], prefix: &[u8]) -> Option<bool> {
    let n = haystack.len().min(prefix.len());
    if !haystack[..n].eq_ignore_ascii_case(&prefix[..n]) {
        Some(false)
    } else if n == prefix.len() {
        Some(true)
    } else {
        None
    }
}

/// A command name as a number: its bytes, big-endian, zero-padded. For names without NUL
/// bytes this keeps their order, so the sorted list below gives a sorted key table, and a
/// lookup compares integers instead of calling memcmp (which was 8 % of the proxy's CPU at
/// `-P 16`, `bench/profile.sh`).
const NAME_KEY_LEN: usize = 16;

const fn name_key(name: &[u8]) -> u128 {
    let mut key = [0u8; NAME_KEY_LEN];
    let mut i = 0;
    while i < name.len() {
        key[i] = name[i];
        i += 1;
    }
    u128::from_be_bytes(key)
}

const SHAREABLE_KEYS: [u128; SHAREABLE.len()] = {
    let mut keys = [0; SHAREABLE.len()];
    let mut i = 0;
    while i < SHAREABLE.len() {
        keys[i] = name_key(SHAREABLE[i]);
        i += 1;
    }
    keys
};

/// Sorted, uppercase, at most `NAME_KEY_LEN` bytes (checked by a test), so that the key
/// table is sorted and lookup is a binary search.
const SHAREABLE: &[&[u8]] = &[
    b"APPEND",
    b"BITCOUNT",
    b"BITFIELD",
    b"BITFIELD_RO",
    b"BITOP",
    b"BITPOS",
    b"COPY",
    b"DBSIZE",
    b"DECR",
    b"DECRBY",
    b"DEL",
    b"DUMP",
    b"ECHO",
    b"EVAL",
    b"EVALSHA",
    b"EVALSHA_RO",
    b"EVAL_RO",
    b"EXISTS",
    b"EXPIRE",
    b"EXPIREAT",
    b"EXPIRETIME",
    b"FCALL",
    b"FCALL_RO",
    b"GEOADD",
    b"GEODIST",
    b"GEOHASH",
    b"GEOPOS",
    b"GEOSEARCH",
    b"GEOSEARCHSTORE",
    b"GET",
    b"GETBIT",
    b"GETDEL",
    b"GETEX",
    b"GETRANGE",
    b"GETSET",
    b"HDEL",
    b"HEXISTS",
    b"HGET",
    b"HGETALL",
    b"HINCRBY",
    b"HINCRBYFLOAT",
    b"HKEYS",
    b"HLEN",
    b"HMGET",
    b"HMSET",
    b"HRANDFIELD",
    b"HSCAN",
    b"HSET",
    b"HSETNX",
    b"HSTRLEN",
    b"HVALS",
    b"INCR",
    b"INCRBY",
    b"INCRBYFLOAT",
    b"LCS",
    b"LINDEX",
    b"LINSERT",
    b"LLEN",
    b"LMOVE",
    b"LMPOP",
    b"LPOP",
    b"LPOS",
    b"LPUSH",
    b"LPUSHX",
    b"LRANGE",
    b"LREM",
    b"LSET",
    b"LTRIM",
    b"MGET",
    b"MSET",
    b"MSETNX",
    b"PERSIST",
    b"PEXPIRE",
    b"PEXPIREAT",
    b"PEXPIRETIME",
    b"PFADD",
    b"PFCOUNT",
    b"PFMERGE",
    b"PING",
    b"PSETEX",
    b"PTTL",
    b"PUBLISH",
    b"RANDOMKEY",
    b"RENAME",
    b"RENAMENX",
    b"RESTORE",
    b"RPOP",
    b"RPOPLPUSH",
    b"RPUSH",
    b"RPUSHX",
    b"SADD",
    b"SCAN",
    b"SCARD",
    b"SDIFF",
    b"SDIFFSTORE",
    b"SET",
    b"SETBIT",
    b"SETEX",
    b"SETNX",
    b"SETRANGE",
    b"SINTER",
    b"SINTERCARD",
    b"SINTERSTORE",
    b"SISMEMBER",
    b"SMEMBERS",
    b"SMISMEMBER",
    b"SMOVE",
    b"SORT",
    b"SORT_RO",
    b"SPOP",
    b"SPUBLISH",
    b"SRANDMEMBER",
    b"SREM",
    b"SSCAN",
    b"STRLEN",
    b"SUBSTR",
    b"SUNION",
    b"SUNIONSTORE",
    b"TIME",
    b"TOUCH",
    b"TTL",
    b"TYPE",
    b"UNLINK",
    b"XACK",
    b"XADD",
    b"XAUTOCLAIM",
    b"XCLAIM",
    b"XDEL",
    b"XLEN",
    b"XPENDING",
    b"XRANGE",
    b"XREVRANGE",
    b"XTRIM",
    b"ZADD",
    b"ZCARD",
    b"ZCOUNT",
    b"ZDIFF",
    b"ZDIFFSTORE",
    b"ZINCRBY",
    b"ZINTER",
    b"ZINTERCARD",
    b"ZINTERSTORE",
    b"ZLEXCOUNT",
    b"ZMPOP",
    b"ZMSCORE",
    b"ZPOPMAX",
    b"ZPOPMIN",
    b"ZRANDMEMBER",
    b"ZRANGE",
    b"ZRANGEBYLEX",
    b"ZRANGEBYSCORE",
    b"ZRANGESTORE",
    b"ZRANK",
    b"ZREM",
    b"ZREMRANGEBYLEX",
    b"ZREMRANGEBYRANK",
    b"ZREMRANGEBYSCORE",
    b"ZREVRANGE",
    b"ZREVRANGEBYLEX",
    b"ZREVRANGEBYSCORE",
    b"ZREVRANK",
    b"ZSCAN",
    b"ZSCORE",
    b"ZUNION",
    b"ZUNIONSTORE",
];

#[cfg(test)]
mod tests;
