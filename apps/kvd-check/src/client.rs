//! A blocking memcached text-protocol client: one TCP connection, one request at a time.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The reply to a storage command (`set`, `add`, `replace`, `append`, `prepend`, `cas`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

/// One item of a `get`/`gets` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub flags: u32,
    pub value: Vec<u8>,
    pub cas: Option<u64>,
}

/// A connection to a server.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
    line: String,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Conn {
    /// Connects with a read timeout (a server that stops answering is an error, not a hang).
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            r: BufReader::with_capacity(64 << 10, s.try_clone()?),
            w: BufWriter::with_capacity(64 << 10, s),
            line: String::new(),
        })
    }

    fn read_line(&mut self) -> io::Result<&str> {
        self.line.clear();
        let n = self.r.read_line(&mut self.line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        if !self.line.ends_with("\r\n") {
            return Err(bad(format!("reply line without CRLF: {:?}", self.line)));
        }
        Ok(self.line.trim_end_matches("\r\n"))
    }

    /// Sends a storage command. `cmd` is `set`, `add`, `replace`, `append`, `prepend` or `cas`
    /// (with `cas = Some(unique)`).
    pub fn store(&mut self, cmd: &str, key: &str, flags: u32, value: &[u8], cas: Option<u64>) -> io::Result<Store> {
        match cas {
            Some(c) => write!(self.w, "{cmd} {key} {flags} 0 {} {c}\r\n", value.len())?,
            None => write!(self.w, "{cmd} {key} {flags} 0 {}\r\n", value.len())?,
        }
        self.w.write_all(value)?;
        self.w.write_all(b"\r\n")?;
        self.w.flush()?;
        match self.read_line()? {
            "STORED" => Ok(Store::Stored),
            "NOT_STORED" => Ok(Store::NotStored),
            "EXISTS" => Ok(Store::Exists),
            "NOT_FOUND" => Ok(Store::NotFound),
            other => Err(bad(format!("unexpected reply to {cmd} {key}: {other:?}"))),
        }
    }

    /// Sends `count` `set`s with no reply (pipelined loading), then one `version` to wait.
    pub fn load_noreply(&mut self, keys: &mut dyn Iterator<Item = String>, value: &[u8]) -> io::Result<()> {
        for k in keys {
            write!(self.w, "set {k} 0 0 {} noreply\r\n", value.len())?;
            self.w.write_all(value)?;
            self.w.write_all(b"\r\n")?;
        }
        self.version().map(|_| ())
    }

    /// `get` (or `gets` with `with_cas`) of several keys; the map holds the keys that were found.
    pub fn get_multi(&mut self, keys: &[&str], with_cas: bool) -> io::Result<HashMap<String, Item>> {
        self.w.write_all(if with_cas { b"gets" } else { b"get" })?;
        for k in keys {
            self.w.write_all(b" ")?;
            self.w.write_all(k.as_bytes())?;
        }
        self.w.write_all(b"\r\n")?;
        self.w.flush()?;
        let mut out = HashMap::new();
        loop {
            let line = self.read_line()?.to_string();
            if line == "END" {
                return Ok(out);
            }
            let f: Vec<&str> = line.split(' ').collect();
            let want = if with_cas { 5 } else { 4 };
            if f.len() != want || f[0] != "VALUE" {
                return Err(bad(format!("unexpected line in get reply: {line:?}")));
            }
            let flags: u32 = f[2].parse().map_err(|_| bad(format!("bad flags in {line:?}")))?;
            let len: usize = f[3].parse().map_err(|_| bad(format!("bad length in {line:?}")))?;
            let cas =
                if with_cas { Some(f[4].parse().map_err(|_| bad(format!("bad cas in {line:?}")))?) } else { None };
            let mut value = vec![0u8; len + 2];
            self.r.read_exact(&mut value)?;
            if &value[len..] != b"\r\n" {
                return Err(bad(format!("value of {} not followed by CRLF", f[1])));
            }
            value.truncate(len);
            if !keys.contains(&f[1]) {
                return Err(bad(format!("get returned key {:?} that was not asked for", f[1])));
            }
            if out.insert(f[1].to_string(), Item { flags, value, cas }).is_some() {
                return Err(bad(format!("get returned key {:?} twice", f[1])));
            }
        }
    }

    /// `get` of one key into `buf` (cleared first): true for a hit. The load generator's path.
    pub fn get_one(&mut self, key: &str, buf: &mut Vec<u8>) -> io::Result<bool> {
        write!(self.w, "get {key}\r\n")?;
        self.w.flush()?;
        buf.clear();
        let line = self.read_line()?;
        if line == "END" {
            return Ok(false);
        }
        let len: usize = line
            .strip_prefix("VALUE ")
            .and_then(|r| r.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad(format!("unexpected reply to get {key}: {line:?}")))?;
        buf.resize(len + 2, 0);
        self.r.read_exact(buf)?;
        buf.truncate(len);
        if self.read_line()? != "END" {
            return Err(bad(format!("get {key}: no END after the value")));
        }
        Ok(true)
    }

    /// `incr`/`decr`: `Some(new value)` or `None` for NOT_FOUND.
    pub fn incr(&mut self, cmd: &str, key: &str, delta: u64) -> io::Result<Option<u64>> {
        write!(self.w, "{cmd} {key} {delta}\r\n")?;
        self.w.flush()?;
        let line = self.read_line()?;
        if line == "NOT_FOUND" {
            return Ok(None);
        }
        line.parse().map(Some).map_err(|_| bad(format!("unexpected reply to {cmd} {key}: {line:?}")))
    }

    /// `delete`: true for DELETED, false for NOT_FOUND.
    pub fn delete(&mut self, key: &str) -> io::Result<bool> {
        write!(self.w, "delete {key}\r\n")?;
        self.w.flush()?;
        match self.read_line()? {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            other => Err(bad(format!("unexpected reply to delete {key}: {other:?}"))),
        }
    }

    pub fn version(&mut self) -> io::Result<String> {
        self.w.write_all(b"version\r\n")?;
        self.w.flush()?;
        let line = self.read_line()?;
        line.strip_prefix("VERSION ")
            .map(str::to_string)
            .ok_or_else(|| bad(format!("unexpected reply to version: {line:?}")))
    }

    /// `stats`: every `STAT name value` line.
    pub fn stats(&mut self) -> io::Result<HashMap<String, String>> {
        self.w.write_all(b"stats\r\n")?;
        self.w.flush()?;
        let mut out = HashMap::new();
        loop {
            let line = self.read_line()?.to_string();
            if line == "END" {
                return Ok(out);
            }
            let mut f = line.splitn(3, ' ');
            match (f.next(), f.next(), f.next()) {
                (Some("STAT"), Some(k), Some(v)) => {
                    out.insert(k.to_string(), v.to_string());
                }
                _ => return Err(bad(format!("unexpected line in stats reply: {line:?}"))),
            }
        }
    }
}
