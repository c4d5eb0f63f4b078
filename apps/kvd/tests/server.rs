//! Integration tests: each starts the real kvd binary on an ephemeral port, for every stack,
//! and talks the memcached text protocol to it over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(stack: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvd"))
            .args(["-p", "0", "-t", "2", "--stack", stack])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvd");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let want = format!("(stack {stack}, 2 threads)\n");
        assert!(line.starts_with("kvd: listening on 127.0.0.1:") && line.ends_with(&want), "ready line: {line:?}");
        let port = line["kvd: listening on 127.0.0.1:".len()..].split(' ').next().unwrap().parse().unwrap();
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Server { child, port }
    }

    fn client(&self) -> Client {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s, buf: Vec::new() }
    }

    fn stats(&self) -> std::collections::HashMap<String, String> {
        let mut c = self.client();
        c.send(b"stats\r\n");
        let text = String::from_utf8(c.read_until(b"END\r\n")).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn stat(&self, name: &str) -> i64 {
        self.stats()[name].parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Reads until the received bytes end with `end`; returns them all.
    fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut chunk = [0u8; 65536];
        while !self.buf.ends_with(end) {
            let n = self.s.read(&mut chunk).expect("read from kvd");
            assert!(n > 0, "kvd closed the connection; got {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
        std::mem::take(&mut self.buf)
    }

    /// Sends a request and returns exactly `expect.len()` bytes of reply, asserting them.
    fn check(&mut self, req: &str, expect: &str) {
        self.send(req.as_bytes());
        let mut got = vec![0u8; expect.len()];
        self.s.read_exact(&mut got).unwrap_or_else(|e| panic!("{req:?}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), expect, "reply to {req:?}");
    }

    fn gets_cas(&mut self, key: &str) -> u64 {
        self.send(format!("gets {key}\r\n").as_bytes());
        let r = String::from_utf8(self.read_until(b"END\r\n")).unwrap();
        r.lines().next().unwrap().split(' ').nth(4).unwrap().parse().unwrap()
    }

    /// True once the server has closed the connection (and sent nothing more).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 16];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn every_command(stack: &str) {
    let srv = Server::start(stack, &[]);
    let mut c = srv.client();
    c.check("set a 5 0 3\r\nabc\r\n", "STORED\r\n");
    c.check("get a\r\n", "VALUE a 5 3\r\nabc\r\nEND\r\n");
    c.check("get nope a nope2 a\r\n", "VALUE a 5 3\r\nabc\r\nVALUE a 5 3\r\nabc\r\nEND\r\n");
    c.check("add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.check("add b 7 0 2\r\nbb\r\n", "STORED\r\n");
    c.check("replace zz 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.check("replace b 8 0 3\r\nBBB\r\n", "STORED\r\n");
    c.check("append b 0 0 2\r\n++\r\n", "STORED\r\n");
    c.check("prepend b 0 0 2\r\n--\r\n", "STORED\r\n");
    c.check("append zz 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.check("prepend zz 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    c.check("get b\r\n", "VALUE b 8 7\r\n--BBB++\r\nEND\r\n");
    let cas = c.gets_cas("b");
    c.check(&format!("cas b 1 0 1 {}\r\nx\r\n", cas + 1), "EXISTS\r\n");
    c.check(&format!("cas b 1 0 1 {cas}\r\nx\r\n"), "STORED\r\n");
    c.check(&format!("cas b 1 0 1 {cas}\r\ny\r\n"), "EXISTS\r\n");
    c.check("cas zz 0 0 1 1\r\nx\r\n", "NOT_FOUND\r\n");
    let cas2 = c.gets_cas("b");
    assert_ne!(cas, cas2);
    c.check("gets b\r\n", &format!("VALUE b 1 1 {cas2}\r\nx\r\nEND\r\n"));
    c.check("delete b\r\n", "DELETED\r\n");
    c.check("delete b\r\n", "NOT_FOUND\r\n");
    c.check("delete a 0\r\n", "DELETED\r\n");
    c.check("delete a 1\r\n", "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
    c.check("get a b\r\n", "END\r\n");
    // incr/decr: 64-bit unsigned, wrapping on incr, stopping at 0 on decr.
    c.check("set n 3 0 2\r\n10\r\n", "STORED\r\n");
    c.check("incr n 5\r\n", "15\r\n");
    c.check("decr n 100\r\n", "0\r\n");
    c.check("incr n 18446744073709551615\r\n", "18446744073709551615\r\n");
    c.check("incr n 2\r\n", "1\r\n");
    c.check("get n\r\n", "VALUE n 3 1\r\n1\r\nEND\r\n");
    c.check("incr nope 1\r\n", "NOT_FOUND\r\n");
    c.check("decr nope 1\r\n", "NOT_FOUND\r\n");
    c.check("incr n x\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n");
    c.check("set s 0 0 3\r\nabc\r\n", "STORED\r\n");
    c.check("incr s 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    c.check("set big 0 0 20\r\n18446744073709551616\r\n", "STORED\r\n");
    c.check("decr big 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    // touch, gat, gats.
    c.check("touch n 100\r\n", "TOUCHED\r\n");
    c.check("touch nope 100\r\n", "NOT_FOUND\r\n");
    c.check("gat 100 n nope\r\n", "VALUE n 3 1\r\n1\r\nEND\r\n");
    let cas_n = c.gets_cas("n");
    c.check("gats 0 n\r\n", &format!("VALUE n 3 1 {cas_n}\r\n1\r\nEND\r\n"));
    c.check("touch n -1\r\n", "TOUCHED\r\n");
    c.check("get n\r\n", "END\r\n");
    // Misc.
    c.check("version\r\n", &format!("VERSION {}\r\n", env!("CARGO_PKG_VERSION")));
    c.check("verbosity 1\r\n", "OK\r\n");
    c.check("bogus command\r\n", "ERROR\r\n");
    c.check("\r\n", "ERROR\r\n");
    c.check("set k 0 0\r\n", "ERROR\r\n");
    c.check("set k 0 0 -1\r\n", "CLIENT_ERROR bad command line format\r\n");
    c.check(&format!("get {}\r\n", "k".repeat(251)), "CLIENT_ERROR bad command line format\r\n");
    c.check(&format!("set {} 0 0 1\r\nx\r\n", "k".repeat(250)), "STORED\r\n");
    c.check("set s 0 0 1\r\nx\r\nflush_all\r\nget s\r\n", "STORED\r\nOK\r\nEND\r\n");
    c.check("set s 0 0 1\r\ny\r\nget s\r\n", "STORED\r\nVALUE s 0 1\r\ny\r\nEND\r\n");
    c.check("stats nonsense\r\n", "ERROR\r\n");
    let st = srv.stats();
    assert_eq!(st["kvd_stack"], stack);
    assert_eq!(st["cmd_flush"], "1");
    assert_eq!(st["threads"], "2");
    c.send(b"quit\r\n");
    assert!(c.closed());
}

fn noreply(stack: &str) {
    let srv = Server::start(stack, &[]);
    let mut c = srv.client();
    c.send(b"set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\nadd b 0 0 1 noreply\r\n5\r\n");
    c.send(b"replace b 0 0 2 noreply\r\n10\r\nappend b 0 0 1 noreply\r\n0\r\nprepend b 0 0 1 noreply\r\n1\r\n");
    c.send(b"cas b 0 0 1 1 noreply\r\nx\r\nincr a 4 noreply\r\ndecr b 10 noreply\r\ntouch a 0 noreply\r\n");
    c.send(b"set c 0 0 1 noreply\r\nc\r\ndelete c noreply\r\ndelete c noreply\r\nverbosity 0 noreply\r\n");
    c.check("get a b c\r\n", "VALUE a 0 1\r\n5\r\nVALUE b 0 4\r\n1090\r\nEND\r\n");
    c.check("flush_all 0 noreply\r\nget a\r\n", "END\r\n");
    assert_eq!(srv.stat("cmd_set"), 8);
    assert_eq!(srv.stat("cas_badval"), 1);
}

fn pipelining_and_partial_reads(stack: &str) {
    let srv = Server::start(stack, &[]);
    let mut c = srv.client();
    let mut req = String::new();
    let mut want = String::new();
    for i in 0..2000 {
        req += &format!("set key{i} {i} 0 {}\r\nvalue{i}\r\n", format!("value{i}").len());
        want += "STORED\r\n";
    }
    for i in (0..2000).step_by(7) {
        req += &format!("get key{i} key{}\r\n", i + 1);
        want += &format!(
            "VALUE key{i} {i} {}\r\nvalue{i}\r\nVALUE key{j} {j} {}\r\nvalue{j}\r\nEND\r\n",
            format!("value{i}").len(),
            format!("value{}", i + 1).len(),
            j = i + 1
        );
    }
    c.check(&req, &want);
    // The same commands one byte per write: lines and data blocks split anywhere.
    let req = "set split 1 0 10\r\n0123456789\r\nget split\r\n";
    for b in req.as_bytes() {
        c.send(&[*b]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut got = vec![0u8; "STORED\r\nVALUE split 1 10\r\n0123456789\r\nEND\r\n".len()];
    c.s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"STORED\r\nVALUE split 1 10\r\n0123456789\r\nEND\r\n");
    // A data block of 600 KiB written in pieces.
    let val = vec![b'v'; 600 * 1024];
    c.send(format!("set large 0 0 {}\r\n", val.len()).as_bytes());
    for piece in val.chunks(50_000) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(2));
    }
    c.check("\r\n", "STORED\r\n");
    c.send(b"get large\r\n");
    let r = c.read_until(b"END\r\n");
    assert_eq!(r.len(), "VALUE large 0 614400\r\n".len() + val.len() + "\r\nEND\r\n".len());
    // A reply far larger than the socket buffers, to a client that reads it slowly.
    let mut req = String::new();
    for _ in 0..30 {
        req += "get large\r\n";
    }
    c.send(req.as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    let mut all = vec![0u8; 30 * r.len()];
    c.s.read_exact(&mut all).unwrap();
    assert!(all.chunks(r.len()).all(|x| x == r));
    c.check("version\r\n", &format!("VERSION {}\r\n", env!("CARGO_PKG_VERSION")));
}

fn oversize_and_malformed(stack: &str) {
    let srv = Server::start(stack, &[]);
    let mut c = srv.client();
    c.check("set k 0 0 1\r\nx\r\n", "STORED\r\n");
    let big = vec![b'z'; 1024 * 1024 + 1];
    c.send(b"set k 0 0 1048577\r\n");
    c.send(&big);
    // The block is swallowed, the old value is gone (memcached: no stale data after a failed set).
    c.check("\r\nget k\r\n", "SERVER_ERROR object too large for cache\r\nEND\r\n");
    c.send(b"set k 0 0 1048000\r\n");
    c.send(&big[..1048000]);
    c.check("\r\nappend k 0 0 1000\r\n", "STORED\r\n");
    c.send(&big[..1000]);
    c.check("\r\nget nothing\r\n", "SERVER_ERROR object too large for cache\r\nEND\r\n");
    c.send(b"get k\r\n");
    assert_eq!(c.read_until(b"END\r\n").len(), "VALUE k 0 1048000\r\n".len() + 1048000 + 7);
    c.check("set k 0 0 1\r\nx\r\n", "STORED\r\n");
    let ok = vec![b'o'; 1024 * 1024 - 512];
    c.send(format!("set ok 0 0 {}\r\n", ok.len()).as_bytes());
    c.send(&ok);
    c.check("\r\n", "STORED\r\n");
    // A data block not ending in \r\n.
    c.check("set k 0 0 3\r\nabcde\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    c.check("set k 0 0 3\r\nabc\r\n", "STORED\r\n");
    c.check("set k\x01 0 0 1\r\n", "CLIENT_ERROR bad command line format\r\n");
    c.check("get k\r\n", "VALUE k 0 3\r\nabc\r\nEND\r\n");
    assert_eq!(srv.stats()["item_size_max"], "1048576");
    // A line longer than 2048 bytes without a newline: error, then the server closes.
    let mut c2 = srv.client();
    c2.send(&vec![b'x'; 5000]);
    c2.check("", "CLIENT_ERROR line too long\r\n");
    assert!(c2.closed());
    // A long multi-key get is fine.
    let mut line = String::from("get");
    for i in 0..1000 {
        line += &format!(" somekey{i}");
    }
    c.check(&format!("{line} k\r\n"), "VALUE k 0 3\r\nabc\r\nEND\r\n");
    // -I raises the limit.
    let srv2 = Server::start(stack, &["-I", "2m"]);
    let mut c = srv2.client();
    c.send(b"set k 0 0 1048577\r\n");
    c.send(&big);
    c.check("\r\n", "STORED\r\n");
}

fn vanished_clients(stack: &str) {
    let srv = Server::start(stack, &[]);
    for i in 0..50 {
        let mut c = srv.client();
        match i % 5 {
            0 => c.send(b"set k 0 0 100\r\nabc"),         // mid data block
            1 => c.send(b"get k k k k"),                  // mid line
            2 => c.send(&vec![b'q'; 100_000]),            // garbage
            3 => c.send(b"set big 0 0 2000000\r\nxxxxx"), // while swallowing
            _ => c.send(&b"get large\r\n".repeat(200)),   // output it never reads
        }
        if i == 4 {
            let mut w = srv.client();
            let v = vec![b'L'; 500_000];
            w.send(format!("set large 0 0 {}\r\n", v.len()).as_bytes());
            w.send(&v);
            w.check("\r\n", "STORED\r\n");
        }
        drop(c);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.stat("curr_connections") != 1 {
        assert!(Instant::now() < deadline, "connections not closed: {}", srv.stat("curr_connections"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = srv.stats();
    assert!(st["total_connections"].parse::<i64>().unwrap() >= 52);
    assert_eq!(st["curr_items"], "1");
    let mut c = srv.client();
    c.check("get k big\r\n", "END\r\n");
}

fn expiry(stack: &str) {
    let srv = Server::start(stack, &[]);
    let mut c = srv.client();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    c.check("set short 0 2 1\r\ns\r\n", "STORED\r\n");
    c.check("set never 0 0 1\r\nn\r\n", "STORED\r\n");
    c.check("set neg 0 -1 1\r\nx\r\n", "STORED\r\n");
    c.check(&format!("set past 0 {} 1\r\nx\r\n", now - 10), "STORED\r\n");
    c.check(&format!("set future 0 {} 1\r\nf\r\n", now + 3600), "STORED\r\n");
    c.check("set month 0 2592000 1\r\nm\r\n", "STORED\r\n");
    c.check("get neg past\r\n", "END\r\n");
    c.check("get future month\r\n", "VALUE future 0 1\r\nf\r\nVALUE month 0 1\r\nm\r\nEND\r\n");
    c.check("touch never 1\r\n", "TOUCHED\r\n");
    c.check("flush_all 2\r\n", "OK\r\n");
    c.check("get short\r\n", "VALUE short 0 1\r\ns\r\nEND\r\n");
    std::thread::sleep(Duration::from_millis(2600));
    c.check("get short never\r\n", "END\r\n");
    c.check("add short 0 0 1\r\nS\r\n", "STORED\r\n");
    c.check("get short\r\n", "VALUE short 0 1\r\nS\r\nEND\r\n");
    c.check("get future month\r\n", "END\r\n"); // the delayed flush
    let st = srv.stats();
    assert_eq!(st["get_expired"], "4"); // neg, past, short, never
    assert_eq!(st["get_flushed"], "2");
}

fn eviction(stack: &str) {
    let srv = Server::start(stack, &["-m", "1"]);
    let mut c = srv.client();
    let v = vec![b'e'; 1000];
    let mut req = Vec::new();
    for i in 0..5000 {
        req.extend_from_slice(format!("set ev{i} 0 0 1000 noreply\r\n").as_bytes());
        req.extend_from_slice(&v);
        req.extend_from_slice(b"\r\n");
    }
    c.send(&req);
    c.check("get ev4999\r\n", &format!("VALUE ev4999 0 1000\r\n{}\r\nEND\r\n", "e".repeat(1000)));
    // The oldest items went first.
    let oldest: Vec<String> = (0..100).map(|i| format!("ev{i}")).collect();
    c.check(&format!("get {}\r\n", oldest.join(" ")), "END\r\n");
    let st = srv.stats();
    let bytes: i64 = st["bytes"].parse().unwrap();
    let items: i64 = st["curr_items"].parse().unwrap();
    let ev: i64 = st["evictions"].parse().unwrap();
    assert!(bytes <= 1 << 20, "bytes {bytes}");
    assert!(bytes > 800 * 1024, "bytes {bytes}");
    assert_eq!(items + ev, 5000, "items {items} evictions {ev}");
    assert_eq!(st["limit_maxbytes"], "1048576");
}

fn exact_counters_and_atomic_writes(stack: &str) {
    let srv = Server::start(stack, &["--hash-mask", "f"]); // 16 hashes: long collision chains
    let threads = 4;
    let rounds = 300;
    let mut c = srv.client();
    c.check("set counter 0 0 1\r\n0\r\nset log 0 0 0\r\n\r\n", "STORED\r\nSTORED\r\n");
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let port = srv.port;
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut c = Client { s, buf: Vec::new() };
                for i in 0..rounds {
                    let v = format!("t{t}-{i}");
                    c.check(&format!("set k{t}-{i} {t} 0 {}\r\n{v}\r\n", v.len()), "STORED\r\n");
                    c.check(
                        &format!("get k{t}-{i} miss{t}-{i}\r\n"),
                        &format!("VALUE k{t}-{i} {t} {}\r\n{v}\r\nEND\r\n", v.len()),
                    );
                    c.send(b"incr counter 1\r\n");
                    c.read_until(b"\r\n");
                    c.check("append log 0 0 1\r\nx\r\n", "STORED\r\n");
                    if i > 0 {
                        let p = format!("t{t}-{}", i - 1);
                        c.check(
                            &format!("get k{t}-{}\r\n", i - 1),
                            &format!("VALUE k{t}-{} {t} {}\r\n{p}\r\nEND\r\n", i - 1, p.len()),
                        );
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let n = (threads * rounds) as i64;
    c.check("get counter\r\n", &format!("VALUE counter 0 {}\r\n{n}\r\nEND\r\n", n.to_string().len()));
    c.send(b"get log\r\n");
    let r = c.read_until(b"END\r\n");
    assert_eq!(r.len(), format!("VALUE log 0 {n}\r\n").len() + n as usize + 7);
    let st = srv.stats();
    let get = |k: &str| st[k].parse::<i64>().unwrap();
    assert_eq!(get("cmd_set"), 2 + 2 * n);
    assert_eq!(get("cmd_get"), 2 * n + (n - threads as i64) + 2);
    assert_eq!(get("get_hits"), n + (n - threads as i64) + 2);
    assert_eq!(get("get_misses"), n);
    assert_eq!(get("incr_hits"), n);
    assert_eq!(get("curr_items"), n + 2);
    assert_eq!(get("total_items"), 2 + 3 * n);
}

fn libraries_loaded(stack: &str, allocator: &str) {
    let srv = Server::start(stack, &[]);
    let st = srv.stats();
    assert_eq!(st["kvd_allocator"], allocator, "{:?}", st.get("kvd_allocator_path"));
    if stack == "ours" {
        assert_eq!(st["kvd_prcu_version"], "0.1.0");
        assert_eq!(st["kvd_plocks_version"], "0.1.0");
        assert_eq!(st["kvd_pcounters_version"], "0.2.0");
        assert_eq!(st["kvd_palloc_version"], "0.1.0");
        assert!(st["kvd_allocator_path"].ends_with("/libpalloc_preload.so"));
        // The libraries in the server's memory map are the .so files next to the binary.
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", srv.child.id())).unwrap();
        let dir = std::path::Path::new(env!("CARGO_BIN_EXE_kvd")).parent().unwrap().to_str().unwrap().to_string();
        for lib in ["libprcu.so", "libplocks.so", "libpcounters.so", "libpalloc_preload.so"] {
            assert!(maps.contains(&format!("{dir}/{lib}")), "{lib} not mapped from {dir}");
        }
    } else {
        assert!(!st.contains_key("kvd_palloc_version"));
    }
}

fn metrics_and_signals(stack: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut srv = Server::start(stack, &["--metrics-port", &port.to_string()]);
    let mut c = srv.client();
    c.check("set m 0 0 1\r\n1\r\nget m m nope\r\n", "STORED\r\nVALUE m 0 1\r\n1\r\nVALUE m 0 1\r\n1\r\nEND\r\n");
    let mut h = TcpStream::connect(("127.0.0.1", port)).unwrap();
    h.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    h.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
    assert!(body.contains("\nkvd_cmd_get 3\n"), "{body}");
    assert!(body.contains("\nkvd_get_hits 2\n"), "{body}");
    assert!(body.contains("# TYPE kvd_cmd_set counter\n"), "{body}");
    // -c: a connection past the limit gets memcached's error and is closed.
    let srv2 = Server::start(stack, &["-c", "1"]);
    let _held = srv2.client();
    std::thread::sleep(Duration::from_millis(100));
    let mut over = srv2.client();
    over.check("", "ERROR Too many open connections\r\n");
    assert!(over.closed());
    // SIGTERM: clean exit with status 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGTERM) };
    let st = srv.child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{st:?}");
}

#[test]
fn bad_options_exit_2() {
    for args in [&["--stack", "fast"][..], &["-p"], &["-t", "0"], &["--bogus"], &["-m", "x"], &["-I", "1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvd")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("kvd: "), "{args:?}");
    }
}

/// Whether the server can run `stack` on this machine. Only the `strong` stack has parts from
/// outside the workspace (Debian's libjemalloc2 and liburcu-dev, which ci/install-deps.sh
/// installs); where one is missing, kvd refuses that stack with a message naming it, and the
/// stack's tests say they skipped.
fn stack_runs_here(stack: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["-p", "0", "-t", "1", "--stack", stack, "--check-stack"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if stack == "strong" && !out.status.success() && (err.contains("liburcu") || err.contains("jemalloc")) {
        eprintln!("skipped: {}", err.trim());
        return false;
    }
    assert!(out.status.success(), "kvd --stack {stack} --check-stack: {err}");
    true
}

/// `kvd --bench-store`: more threads than CPUs setting and reading the same keys through the
/// stack's store; the bench itself checks that every value read is one written for that key
/// (never a freed or half-written item) and that the counters equal what the threads did.
fn store_bench_counts_and_values(stack: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args(["--bench-store", "--stack", stack, "--threads", "1,6", "--mix", "50,95", "--sizes", "16,700"])
        .args(["--keys", "300", "--secs", "0.15"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kvd --bench-store --stack {stack}: {}\n{stdout}{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "one line per cell: {stdout}");
    for l in &lines {
        assert!(l.contains(&format!("\"stack\":\"{stack}\"")) && l.ends_with("\"ok\":true}"), "{l}");
        let field = |k: &str| -> u64 {
            let rest = &l[l.find(&format!("\"{k}\":")).unwrap() + k.len() + 3..];
            rest[..rest.find(',').unwrap()].parse().unwrap()
        };
        assert!(field("gets") > 0 && field("sets") > 0, "both kinds of operation ran: {l}");
    }
}

#[test]
fn store_bench_refuses_bad_options() {
    for args in [
        &["--sizes", "8"][..],
        &["--threads", "0"],
        &["--mix", "101"],
        &["--keys", "x"],
        &["--keys", "1,2"],
        &["--secs", "0"],
        &["--bogus", "1"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvd")).arg("--bench-store").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("kvd --bench-store: ") && err.contains("usage: kvd --bench-store"), "{args:?}: {err}");
    }
}

macro_rules! per_stack {
    ($stack:ident, $alloc:literal) => {
        mod $stack {
            #[test]
            fn every_command() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::every_command(stringify!($stack));
            }
            #[test]
            fn noreply() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::noreply(stringify!($stack));
            }
            #[test]
            fn pipelining_and_partial_reads() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::pipelining_and_partial_reads(stringify!($stack));
            }
            #[test]
            fn oversize_and_malformed() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::oversize_and_malformed(stringify!($stack));
            }
            #[test]
            fn vanished_clients() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::vanished_clients(stringify!($stack));
            }
            #[test]
            fn expiry() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::expiry(stringify!($stack));
            }
            #[test]
            fn eviction() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::eviction(stringify!($stack));
            }
            #[test]
            fn exact_counters_and_atomic_writes() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::exact_counters_and_atomic_writes(stringify!($stack));
            }
            #[test]
            fn libraries_loaded() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::libraries_loaded(stringify!($stack), $alloc);
            }
            #[test]
            fn store_bench_counts_and_values() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::store_bench_counts_and_values(stringify!($stack));
            }
            #[test]
            fn metrics_and_signals() {
                if !super::stack_runs_here(stringify!($stack)) {
                    return;
                }
                super::metrics_and_signals(stringify!($stack));
            }
        }
    };
}

per_stack!(ours, "palloc");
per_stack!(naive, "glibc");
per_stack!(strong, "jemalloc");
