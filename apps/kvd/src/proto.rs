//! The memcached text protocol's command lines (memcached's doc/protocol.txt): tokenising,
//! validation and the error replies, with no I/O and no store, so that every malformed input
//! can be unit-tested.

/// Longest key, in bytes.
pub const KEY_MAX: usize = 250;
/// Relative expiry times up to this many seconds; larger values are absolute unix times.
pub const REL_TIME_MAX: i64 = 60 * 60 * 24 * 30;
/// A command line longer than this without a newline closes the connection (memcached: 2048),
/// unless it is a `get`/`gets`/`gat`/`gats` (many keys), which may run to `GET_LINE_MAX`.
pub const LINE_MAX: usize = 2048;
pub const GET_LINE_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Cmd<'a> {
    /// `get`/`gets` (cas) and `gat`/`gats` (touch = Some(exptime)); `keys` is the validated rest
    /// of the line, iterate it with [`keys`].
    Get {
        keys: &'a [u8],
        cas: bool,
        touch: Option<i64>,
    },
    Store {
        op: StoreOp,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        bytes: usize,
        cas: u64,
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        key: &'a [u8],
        delta: u64,
        incr: bool,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Stats {
        arg: Option<&'a [u8]>,
    },
    Version,
    Verbosity {
        noreply: bool,
    },
    Quit,
}

/// A refused line: the reply to send (without "\r\n").
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// "ERROR": unknown command or wrong number of tokens.
    Unknown,
    /// "CLIENT_ERROR <text>".
    Client(&'static str),
}

impl ParseError {
    pub fn reply(&self) -> &'static [u8] {
        match self {
            ParseError::Unknown => b"ERROR\r\n",
            ParseError::Client(BAD_FORMAT) => b"CLIENT_ERROR bad command line format\r\n",
            ParseError::Client(BAD_DELTA) => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            ParseError::Client(BAD_EXPTIME) => b"CLIENT_ERROR invalid exptime argument\r\n",
            ParseError::Client(DELETE_USAGE) => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            ParseError::Client(_) => b"CLIENT_ERROR bad command line format\r\n",
        }
    }
}

pub const BAD_FORMAT: &str = "bad command line format";
pub const BAD_DELTA: &str = "invalid numeric delta argument";
pub const BAD_EXPTIME: &str = "invalid exptime argument";
pub const DELETE_USAGE: &str = "delete usage";

/// Space-separated tokens (memcached splits on spaces only; runs of spaces are one separator).
pub fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// The keys of a `get`-family line (after [`parse`] validated them).
pub fn keys(rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    tokens(rest)
}

/// A key: 1..=250 bytes, none a control character or space (tokens never hold spaces).
pub fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= KEY_MAX && key.iter().all(|&b| b > 0x20 && b != 0x7f)
}

fn num_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

fn num_i64(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        _ => (false, t),
    };
    let v = num_u64(digits)?;
    if neg {
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// Parses an unsigned decimal value stored in an item, as `incr`/`decr` read it: digits,
/// optionally followed by spaces (memcached pads a shrunk number with spaces); at most
/// u64::MAX.
pub fn item_number(data: &[u8]) -> Option<u64> {
    let end = data.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    num_u64(&data[..end])
}

/// Absolute expiry (unix seconds, 0 = never) of a protocol exptime given the current time:
/// 0 never; negative: already expired; up to 30 days: relative; beyond: absolute.
pub fn abs_exptime(exptime: i64, now: i64) -> i64 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        // Any instant in the past: expired at once.
        1
    } else if exptime <= REL_TIME_MAX {
        now + exptime
    } else if exptime <= now {
        1
    } else {
        exptime
    }
}

/// True when a line (without its newline) starts a `get`-family command, which may be long.
pub fn is_get_prefix(buf: &[u8]) -> bool {
    let b = buf.trim_ascii_start();
    b.starts_with(b"get ") || b.starts_with(b"gets ") || b.starts_with(b"gat ") || b.starts_with(b"gats ")
}

/// Parses one command line, without its "\r\n" or "\n".
pub fn parse(line: &[u8]) -> Result<Cmd<'_>, ParseError> {
    let mut it = tokens(line);
    let name = it.next().ok_or(ParseError::Unknown)?;
    let rest_of = |name: &[u8]| -> &[u8] {
        // The slice after the command name (tokens borrow from `line`).
        let start = name.as_ptr() as usize - line.as_ptr() as usize + name.len();
        &line[start..]
    };
    let toks: Vec<&[u8]> = match name {
        b"get" | b"gets" => {
            let rest = rest_of(name);
            check_keys(rest)?;
            return Ok(Cmd::Get { keys: rest, cas: name == b"gets", touch: None });
        }
        b"gat" | b"gats" => {
            let t = it.next().ok_or(ParseError::Unknown)?;
            let exptime = num_i64(t).ok_or(ParseError::Client(BAD_EXPTIME))?;
            let rest = rest_of(t);
            check_keys(rest)?;
            return Ok(Cmd::Get { keys: rest, cas: name == b"gats", touch: Some(exptime) });
        }
        _ => it.collect(),
    };
    let noreply = toks.last() == Some(&&b"noreply"[..]);
    let args = if noreply { &toks[..toks.len() - 1] } else { &toks[..] };
    let op = match name {
        b"set" => Some(StoreOp::Set),
        b"add" => Some(StoreOp::Add),
        b"replace" => Some(StoreOp::Replace),
        b"append" => Some(StoreOp::Append),
        b"prepend" => Some(StoreOp::Prepend),
        b"cas" => Some(StoreOp::Cas),
        _ => None,
    };
    if let Some(op) = op {
        let want = if op == StoreOp::Cas { 5 } else { 4 };
        if args.len() != want {
            return Err(ParseError::Unknown);
        }
        let key = args[0];
        if !valid_key(key) {
            return Err(ParseError::Client(BAD_FORMAT));
        }
        let flags = num_u64(args[1]).and_then(|f| u32::try_from(f).ok());
        let exptime = num_i64(args[2]);
        let bytes = num_i64(args[3]);
        let (Some(flags), Some(exptime), Some(bytes)) = (flags, exptime, bytes) else {
            return Err(ParseError::Client(BAD_FORMAT));
        };
        if !(0..=(i32::MAX as i64 - 2)).contains(&bytes) {
            return Err(ParseError::Client(BAD_FORMAT));
        }
        let cas = if op == StoreOp::Cas { num_u64(args[4]).ok_or(ParseError::Client(BAD_FORMAT))? } else { 0 };
        return Ok(Cmd::Store { op, key, flags, exptime, bytes: bytes as usize, cas, noreply });
    }
    match name {
        b"delete" => {
            if args.is_empty() {
                return Err(ParseError::Unknown);
            }
            // "delete <key> 0" is accepted for old clients; any other extra token is refused.
            if args.len() > 2 || (args.len() == 2 && args[1] != b"0") {
                return Err(ParseError::Client(DELETE_USAGE));
            }
            if !valid_key(args[0]) {
                return Err(ParseError::Client(BAD_FORMAT));
            }
            Ok(Cmd::Delete { key: args[0], noreply })
        }
        b"incr" | b"decr" => {
            if args.len() != 2 {
                return Err(ParseError::Unknown);
            }
            if !valid_key(args[0]) {
                return Err(ParseError::Client(BAD_FORMAT));
            }
            let delta = num_u64(args[1]).ok_or(ParseError::Client(BAD_DELTA))?;
            Ok(Cmd::Arith { key: args[0], delta, incr: name == b"incr", noreply })
        }
        b"touch" => {
            if args.len() != 2 {
                return Err(ParseError::Unknown);
            }
            if !valid_key(args[0]) {
                return Err(ParseError::Client(BAD_FORMAT));
            }
            let exptime = num_i64(args[1]).ok_or(ParseError::Client(BAD_EXPTIME))?;
            Ok(Cmd::Touch { key: args[0], exptime, noreply })
        }
        b"flush_all" => match args {
            [] => Ok(Cmd::FlushAll { delay: 0, noreply }),
            [d] => {
                let delay = num_i64(d).ok_or(ParseError::Client(BAD_FORMAT))?;
                Ok(Cmd::FlushAll { delay, noreply })
            }
            _ => Err(ParseError::Unknown),
        },
        b"stats" => match toks.as_slice() {
            [] => Ok(Cmd::Stats { arg: None }),
            [a] => Ok(Cmd::Stats { arg: Some(a) }),
            _ => Err(ParseError::Unknown),
        },
        b"version" if toks.is_empty() => Ok(Cmd::Version),
        b"quit" if toks.is_empty() => Ok(Cmd::Quit),
        b"verbosity" => match args {
            [v] if num_u64(v).is_some() => Ok(Cmd::Verbosity { noreply }),
            _ => Err(ParseError::Unknown),
        },
        _ => Err(ParseError::Unknown),
    }
}

fn check_keys(rest: &[u8]) -> Result<(), ParseError> {
    let mut any = false;
    for k in keys(rest) {
        if !valid_key(k) {
            return Err(ParseError::Client(BAD_FORMAT));
        }
        any = true;
    }
    if any {
        Ok(())
    } else {
        Err(ParseError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(line: &str) -> Cmd<'_> {
        parse(line.as_bytes()).unwrap()
    }

    #[test]
    fn storage_commands() {
        assert_eq!(
            store("set foo 5 100 3"),
            Cmd::Store { op: StoreOp::Set, key: b"foo", flags: 5, exptime: 100, bytes: 3, cas: 0, noreply: false }
        );
        assert_eq!(
            store("cas  k  0 -1 0 77 noreply"),
            Cmd::Store { op: StoreOp::Cas, key: b"k", flags: 0, exptime: -1, bytes: 0, cas: 77, noreply: true }
        );
        for (name, op) in [
            ("add", StoreOp::Add),
            ("replace", StoreOp::Replace),
            ("append", StoreOp::Append),
            ("prepend", StoreOp::Prepend),
        ] {
            let line = format!("{name} k 4294967295 0 10");
            assert_eq!(
                parse(line.as_bytes()).unwrap(),
                Cmd::Store { op, key: b"k", flags: u32::MAX, exptime: 0, bytes: 10, cas: 0, noreply: false }
            );
        }
    }

    #[test]
    fn malformed_storage_lines() {
        let bad = ParseError::Client(BAD_FORMAT);
        assert_eq!(parse(b"set k 0 0"), Err(ParseError::Unknown));
        assert_eq!(parse(b"set k 0 0 1 2"), Err(ParseError::Unknown));
        assert_eq!(parse(b"cas k 0 0 1"), Err(ParseError::Unknown));
        assert_eq!(parse(b"set k x 0 1"), Err(bad));
        assert_eq!(parse(b"set k 4294967296 0 1"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 0 -1"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 zz 1"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"set k 0 0 99999999999999999999999"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"cas k 0 0 1 -5"), Err(ParseError::Client(BAD_FORMAT)));
        let long = format!("set {} 0 0 1", "a".repeat(251));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::Client(BAD_FORMAT)));
        let ok = format!("set {} 0 0 1", "a".repeat(250));
        assert!(parse(ok.as_bytes()).is_ok());
        assert_eq!(parse(b"set k\x01y 0 0 1"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"set k\ty 0 0 1"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(parse(b"set k\x7f 0 0 1"), Err(ParseError::Client(BAD_FORMAT)));
    }

    #[test]
    fn get_family() {
        match store("get a  b c") {
            Cmd::Get { keys: k, cas: false, touch: None } => {
                assert_eq!(keys(k).collect::<Vec<_>>(), vec![&b"a"[..], b"b", b"c"])
            }
            other => panic!("{other:?}"),
        }
        match store("gats 30 x y") {
            Cmd::Get { keys: k, cas: true, touch: Some(30) } => {
                assert_eq!(keys(k).collect::<Vec<_>>(), vec![&b"x"[..], b"y"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(b"get"), Err(ParseError::Unknown));
        assert_eq!(parse(b"get   "), Err(ParseError::Unknown));
        assert_eq!(parse(b"gat 10"), Err(ParseError::Unknown));
        assert_eq!(parse(b"gat x k"), Err(ParseError::Client(BAD_EXPTIME)));
        let long = format!("get a {}", "b".repeat(251));
        assert_eq!(parse(long.as_bytes()), Err(ParseError::Client(BAD_FORMAT)));
    }

    #[test]
    fn other_commands() {
        assert_eq!(store("delete k"), Cmd::Delete { key: b"k", noreply: false });
        assert_eq!(store("delete k 0 noreply"), Cmd::Delete { key: b"k", noreply: true });
        assert_eq!(parse(b"delete k 5"), Err(ParseError::Client(DELETE_USAGE)));
        assert_eq!(parse(b"delete"), Err(ParseError::Unknown));
        assert_eq!(
            store("incr k 18446744073709551615"),
            Cmd::Arith { key: b"k", delta: u64::MAX, incr: true, noreply: false }
        );
        assert_eq!(store("decr k 1 noreply"), Cmd::Arith { key: b"k", delta: 1, incr: false, noreply: true });
        assert_eq!(parse(b"incr k 18446744073709551616"), Err(ParseError::Client(BAD_DELTA)));
        assert_eq!(parse(b"incr k -1"), Err(ParseError::Client(BAD_DELTA)));
        assert_eq!(parse(b"incr k abc"), Err(ParseError::Client(BAD_DELTA)));
        assert_eq!(parse(b"incr k"), Err(ParseError::Unknown));
        assert_eq!(store("touch k -1"), Cmd::Touch { key: b"k", exptime: -1, noreply: false });
        assert_eq!(parse(b"touch k x"), Err(ParseError::Client(BAD_EXPTIME)));
        assert_eq!(store("flush_all"), Cmd::FlushAll { delay: 0, noreply: false });
        assert_eq!(store("flush_all 10 noreply"), Cmd::FlushAll { delay: 10, noreply: true });
        assert_eq!(store("flush_all noreply"), Cmd::FlushAll { delay: 0, noreply: true });
        assert_eq!(parse(b"flush_all x"), Err(ParseError::Client(BAD_FORMAT)));
        assert_eq!(store("stats"), Cmd::Stats { arg: None });
        assert_eq!(store("stats settings"), Cmd::Stats { arg: Some(b"settings") });
        assert_eq!(store("version"), Cmd::Version);
        assert_eq!(store("quit"), Cmd::Quit);
        assert_eq!(store("verbosity 1 noreply"), Cmd::Verbosity { noreply: true });
        assert_eq!(parse(b"verbosity"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        assert_eq!(parse(b"   "), Err(ParseError::Unknown));
        assert_eq!(parse(b"bogus k"), Err(ParseError::Unknown));
        assert_eq!(parse(b"GET k"), Err(ParseError::Unknown));
        assert_eq!(parse(b"version x"), Err(ParseError::Unknown));
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(item_number(b"42"), Some(42));
        assert_eq!(item_number(b"9  "), Some(9));
        assert_eq!(item_number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(item_number(b"18446744073709551616"), None);
        assert_eq!(item_number(b""), None);
        assert_eq!(item_number(b"1a"), None);
        assert_eq!(item_number(b" 1"), None);
        assert_eq!(item_number(b"-1"), None);
        let now = 1_700_000_000;
        assert_eq!(abs_exptime(0, now), 0);
        assert_eq!(abs_exptime(-1, now), 1);
        assert_eq!(abs_exptime(10, now), now + 10);
        assert_eq!(abs_exptime(REL_TIME_MAX, now), now + REL_TIME_MAX);
        assert_eq!(abs_exptime(REL_TIME_MAX + 1, now), 1);
        assert_eq!(abs_exptime(now + 5, now), now + 5);
        assert!(is_get_prefix(b"  gets a b"));
        assert!(!is_get_prefix(b"set a"));
    }
}
