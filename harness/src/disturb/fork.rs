//! `fork` mid-run: the child (only the forking thread) uses every library and reports a
//! verdict through a pipe.

use std::time::{Duration, Instant};

use crate::engine::{Engine, Loaded};
use crate::participants::Participant;
use crate::state::ForkRecord;

/// How long a forked child may take for its checks before it counts as deadlocked. A child
/// needs well under a second on a host; in a single-stepped qemu guest on a loaded 2-vCPU host
/// (the kernel matrix) children took more than 15 s (2026-12-07), so the limit leaves room
/// for that while a real deadlock still fails the run.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

impl Engine {
    /// One fork event.
    pub(crate) fn fork(&mut self, seed: u64) -> String {
        let ctx = self.ctx.clone();
        let at = ctx.ms();
        let rec = self.fork_once(seed, at);
        let out = format!("{}: {}", if rec.ok { "child ok" } else { "CHILD FAILED" }, rec.verdict.join("; "));
        self.forks.push(rec);
        out
    }

    /// Forks; the child uses every library on its only thread and reports through a pipe.
    fn fork_once(&mut self, seed: u64, at_ms: u64) -> ForkRecord {
        let slots = self.ctx.slots.clone();
        // Quiesce the libraries that need it; hold the others' read locks so that no reload
        // runs meanwhile (only this thread reloads anyway).
        enum G<'a> {
            R(std::sync::RwLockReadGuard<'a, Option<Loaded>>),
            W(std::sync::RwLockWriteGuard<'a, Option<Loaded>>),
        }
        let mut guards = Vec::new();
        for s in &slots {
            let needs = s.state.read().unwrap().as_ref().is_some_and(|l| l.p.fork_needs_quiescence());
            guards.push(if needs { G::W(s.state.write().unwrap()) } else { G::R(s.state.read().unwrap()) });
        }
        let parts: Vec<(&dyn Participant, String)> = guards
            .iter()
            .filter_map(|g| {
                let l = match g {
                    G::R(r) => r.as_ref(),
                    G::W(w) => w.as_ref(),
                }?;
                Some((l.p.as_ref(), l.p.name().to_string()))
            })
            .collect();
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return ForkRecord {
                at_ms,
                ok: false,
                verdict: vec![format!("pipe: {}", std::io::Error::last_os_error())],
            };
        }
        // SAFETY: fork; the child only runs the libraries, formats its verdict (malloc is
        // fork-safe in glibc), writes it and leaves with _exit, touching no lock that another
        // thread might have held.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: closing the read end in the child.
            unsafe { libc::close(fds[0]) };
            let mut all_ok = true;
            let mut text = String::new();
            for (i, (p, name)) in parts.iter().enumerate() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.fork_child(seed ^ i as u64)));
                let mode = p.thread_mode().name();
                match r {
                    Ok(Ok(c)) => text.push_str(&format!(
                        "{name}: ok ({} facts, mode {mode}): {}\n",
                        c.checked,
                        c.what.replace('\n', " ")
                    )),
                    Ok(Err(m)) => {
                        all_ok = false;
                        text.push_str(&format!("{name}: FAILED in the child: {m} (mode {mode})\n"));
                    }
                    Err(_) => {
                        all_ok = false;
                        text.push_str(&format!("{name}: panicked in the child\n"));
                    }
                }
            }
            let b = text.as_bytes();
            let mut off = 0;
            while off < b.len() {
                // SAFETY: writing our own buffer to the pipe.
                let n = unsafe { libc::write(fds[1], b[off..].as_ptr().cast(), b.len() - off) };
                if n <= 0 {
                    break;
                }
                off += n as usize;
            }
            // SAFETY: leave the child without running atexit handlers or destructors.
            unsafe { libc::_exit(if all_ok { 0 } else { 1 }) };
        }
        // SAFETY: closing the write end in the parent.
        unsafe { libc::close(fds[1]) };
        if pid < 0 {
            // SAFETY: closing our read end.
            unsafe { libc::close(fds[0]) };
            return ForkRecord {
                at_ms,
                ok: false,
                verdict: vec![format!("fork: {}", std::io::Error::last_os_error())],
            };
        }
        let (text, timed_out) = read_with_timeout(fds[0], CHILD_LIMIT);
        // SAFETY: closing our read end.
        unsafe { libc::close(fds[0]) };
        if timed_out {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let nparts = parts.len();
        drop(parts);
        drop(guards);
        let mut verdict: Vec<String> = text.lines().map(str::to_string).collect();
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        if timed_out {
            verdict.push(format!(
                "the child did not finish within {} s (deadlock after fork?) and was killed",
                CHILD_LIMIT.as_secs()
            ));
        } else if libc::WIFSIGNALED(status) {
            verdict.push(format!("the child died from signal {}", libc::WTERMSIG(status)));
        } else if !exited_ok {
            verdict.push(format!("the child exited with {}", libc::WEXITSTATUS(status)));
        }
        let ok = exited_ok && !timed_out && verdict.len() == nparts;
        ForkRecord { at_ms, ok, verdict }
    }
}

fn read_with_timeout(fd: i32, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), true);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        if r == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}
