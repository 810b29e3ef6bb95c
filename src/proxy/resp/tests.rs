use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// The canonical encoding clients send: `*N\r\n` then N `$len\r\n<bytes>\r\n`.
fn encode(words: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn cmd(words: &[&str]) -> Vec<u8> {
    encode(&words.iter().map(|w| w.as_bytes()).collect::<Vec<_>>())
}

fn shared(request: &[u8]) -> Request {
    Request::Shared(request.len())
}

// ---- the allowlist ------------------------------------------------------------------------

#[test]
fn shareable_is_sorted_unique_and_uppercase() {
    for pair in SHAREABLE.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{:?} must sort strictly before {:?}",
            String::from_utf8_lossy(pair[0]),
            String::from_utf8_lossy(pair[1]),
        );
    }
    for name in SHAREABLE {
        let text = String::from_utf8_lossy(name);
        assert!(!name.is_empty());
        assert!(
            name.iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_'),
            "{text} is not an uppercase command name"
        );
        // is_shareable looks names up as NAME_KEY_LEN-byte keys; a longer one could never match.
        assert!(
            name.len() <= NAME_KEY_LEN,
            "{text} is longer than a lookup key"
        );
    }
    assert!(
        SHAREABLE_KEYS.windows(2).all(|pair| pair[0] < pair[1]),
        "the key table must be sorted like the names"
    );
}

#[test]
fn every_allowlisted_name_is_shared_in_any_case() {
    for name in SHAREABLE {
        let upper = encode(&[name, b"key"]);
        let lower = encode(&[&name.to_ascii_lowercase(), b"key"]);
        assert_eq!(scan_request(&upper), shared(&upper), "{upper:?}");
        assert_eq!(scan_request(&lower), shared(&lower), "{lower:?}");
    }
}

// ---- scan_request: tables -----------------------------------------------------------------

#[test]
fn get_and_set_are_shared_with_their_exact_length() {
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    assert_eq!(scan_request(get), Request::Shared(22));
    let set = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    assert_eq!(scan_request(set), Request::Shared(33));
    // Pipelined: only the first request counts, whatever follows it.
    let both = [&get[..], &set[..]].concat();
    assert_eq!(scan_request(&both), Request::Shared(22));
    assert_eq!(scan_request(&both[22..]), Request::Shared(33));
    let then_garbage = [&get[..], b"garbage"].concat();
    assert_eq!(scan_request(&then_garbage), Request::Shared(22));
}

#[test]
fn command_names_are_case_insensitive() {
    for name in ["get", "Get", "gEt", "GET"] {
        let request = cmd(&[name, "key"]);
        assert_eq!(scan_request(&request), shared(&request), "{name}");
    }
    for name in ["multi", "Multi", "mULTI"] {
        assert_eq!(scan_request(&cmd(&[name])), Request::Pin, "{name}");
    }
}

#[test]
fn values_may_hold_crlf_and_resp_syntax() {
    let request = cmd(&["SET", "k\r\n*1\r\n$4\r\nQUIT\r\n", "\r\n"]);
    assert_eq!(scan_request(&request), shared(&request));
    let empty = cmd(&["SET", "", ""]);
    assert_eq!(scan_request(&empty), shared(&empty));
}

#[test]
fn state_changing_blocking_and_unknown_commands_pin() {
    let long_name = "X".repeat(30);
    let cases: &[&[&str]] = &[
        &["MULTI"],
        &["EXEC"],
        &["DISCARD"],
        &["WATCH", "key"],
        &["UNWATCH"],
        &["SUBSCRIBE", "channel"],
        &["PSUBSCRIBE", "news.*"],
        &["SSUBSCRIBE", "channel"],
        &["BLPOP", "list", "0"],
        &["BRPOP", "list", "0"],
        &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
        &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        &["WAIT", "1", "0"],
        &["MONITOR"],
        &["AUTH", "secret"],
        &["AUTH", "user", "secret"],
        &["HELLO", "3"],
        &["SELECT", "1"],
        &["SELECT", "10"],
        &["select", "1"],
        &["SELECT", "00"],
        &["SELECT", "0", "extra"],
        &["SELECT"],
        &["CLIENT", "SETNAME", "app"],
        &["CLIENT", "ID"],
        &["CLIENT", "REPLY", "OFF"],
        &["CLIENT", "TRACKING", "ON"],
        &["CLIENT", "SETINFOX", "lib-name", "x"],
        &["CLIENT"],
        &["QUIT"],
        &["RESET"],
        &["READONLY"],
        &["SHUTDOWN"],
        &["NOSUCHCOMMAND", "arg"],
        &[""],
        &[&long_name],
        &[&long_name, "arg"],
    ];
    for words in cases {
        assert_eq!(scan_request(&cmd(words)), Request::Pin, "{words:?}");
    }
}

#[test]
fn harmless_forms_of_select_and_client_are_shared() {
    let cases: &[&[&str]] = &[
        &["SELECT", "0"],
        &["select", "0"],
        &["client", "setinfo", "lib-name", "x"],
        &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
        &["Client", "SetInfo", "lib-ver", "5.0.1"],
        // Wrong arity: Redis answers with one error, the connection is untouched.
        &["CLIENT", "SETINFO"],
    ];
    for words in cases {
        let request = cmd(words);
        assert_eq!(scan_request(&request), shared(&request), "{words:?}");
    }
}

#[test]
fn pinning_commands_are_decided_by_their_name_alone() {
    // The arguments of a blocking or subscribing command are never waited for.
    assert_eq!(scan_request(b"*3\r\n$5\r\nBLPOP\r\n"), Request::Pin);
    assert_eq!(scan_request(b"*3\r\n$5\r\nBLPOP\r\n$4\r\nli"), Request::Pin);
    assert_eq!(scan_request(b"*2\r\n$9\r\nSUBSCRIBE\r\n"), Request::Pin);
    assert_eq!(
        scan_request(b"*2\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$3\r"),
        Request::Pin
    );
    assert_eq!(scan_request(b"*2\r\n$6\r\nSELECT\r\n$1\r\n1"), Request::Pin);
    // But a shareable one is not complete before its last byte.
    assert_eq!(scan_request(b"*2\r\n$3\r\nGET\r\n"), Request::Incomplete);
    assert_eq!(
        scan_request(b"*2\r\n$6\r\nSELECT\r\n$1\r\n"),
        Request::Incomplete
    );
}

#[test]
fn non_canonical_and_malformed_requests_pin() {
    let cases: &[&[u8]] = &[
        b"PING\r\n",
        b"GET key\r\n",
        b"\r\n",
        b"*0\r\n",
        b"*-1\r\n",
        b"*x\r\n",
        b"*\r\n",
        b"*1\n$4\r\nPING\r\n",
        b"*1\rX",
        b"*01x",
        b"*1\r\n$3\r\nGETxx",
        b"*2\r\n$3\r\nGET\r\n$1\r\nkXY",
        b"*1\r\n$3\r\nGET\nX",
        b"*1\r\n:3\r\n",
        b"*1\r\n+GET\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$3x",
        b"*2\r\n$3\r\nGET\r\n*1\r\n",
    ];
    for request in cases {
        assert_eq!(
            scan_request(request),
            Request::Pin,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn oversized_requests_pin_as_soon_as_the_header_is_seen() {
    let header = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n",
        MAX_SHARED_REQUEST + 1
    );
    assert_eq!(scan_request(header.as_bytes()), Request::Pin);
    let huge = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n";
    assert_eq!(scan_request(huge), Request::Pin);
    // An oversized command name is not waited for either.
    let name = format!("*1\r\n${}\r\n", MAX_SHARED_REQUEST + 1);
    assert_eq!(scan_request(name.as_bytes()), Request::Pin);
    // A length no request could have is not Redis syntax at all.
    assert_eq!(
        scan_request(b"*1\r\n$99999999999999999999999\r\n"),
        Request::Pin
    );
    // Too many arguments, decided by the array header.
    let args = format!("*{}\r\n", MAX_SHARED_ARGS + 1);
    assert_eq!(scan_request(args.as_bytes()), Request::Pin);
    assert_eq!(scan_request(b"*99999999999999999999999\r\n"), Request::Pin);
}

#[test]
fn request_size_limit_counts_the_whole_request() {
    let with_value = |len: usize| encode(&[b"SET", b"k", &vec![b'v'; len]]);
    // Find the value length that makes the whole request exactly the limit.
    let overhead = with_value(MAX_SHARED_REQUEST - 100).len() - (MAX_SHARED_REQUEST - 100);
    let at_limit = with_value(MAX_SHARED_REQUEST - overhead);
    assert_eq!(at_limit.len(), MAX_SHARED_REQUEST);
    assert_eq!(scan_request(&at_limit), shared(&at_limit));
    let over = with_value(MAX_SHARED_REQUEST - overhead + 1);
    assert_eq!(scan_request(&over), Request::Pin);
    // Decided on the header alone, before the value arrives.
    let header_end = over.len() - (MAX_SHARED_REQUEST - overhead + 1) - 2;
    assert_eq!(scan_request(&over[..header_end]), Request::Pin);
    assert_eq!(scan_request(&at_limit[..header_end]), Request::Incomplete);
    // Many small arguments add up the same way.
    let many: Vec<&[u8]> = std::iter::once(&b"MSET"[..])
        .chain(std::iter::repeat_n(
            &b"0123456789"[..],
            MAX_SHARED_REQUEST / 10,
        ))
        .collect();
    assert_eq!(scan_request(&encode(&many)), Request::Pin);
}

#[test]
fn empty_and_partial_headers_are_incomplete() {
    let cases: &[&[u8]] = &[
        b"",
        b"*",
        b"*1",
        b"*12",
        b"*1\r",
        b"*1\r\n",
        b"*1\r\n$",
        b"*1\r\n$3",
        b"*1\r\n$3\r",
        b"*1\r\n$3\r\n",
        b"*1\r\n$3\r\nGE",
        b"*1\r\n$3\r\nGET",
        b"*1\r\n$3\r\nGET\r",
    ];
    for request in cases {
        assert_eq!(
            scan_request(request),
            Request::Incomplete,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn prefixes_of_select_and_client_never_contradict_the_whole() {
    let cases: &[(&[&str], Request)] = &[
        (&["SELECT", "0"], Request::Shared(23)),
        (&["SELECT", "1"], Request::Pin),
        (&["SELECT", "10"], Request::Pin),
        (&["CLIENT", "SETINFO", "lib-name", "x"], Request::Shared(50)),
        (&["CLIENT", "SETINFO"], Request::Shared(29)),
        (&["CLIENT", "ID"], Request::Pin),
        (&["CLIENT", "SETNAME", "x"], Request::Pin),
    ];
    for (words, whole) in cases {
        let request = cmd(words);
        assert_eq!(scan_request(&request), *whole, "{words:?}");
        for end in 0..request.len() {
            let got = scan_request(&request[..end]);
            let fine = match whole {
                Request::Shared(_) => got == Request::Incomplete,
                _ => got == Request::Incomplete || got == *whole,
            };
            assert!(fine, "{words:?}: prefix of {end} bytes gave {got:?}");
        }
    }
}

// ---- scan_request: properties -------------------------------------------------------------

/// Commands that pin, plus the two whose answer depends on their arguments.
const PINNING: &[&str] = &[
    "MULTI",
    "EXEC",
    "WATCH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "BLPOP",
    "BRPOP",
    "XREAD",
    "WAIT",
    "MONITOR",
    "AUTH",
    "HELLO",
    "QUIT",
    "RESET",
    "SELECT",
    "CLIENT",
    "NOSUCHCOMMAND",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123",
];

#[derive(Clone, Debug)]
struct Command {
    name: Vec<u8>,
    args: Vec<Vec<u8>>,
}

impl Command {
    fn encode(&self) -> Vec<u8> {
        let words: Vec<&[u8]> = std::iter::once(self.name.as_slice())
            .chain(self.args.iter().map(Vec::as_slice))
            .collect();
        encode(&words)
    }

    /// The rule, restated independently of the scanner: a linear search, no prefix matching.
    fn shareable(&self) -> bool {
        let name = self.name.to_ascii_uppercase();
        SHAREABLE.contains(&name.as_slice())
            || (name == b"SELECT" && self.args == [b"0"])
            || (name == b"CLIENT"
                && self
                    .args
                    .first()
                    .is_some_and(|arg| arg.eq_ignore_ascii_case(b"SETINFO")))
    }
}

/// Bytes biased towards RESP syntax, so values hold `\r\n`, `$3`, `*1` and the like.
fn arb_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => Just(b'\r'),
        1 => Just(b'\n'),
        1 => prop::sample::select(&b"*$:+-0123456789"[..]),
    ]
}

fn arb_arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(arb_byte(), 0..24),
        1 => prop::sample::select(&["0", "1", "SETINFO", "setinfo", "ID", "\r\n", ""][..])
            .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn with_random_case(name: &[u8], flips: &[bool]) -> Vec<u8> {
    name.iter()
        .zip(flips.iter().chain(std::iter::repeat(&false)))
        .map(|(&b, &flip)| if flip { b.to_ascii_lowercase() } else { b })
        .collect()
}

fn arb_name(names: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (prop::sample::select(names), vec(any::<bool>(), 32))
        .prop_map(|(name, flips)| with_random_case(&name, &flips))
}

fn shareable_names() -> Vec<Vec<u8>> {
    SHAREABLE.iter().map(|n| n.to_vec()).collect()
}

fn pinning_names() -> Vec<Vec<u8>> {
    PINNING.iter().map(|n| n.as_bytes().to_vec()).collect()
}

fn arb_command() -> impl Strategy<Value = Command> {
    let name = prop_oneof![
        2 => arb_name(shareable_names()),
        1 => arb_name(pinning_names()),
    ];
    (name, vec(arb_arg(), 0..5)).prop_map(|(name, args)| Command { name, args })
}

/// Only commands that share: allowlisted names, `SELECT 0` and `CLIENT SETINFO ...`.
fn arb_shareable_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (arb_name(shareable_names()), vec(arb_arg(), 0..5))
            .prop_map(|(name, args)| Command { name, args }),
        1 => arb_name(vec![b"SELECT".to_vec()]).prop_map(|name| Command {
            name,
            args: vec![b"0".to_vec()],
        }),
        1 => (
            arb_name(vec![b"CLIENT".to_vec()]),
            arb_name(vec![b"SETINFO".to_vec()]),
            vec(arb_arg(), 0..3),
        )
            .prop_map(|(name, sub, rest)| Command {
                name,
                args: std::iter::once(sub).chain(rest).collect(),
            }),
    ]
}

proptest! {
    #[test]
    fn pipelined_requests_scan_to_their_exact_lengths(commands in vec(arb_command(), 1..8)) {
        let encoded: Vec<Vec<u8>> = commands.iter().map(Command::encode).collect();
        let stream = encoded.concat();
        let mut pos = 0;
        for (command, bytes) in commands.iter().zip(&encoded) {
            let got = scan_request(&stream[pos..]);
            if command.shareable() {
                prop_assert_eq!(got, Request::Shared(bytes.len()), "{:?}", command);
                pos += bytes.len();
            } else {
                prop_assert_eq!(got, Request::Pin, "{:?}", command);
                return Ok(());
            }
        }
        prop_assert_eq!(pos, stream.len());
        prop_assert_eq!(scan_request(&stream[pos..]), Request::Incomplete);
    }

    #[test]
    fn every_strict_prefix_of_a_shareable_request_is_incomplete(
        command in arb_shareable_command(),
    ) {
        let bytes = command.encode();
        prop_assert!(command.shareable());
        prop_assert_eq!(scan_request(&bytes), Request::Shared(bytes.len()));
        for end in 0..bytes.len() {
            prop_assert_eq!(
                scan_request(&bytes[..end]),
                Request::Incomplete,
                "prefix of {} bytes of {:?}",
                end,
                command
            );
        }
    }

    #[test]
    fn no_prefix_of_a_request_contradicts_the_whole(command in arb_command()) {
        let bytes = command.encode();
        let whole = scan_request(&bytes);
        let expected = if command.shareable() {
            Request::Shared(bytes.len())
        } else {
            Request::Pin
        };
        prop_assert_eq!(whole, expected, "{:?}", command);
        for end in 0..bytes.len() {
            let got = scan_request(&bytes[..end]);
            prop_assert!(
                got == Request::Incomplete || (got == Request::Pin && whole == Request::Pin),
                "prefix of {} bytes of {:?} gave {:?}, the whole {:?}",
                end,
                command,
                got,
                whole
            );
        }
    }

    #[test]
    fn a_canonical_request_is_also_one_resp_value(command in arb_command()) {
        let bytes = command.encode();
        prop_assert_eq!(scan_reply(&bytes), Reply::Complete(bytes.len()));
    }
}

// ---- scan_reply: tables -------------------------------------------------------------------

#[test]
fn complete_replies_scan_to_their_exact_length() {
    let cases: &[&[u8]] = &[
        b"+OK\r\n",
        b"+\r\n",
        b"-ERR x\r\n",
        b"-WRONGTYPE Operation against a key\r\n",
        b":1\r\n",
        b":-42\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"$3\r\nabc\r\n",
        b"$4\r\n\r\n\r\n\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*2\r\n$3\r\nfoo\r\n:7\r\n",
        b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*0\r\n",
        b"*3\r\n*-1\r\n$-1\r\n*1\r\n*1\r\n*1\r\n+deep\r\n",
        // RESP3
        b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:2\r\n:3\r\n",
        b"%0\r\n",
        b"~3\r\n+a\r\n+b\r\n+c\r\n",
        b">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n",
        b"_\r\n",
        b",3.14\r\n",
        b",-inf\r\n",
        b"#t\r\n",
        b"#f\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
        b"|0\r\n+OK\r\n",
        b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n:1\r\n",
    ];
    for reply in cases {
        let text = String::from_utf8_lossy(reply);
        assert_eq!(scan_reply(reply), Reply::Complete(reply.len()), "{text:?}");
        // Whatever follows does not change where it ends.
        let followed = [&reply[..], b"+NEXT\r\n"].concat();
        assert_eq!(
            scan_reply(&followed),
            Reply::Complete(reply.len()),
            "{text:?}"
        );
        for end in 0..reply.len() {
            assert_eq!(
                scan_reply(&reply[..end]),
                Reply::Incomplete,
                "{text:?} [..{end}]"
            );
        }
    }
}

#[test]
fn malformed_replies_are_invalid() {
    let cases: &[&[u8]] = &[
        b"$3\r\nabcX\r\n",
        b"$3\r\nabc\n\r",
        b"$3\r\nabcd\r\n",
        b"$-2\r\n",
        b"$-1\n",
        b"$-1\rX",
        b"$x\r\n",
        b"$\r\n",
        b"$3\n",
        b"$3\rX",
        b"$99999999999999999999\r\n",
        b"*x\r\n",
        b"*-2\r\n",
        b"*1\r\n?\r\n",
        b"?\r\n",
        b"X",
        b"\r\n",
        b" +OK\r\n",
        b"+OK\n",
        b"-ERR\n",
        b":1\n",
        b"\n",
        b"+\n",
        b"*2\r\n+OK\r\n+OK\n",
        b"$?\r\n;3\r\nabc\r\n;0\r\n",
    ];
    for reply in cases {
        assert_eq!(
            scan_reply(reply),
            Reply::Invalid,
            "{:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

#[test]
fn empty_and_partial_replies_are_incomplete() {
    let cases: &[&[u8]] = &[
        b"",
        b"+OK",
        b"+OK\r",
        b"$",
        b"$-",
        b"$-1",
        b"$-1\r",
        b"$3",
        b"$3\r\nab",
        b"$3\r\nabc",
        b"$3\r\nabc\r",
        b"*2\r\n:1\r\n",
        b"%1\r\n+a\r\n",
        b"|1\r\n+a\r\n+b\r\n",
    ];
    for reply in cases {
        assert_eq!(
            scan_reply(reply),
            Reply::Incomplete,
            "{:?}",
            String::from_utf8_lossy(reply)
        );
    }
}

// ---- scan_reply: properties ---------------------------------------------------------------

/// A RESP2 or RESP3 value, as a server could send it.
#[derive(Clone, Debug)]
enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
    Null,
    Double(f64),
    Boolean(bool),
    BigNumber(Vec<u8>),
    BlobError(Vec<u8>),
    Verbatim(Vec<u8>),
    Map(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Push(Vec<Value>),
    Attribute(Vec<(Value, Value)>, Box<Value>),
}

impl Value {
    fn encode(&self, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
            out.push(kind);
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        fn blob(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
            line(out, kind, body.len().to_string().as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        fn items<'a>(
            out: &mut Vec<u8>,
            kind: u8,
            n: usize,
            items: impl Iterator<Item = &'a Value>,
        ) {
            line(out, kind, n.to_string().as_bytes());
            for item in items {
                item.encode(out);
            }
        }
        match self {
            Value::Simple(s) => line(out, b'+', s),
            Value::Error(s) => line(out, b'-', s),
            Value::Integer(i) => line(out, b':', i.to_string().as_bytes()),
            Value::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => blob(out, b'$', b),
            Value::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(Some(v)) => items(out, b'*', v.len(), v.iter()),
            Value::Null => out.extend_from_slice(b"_\r\n"),
            Value::Double(d) => line(out, b',', d.to_string().as_bytes()),
            Value::Boolean(b) => line(out, b'#', if *b { b"t" } else { b"f" }),
            Value::BigNumber(digits) => line(out, b'(', digits),
            Value::BlobError(b) => blob(out, b'!', b),
            Value::Verbatim(b) => blob(out, b'=', &[b"txt:", &b[..]].concat()),
            Value::Map(pairs) => items(
                out,
                b'%',
                pairs.len(),
                pairs.iter().flat_map(|(k, v)| [k, v]),
            ),
            Value::Set(v) => items(out, b'~', v.len(), v.iter()),
            Value::Push(v) => items(out, b'>', v.len(), v.iter()),
            Value::Attribute(pairs, value) => {
                items(
                    out,
                    b'|',
                    pairs.len(),
                    pairs.iter().flat_map(|(k, v)| [k, v]),
                );
                value.encode(out);
            }
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// A simple string's body: anything but CR and LF.
fn arb_line() -> impl Strategy<Value = Vec<u8>> {
    vec(
        any::<u8>().prop_filter("no CR or LF", |b| *b != b'\r' && *b != b'\n'),
        0..16,
    )
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        arb_line().prop_map(Value::Simple),
        arb_line().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        proptest::option::of(vec(arb_byte(), 0..24)).prop_map(Value::Bulk),
        Just(Value::Array(None)),
        Just(Value::Null),
        any::<f64>().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        "-?[0-9]{1,40}".prop_map(|s| Value::BigNumber(s.into_bytes())),
        vec(arb_byte(), 0..24).prop_map(Value::BlobError),
        vec(arb_byte(), 0..24).prop_map(Value::Verbatim),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        let pairs = vec((inner.clone(), inner.clone()), 0..4);
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(|v| Value::Array(Some(v))),
            pairs.clone().prop_map(Value::Map),
            vec(inner.clone(), 0..5).prop_map(Value::Set),
            vec(inner.clone(), 0..5).prop_map(Value::Push),
            (pairs, inner).prop_map(|(pairs, value)| Value::Attribute(pairs, Box::new(value))),
        ]
    })
}

proptest! {
    #[test]
    fn replies_in_a_stream_scan_to_their_exact_lengths(values in vec(arb_value(), 1..6)) {
        let encoded: Vec<Vec<u8>> = values.iter().map(Value::to_bytes).collect();
        let stream = encoded.concat();
        let mut pos = 0;
        for (value, bytes) in values.iter().zip(&encoded) {
            prop_assert_eq!(
                scan_reply(&stream[pos..]),
                Reply::Complete(bytes.len()),
                "{:?}",
                value
            );
            pos += bytes.len();
        }
        prop_assert_eq!(pos, stream.len());
        prop_assert_eq!(scan_reply(&stream[pos..]), Reply::Incomplete);
    }

    #[test]
    fn every_strict_prefix_of_a_reply_is_incomplete(value in arb_value()) {
        let bytes = value.to_bytes();
        prop_assert_eq!(scan_reply(&bytes), Reply::Complete(bytes.len()));
        for end in 0..bytes.len() {
            prop_assert_eq!(
                scan_reply(&bytes[..end]),
                Reply::Incomplete,
                "prefix of {} bytes of {:?}",
                end,
                value
            );
        }
    }
}

// ---- robustness ---------------------------------------------------------------------------

/// Arbitrary bytes, and bytes drawn from RESP syntax so that the deeper paths are reached.
fn arb_junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        vec(
            prop::sample::select(&b"*$+-:_,#(!=~>%|?\r\n0123456789-GETSELCIN"[..]),
            0..256
        ),
        // A valid-looking start followed by junk.
        (vec(arb_arg(), 1..4), vec(any::<u8>(), 0..64)).prop_map(|(words, junk)| {
            let words: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            let mut bytes = encode(&words);
            let cut = junk
                .first()
                .map_or(bytes.len(), |&c| usize::from(c) % (bytes.len() + 1));
            bytes.truncate(cut);
            bytes.extend_from_slice(&junk);
            bytes
        }),
    ]
}

proptest! {
    #[test]
    fn scanners_never_panic_nor_overrun(buf in arb_junk()) {
        match scan_request(&buf) {
            Request::Shared(n) => {
                prop_assert!(n > 0 && n <= buf.len());
                // A shared request is one whole value.
                prop_assert_eq!(scan_reply(&buf[..n]), Reply::Complete(n));
            }
            Request::Pin => prop_assert!(!buf.is_empty()),
            Request::Incomplete => {}
        }
        match scan_reply(&buf) {
            Reply::Complete(n) => {
                prop_assert!(n > 0 && n <= buf.len());
                // The end does not depend on what follows it.
                prop_assert_eq!(scan_reply(&buf[..n]), Reply::Complete(n));
            }
            Reply::Incomplete | Reply::Invalid => {}
        }
    }
}
