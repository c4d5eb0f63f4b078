//! The network side: a main thread that accepts connections (and serves /metrics, signals
//! and the delayed flush timer) and N worker threads, each with its own epoll set, that own
//! the connections handed to them and run the protocol.

use crate::parts::{self, C};
use crate::proto::{self, Cmd, StoreOp};
use crate::store::{self, ArithResult, Store, StoreResult};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Arc;

pub struct Config {
    pub port: u16,
    pub addr: String,
    pub threads: usize,
    pub megabytes: u64,
    pub maxconn: usize,
    pub item_max: usize,
    pub stack: parts::Stack,
    pub metrics_port: Option<u16>,
    pub hash_mask: u64,
}

struct Shared {
    store: Store,
    cfg: Config,
    started: i64,
    allocator: String,
    allocator_path: String,
}

/// Output buffered past this makes a connection stop reading until the client drains it.
const WBUF_HIGH: usize = 4 << 20;
const READ_CHUNK: usize = 16 * 1024;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

enum State {
    Cmd,
    /// Discarding the data block of a refused storage command: bytes left.
    Swallow(usize),
}

struct Conn {
    fd: RawFd,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    state: State,
    /// Close once the output is written (quit, line too long).
    closing: bool,
    /// Registered for EPOLLOUT (output pending) instead of EPOLLIN.
    writing: bool,
}

pub fn run(cfg: Config) -> Result<(), String> {
    let (allocator, allocator_path) = parts::malloc_provider();
    let store = Store::new(cfg.stack, cfg.megabytes * 1024 * 1024, cfg.item_max, cfg.hash_mask)?;
    let listener =
        TcpListener::bind((cfg.addr.as_str(), cfg.port)).map_err(|e| format!("bind {}:{}: {e}", cfg.addr, cfg.port))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let local: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics = match cfg.metrics_port {
        Some(p) => {
            let l =
                TcpListener::bind((cfg.addr.as_str(), p)).map_err(|e| format!("bind metrics {}:{p}: {e}", cfg.addr))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        }
        None => None,
    };
    let shared = Arc::new(Shared { store, cfg, started: store::now_unix(), allocator, allocator_path });

    // SIGTERM/SIGINT arrive on a signalfd of the main thread: block them before any thread
    // starts so that every thread inherits the mask.
    // SAFETY: sigset operations on a local set; signalfd with a valid set.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if sfd < 0 {
        return Err(format!("signalfd: errno {}", errno()));
    }

    let mut workers = Vec::new();
    for i in 0..shared.cfg.threads {
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!("epoll_create1: errno {}", errno()));
        }
        let sh = shared.clone();
        std::thread::Builder::new()
            .name(format!("kvd-worker-{i}"))
            .spawn(move || worker(sh, ep))
            .map_err(|e| e.to_string())?;
        workers.push(ep);
    }

    // SAFETY: plain syscall.
    let mep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let lfd = listener.as_raw_fd();
    add_fd(mep, lfd, libc::EPOLLIN as u32, 1);
    add_fd(mep, sfd, libc::EPOLLIN as u32, 2);
    if let Some(m) = &metrics {
        add_fd(mep, m.as_raw_fd(), libc::EPOLLIN as u32, 3);
    }
    eprintln!(
        "kvd: listening on {}:{} (stack {}, {} threads)",
        local.ip(),
        local.port(),
        shared.cfg.stack.name(),
        shared.cfg.threads
    );
    let mut next = 0usize;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // SAFETY: valid epoll fd and event buffer.
        let n = unsafe { libc::epoll_wait(mep, events.as_mut_ptr(), events.len() as i32, 250) };
        shared.store.tick(store::now_unix());
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(format!("epoll_wait: errno {}", errno()));
        }
        for ev in &events[..n as usize] {
            match ev.u64 {
                1 => accept_all(&shared, &listener, &workers, &mut next),
                2 => return Ok(()),
                3 => {
                    if let Some(m) = &metrics {
                        serve_metrics(&shared, m);
                    }
                }
                _ => {}
            }
        }
    }
}

fn add_fd(ep: RawFd, fd: RawFd, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: valid fds and event.
    let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(rc, 0, "epoll_ctl add: errno {}", errno());
}

fn accept_all(sh: &Shared, listener: &TcpListener, workers: &[RawFd], next: &mut usize) {
    loop {
        let (s, _) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return, // EMFILE and the like: try again on the next event
        };
        let c = &sh.store.counters;
        if c.get(C::curr_connections) as usize >= sh.cfg.maxconn {
            let mut s = s;
            let _ = s.write_all(b"ERROR Too many open connections\r\n");
            c.add(C::rejected_connections, 1);
            continue;
        }
        let _ = s.set_nonblocking(true);
        let _ = s.set_nodelay(true);
        c.add(C::curr_connections, 1);
        c.add(C::total_connections, 1);
        let fd = s.into_raw_fd();
        let conn = Box::new(Conn {
            fd,
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            state: State::Cmd,
            closing: false,
            writing: false,
        });
        // The worker owns the connection from here on: only it touches the Box (epoll_ctl
        // orders this thread's writes before the worker's first event).
        let ep = workers[*next % workers.len()];
        *next += 1;
        add_fd(ep, fd, libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32, Box::into_raw(conn) as u64);
    }
}

fn serve_metrics(sh: &Shared, l: &TcpListener) {
    use std::io::Read;
    while let Ok((mut s, _)) = l.accept() {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(500)));
        let mut req = Vec::new();
        let mut buf = [0u8; 2048];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let resp = if req.starts_with(b"GET /metrics ") || req.starts_with(b"GET / ") {
            let body = sh.store.counters.prometheus();
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        let _ = s.write_all(resp.as_bytes());
    }
}

fn worker(sh: Arc<Shared>, ep: RawFd) {
    sh.store.index.register_thread();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: valid epoll fd and buffer.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            let conn = ev.u64 as *mut Conn;
            // SAFETY: the pointer main registered; only this worker uses it, and it is freed
            // only here (close), after which the fd is no longer in the set.
            let c = unsafe { &mut *conn };
            if !handle(&sh, ep, c, ev.events) {
                // SAFETY: closing removes the fd from the epoll set; the Box is ours.
                unsafe {
                    libc::close(c.fd);
                    drop(Box::from_raw(conn));
                }
                sh.store.counters.add(C::curr_connections, -1);
            }
        }
    }
}

/// Handles an epoll event; false when the connection is to be closed.
fn handle(sh: &Shared, ep: RawFd, c: &mut Conn, events: u32) -> bool {
    if events & libc::EPOLLERR as u32 != 0 {
        return false;
    }
    if c.writing {
        if !flush(sh, c) {
            return false;
        }
        if c.wpos < c.wbuf.len() {
            return true;
        }
        // Drained: run what is buffered, then read again.
        if !process_and_flush(sh, c) {
            return false;
        }
    } else {
        if c.rbuf.capacity() - c.rbuf.len() < READ_CHUNK {
            c.rbuf.reserve(READ_CHUNK);
        }
        let spare = c.rbuf.capacity() - c.rbuf.len();
        // SAFETY: reads into the vector's spare capacity; len is raised by what was read.
        let n = unsafe { libc::read(c.fd, c.rbuf.as_mut_ptr().add(c.rbuf.len()).cast(), spare) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = errno();
            return e == libc::EAGAIN || e == libc::EINTR;
        }
        // SAFETY: n bytes were initialised by read.
        unsafe { c.rbuf.set_len(c.rbuf.len() + n as usize) };
        sh.store.counters.add(C::bytes_read, n as i64);
        if !process_and_flush(sh, c) {
            return false;
        }
    }
    if c.closing && c.wpos == c.wbuf.len() {
        return false;
    }
    let want_write = c.wpos < c.wbuf.len();
    if want_write != c.writing {
        c.writing = want_write;
        let events = if want_write { libc::EPOLLOUT } else { libc::EPOLLIN | libc::EPOLLRDHUP } as u32;
        let mut ev = libc::epoll_event { events, u64: c as *mut Conn as u64 };
        // SAFETY: the fd is in the set.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, c.fd, &mut ev) };
    }
    true
}

/// Runs the buffered commands and writes their replies, again while the output limit
/// stopped processing and the socket took everything; false on a write error.
fn process_and_flush(sh: &Shared, c: &mut Conn) -> bool {
    loop {
        let more = process(sh, c);
        if !flush(sh, c) {
            return false;
        }
        if !more || c.wpos < c.wbuf.len() {
            return true;
        }
    }
}

/// Writes pending output; false on a write error (the client went away).
fn flush(sh: &Shared, c: &mut Conn) -> bool {
    while c.wpos < c.wbuf.len() {
        let rest = &c.wbuf[c.wpos..];
        // SAFETY: valid buffer; MSG_NOSIGNAL: no SIGPIPE for a vanished client.
        let n = unsafe { libc::send(c.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return e == libc::EAGAIN;
        }
        sh.store.counters.add(C::bytes_written, n as i64);
        c.wpos += n as usize;
    }
    c.wbuf.clear();
    c.wpos = 0;
    if c.wbuf.capacity() > WBUF_HIGH {
        c.wbuf.shrink_to(READ_CHUNK);
    }
    true
}

/// Runs every complete command in the read buffer; true when it stopped at the output limit
/// with input left.
fn process(sh: &Shared, c: &mut Conn) -> bool {
    let now = store::now_unix();
    let mut more = false;
    while !c.closing {
        if c.wbuf.len() >= WBUF_HIGH {
            more = c.rpos < c.rbuf.len();
            break;
        }
        let avail = &c.rbuf[c.rpos..];
        if avail.is_empty() {
            break;
        }
        if let State::Swallow(left) = c.state {
            let take = left.min(avail.len());
            c.rpos += take;
            c.state = if take == left { State::Cmd } else { State::Swallow(left - take) };
            continue;
        }
        let Some(nl) = avail.iter().position(|&b| b == b'\n') else {
            let max = if proto::is_get_prefix(avail) { proto::GET_LINE_MAX } else { proto::LINE_MAX };
            if avail.len() > max {
                c.wbuf.extend_from_slice(b"CLIENT_ERROR line too long\r\n");
                c.closing = true;
            }
            break;
        };
        let line_end = nl + 1;
        let line = if nl > 0 && avail[nl - 1] == b'\r' { &avail[..nl - 1] } else { &avail[..nl] };
        match proto::parse(line) {
            Err(e) => {
                c.wbuf.extend_from_slice(e.reply());
                c.rpos += line_end;
            }
            Ok(Cmd::Store { op, key, flags, exptime, bytes, cas, noreply }) => {
                if !sh.store.fits(key.len(), bytes) {
                    if !noreply {
                        c.wbuf.extend_from_slice(b"SERVER_ERROR object too large for cache\r\n");
                    }
                    if op == StoreOp::Set {
                        sh.store.drop_key(key);
                    }
                    sh.store.counters.add(C::cmd_set, 1);
                    c.rpos += line_end;
                    c.state = State::Swallow(bytes + 2);
                    continue;
                }
                let need = line_end + bytes + 2;
                if avail.len() < need {
                    // Keep the line until its whole data block is here.
                    let short = need - avail.len();
                    c.rbuf.reserve(short);
                    break;
                }
                let block = &avail[line_end..need];
                if &block[bytes..] != b"\r\n" {
                    if !noreply {
                        c.wbuf.extend_from_slice(b"CLIENT_ERROR bad data chunk\r\n");
                    }
                    sh.store.counters.add(C::cmd_set, 1);
                } else {
                    let r = sh.store.store(op, key, flags, exptime, &block[..bytes], cas);
                    if !noreply {
                        c.wbuf.extend_from_slice(match r {
                            StoreResult::Stored => b"STORED\r\n",
                            StoreResult::NotStored => b"NOT_STORED\r\n",
                            StoreResult::Exists => b"EXISTS\r\n",
                            StoreResult::NotFound => b"NOT_FOUND\r\n",
                            StoreResult::TooLarge => b"SERVER_ERROR object too large for cache\r\n",
                        });
                    }
                }
                c.rpos += need;
            }
            Ok(cmd) => {
                execute(sh, cmd, now, &mut c.wbuf, &mut c.closing);
                c.rpos += line_end;
            }
        }
    }
    // Compact the read buffer.
    if c.rpos == c.rbuf.len() {
        c.rbuf.clear();
        c.rpos = 0;
        if c.rbuf.capacity() > 4 * READ_CHUNK {
            c.rbuf.shrink_to(READ_CHUNK);
        }
    } else if c.rpos > 0 && c.rpos >= c.rbuf.len() / 2 {
        c.rbuf.drain(..c.rpos);
        c.rpos = 0;
    }
    more
}

fn execute(sh: &Shared, cmd: Cmd<'_>, now: i64, out: &mut Vec<u8>, closing: &mut bool) {
    let st = &sh.store;
    let reply = |out: &mut Vec<u8>, noreply: bool, text: &[u8]| {
        if !noreply {
            out.extend_from_slice(text);
        }
    };
    match cmd {
        Cmd::Get { keys, cas, touch } => {
            for k in proto::keys(keys) {
                st.get(k, cas, touch, now, out);
            }
            out.extend_from_slice(b"END\r\n");
        }
        Cmd::Store { .. } => unreachable!("handled by process"),
        Cmd::Delete { key, noreply } => {
            let hit = st.delete(key);
            reply(out, noreply, if hit { b"DELETED\r\n" } else { b"NOT_FOUND\r\n" });
        }
        Cmd::Arith { key, delta, incr, noreply } => match st.arith(key, incr, delta) {
            ArithResult::Value(v) => {
                if !noreply {
                    let _ = write!(out, "{v}\r\n");
                }
            }
            ArithResult::NotFound => reply(out, noreply, b"NOT_FOUND\r\n"),
            ArithResult::NonNumeric => {
                reply(out, noreply, b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            }
        },
        Cmd::Touch { key, exptime, noreply } => {
            let hit = st.touch(key, exptime);
            reply(out, noreply, if hit { b"TOUCHED\r\n" } else { b"NOT_FOUND\r\n" });
        }
        Cmd::FlushAll { delay, noreply } => {
            st.flush_all(delay);
            reply(out, noreply, b"OK\r\n");
        }
        Cmd::Stats { arg: None } => stats(sh, now, out),
        Cmd::Stats { arg: Some(_) } => out.extend_from_slice(b"ERROR\r\n"),
        Cmd::Version => {
            let _ = write!(out, "VERSION {}\r\n", env!("CARGO_PKG_VERSION"));
        }
        Cmd::Verbosity { noreply } => reply(out, noreply, b"OK\r\n"),
        Cmd::Quit => *closing = true,
    }
}

fn stats(sh: &Shared, now: i64, out: &mut Vec<u8>) {
    let c = &sh.store.counters;
    // SAFETY: rusage is plain data (zero is valid); getrusage fills it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "STAT {k} {v}\r\n");
    };
    line("pid", &std::process::id());
    line("uptime", &(now - sh.started));
    line("time", &now);
    line("version", &env!("CARGO_PKG_VERSION"));
    line("pointer_size", &64);
    line("rusage_user", &tv(ru.ru_utime));
    line("rusage_system", &tv(ru.ru_stime));
    line("max_connections", &sh.cfg.maxconn);
    for (name, cnt) in parts::COUNTER_NAMES.iter().zip(parts::ALL_COUNTERS) {
        line(name, &c.get(*cnt));
    }
    line("limit_maxbytes", &sh.store.limit);
    line("item_size_max", &sh.store.item_max);
    line("threads", &sh.cfg.threads);
    line("kvd_stack", &sh.cfg.stack.name());
    line("kvd_allocator", &sh.allocator);
    line("kvd_allocator_path", &sh.allocator_path);
    if let Some(v) = parts::palloc_version() {
        line("kvd_palloc_version", &v);
    }
    if sh.cfg.stack == parts::Stack::Ours {
        if let Ok(l) = parts::ours_libs() {
            line("kvd_libdir", &l.dir.display());
            line("kvd_prcu_version", &parts::PRCU_HEADER_VERSION);
            line("kvd_plocks_version", &l.plocks_version());
            line("kvd_pcounters_version", &l.pcounters_version());
        }
    }
    out.extend_from_slice(b"END\r\n");
}
