//! Starting the servers under test: kvd on one of its stacks, memcached, or an address that
//! is already listening.

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kvd --stack STACK`.
    Kvd(String),
    /// Debian's memcached.
    Memcached,
    /// A server already listening at this address (not started, not stopped).
    External(SocketAddr),
}

impl Kind {
    /// Parses `ours`, `naive`, `strong` (kvd stacks), `memcached`, or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "ours" | "naive" | "strong" => Ok(Kind::Kvd(s.to_string())),
            "memcached" => Ok(Kind::Memcached),
            _ => s
                .parse()
                .map(Kind::External)
                .map_err(|_| format!("unknown server {s:?} (ours, naive, strong, memcached or HOST:PORT)")),
        }
    }

    /// The name used in reports and on the command line.
    pub fn name(&self) -> String {
        match self {
            Kind::Kvd(s) => s.clone(),
            Kind::Memcached => "memcached".into(),
            Kind::External(a) => a.to_string(),
        }
    }
}

/// How the server process reaches rseq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rseq {
    /// Default: glibc registers rseq for every thread.
    Libc,
    /// `GLIBC_TUNABLES=glibc.pthread.rseq=0`: glibc leaves the area unregistered.
    Tunable,
    /// A seccomp filter, installed before `exec`, answers `ENOSYS` to `rseq(2)`.
    Denied,
}

impl Rseq {
    pub fn parse(s: &str) -> Result<Rseq, String> {
        match s {
            "libc" => Ok(Rseq::Libc),
            "tunable" => Ok(Rseq::Tunable),
            "denied" => Ok(Rseq::Denied),
            _ => Err(format!("unknown rseq mode {s:?} (libc, tunable, denied)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Rseq::Libc => "libc",
            Rseq::Tunable => "tunable",
            Rseq::Denied => "denied",
        }
    }
}

/// Finds the kvd binary: `$KVD_BIN`, or `kvd` next to this executable or in the workspace's
/// target/release then target/debug.
pub fn find_kvd() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KVD_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut d = exe.parent().map(PathBuf::from);
        // target/<profile>/deps/<test> or target/<profile>/kvd-check
        while let Some(x) = d {
            if x.file_name().is_some_and(|n| n == "target") {
                dirs.push(x.join("release"));
                dirs.push(x.join("debug"));
                break;
            }
            dirs.push(x.clone());
            d = x.parent().map(PathBuf::from);
        }
    }
    dirs.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release")));
    dirs.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/debug")));
    dirs.into_iter().map(|d| d.join("kvd")).find(|p| p.is_file())
}

/// A running (or external) server.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Option<Child>,
    /// What reproduces the server's start, for failure messages.
    pub command_line: String,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts `kind` with `threads` worker threads and a `mem_mb` item memory limit.
    pub fn start(kind: &Kind, threads: usize, mem_mb: usize, rseq: Rseq) -> io::Result<Server> {
        let (mut cmd, port) = match kind {
            Kind::External(a) => {
                return Ok(Server {
                    kind: kind.clone(),
                    addr: *a,
                    child: None,
                    command_line: format!("(external server at {a})"),
                })
            }
            Kind::Kvd(stack) => {
                let bin = find_kvd().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "kvd binary not found (build it: cargo build --release -p kvd, or set KVD_BIN)",
                    )
                })?;
                let mut c = Command::new(bin);
                c.args([
                    "-p",
                    "0",
                    "-t",
                    &threads.to_string(),
                    "-m",
                    &mem_mb.to_string(),
                    "-c",
                    "4096",
                    "--stack",
                    stack,
                ]);
                (c, None)
            }
            Kind::Memcached => {
                let port = free_port()?;
                let mut c = Command::new("memcached");
                c.args([
                    "-p",
                    &port.to_string(),
                    "-U",
                    "0",
                    "-l",
                    "127.0.0.1",
                    "-t",
                    &threads.to_string(),
                    "-m",
                    &mem_mb.to_string(),
                    "-c",
                    "4096",
                ]);
                // memcached refuses to run as root without -u.
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } == 0 {
                    c.args(["-u", "root"]);
                }
                (c, Some(port))
            }
        };
        cmd.env_remove("GLIBC_TUNABLES");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        match rseq {
            Rseq::Libc => {}
            Rseq::Tunable => {
                cmd.env("GLIBC_TUNABLES", "glibc.pthread.rseq=0");
            }
            Rseq::Denied => {
                // SAFETY: the hook only makes system calls (prctl), async-signal-safe after fork.
                unsafe {
                    cmd.pre_exec(rseq::testing::deny_rseq_with_enosys);
                }
            }
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; the server dies with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let command_line = format!(
            "{}{:?} {}",
            match rseq {
                Rseq::Libc => "",
                Rseq::Tunable => "GLIBC_TUNABLES=glibc.pthread.rseq=0 ",
                Rseq::Denied => "(rseq denied by seccomp) ",
            },
            cmd.get_program(),
            cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        );
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut reader = BufReader::new(stderr);
        let addr = match port {
            Some(p) => {
                // memcached prints nothing when ready: poll until it accepts.
                std::thread::spawn(move || io::copy(&mut reader, &mut io::sink()));
                let addr: SocketAddr = ([127, 0, 0, 1], p).into();
                let t0 = Instant::now();
                loop {
                    if TcpStream::connect(addr).is_ok() {
                        break addr;
                    }
                    if let Some(st) = child.try_wait()? {
                        return Err(io::Error::other(format!("{command_line} exited at start: {st}")));
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        let _ = child.kill();
                        return Err(io::Error::other(format!("{command_line} did not listen within 10 s")));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            None => {
                // kvd: "kvd: listening on 127.0.0.1:PORT (stack STACK, N threads)".
                let mut line = String::new();
                let mut seen = String::new();
                let addr = loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        let st = child.wait()?;
                        return Err(io::Error::other(format!(
                            "{command_line} exited before listening ({st}); stderr:\n{seen}"
                        )));
                    }
                    seen.push_str(&line);
                    if let Some(rest) = line.trim().strip_prefix("kvd: listening on ") {
                        let a = rest.split(' ').next().unwrap_or("");
                        break a
                            .parse::<SocketAddr>()
                            .map_err(|_| io::Error::other(format!("bad ready line {line:?}")))?;
                    }
                };
                std::thread::spawn(move || {
                    // Keep draining so that the server never blocks on a full pipe; show its messages.
                    let mut l = String::new();
                    while reader.read_line(&mut l).unwrap_or(0) > 0 {
                        eprint!("[kvd] {l}");
                        l.clear();
                    }
                });
                addr
            }
        };
        Ok(Server { kind: kind.clone(), addr, child: Some(child), command_line })
    }

    /// The server's pid, when this process started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the server has exited (a crash during a run).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then the exit status (None for an external server).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        // SAFETY: plain kill(2) on our own child's pid, not yet reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = c.kill();
                let st = c.wait().ok();
                self.child = None;
                return st;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}
