//! Thread churn: short-lived threads created continuously (each does a few rounds over
//! every library and exits), and the burst that holds many threads alive at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cpu;
use crate::engine::{churn_body, spawn_small, Ctx, Engine};
use crate::schedule;

pub(crate) fn churn_driver(ctx: Arc<Ctx>) {
    // This thread creates the churn threads: what is registered in it decides what glibc
    // registers in them.
    ctx.run_thread_hooks();
    let c = ctx.scenario.churn.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(schedule::thread_seed(ctx.seed, 1 << 20));
    let mut handles: VecDeque<JoinHandle<()>> = VecDeque::new();
    let t0 = Instant::now();
    let mut made = 0u64;
    while !ctx.stopping() {
        let due = (t0.elapsed().as_secs_f64() * c.rate) as u64;
        let mut spawned = false;
        while made < due && handles.len() < c.max_in_flight && !ctx.stopping() {
            let seed = rng.random();
            let cx = ctx.clone();
            let rounds = c.rounds.max(1);
            cx.thread_started();
            let r = spawn_small(c.stack_kib, "churn", move || {
                churn_body(&cx, seed, rounds);
                cx.thread_ended();
            });
            match r {
                Ok(h) => handles.push_back(h),
                Err(_) => {
                    ctx.thread_ended();
                    ctx.created.fetch_sub(1, Ordering::Relaxed);
                    ctx.spawn_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            made += 1;
            spawned = true;
        }
        while handles.front().is_some_and(|h| h.is_finished()) {
            if let Some(h) = handles.pop_front() {
                if let Err(e) = h.join() {
                    ctx.note_panic("churn thread", e);
                }
            }
        }
        if !spawned {
            std::thread::sleep(Duration::from_micros(500));
        } else if handles.len() >= c.max_in_flight {
            if let Some(h) = handles.pop_front() {
                if let Err(e) = h.join() {
                    ctx.note_panic("churn thread", e);
                }
            }
        }
    }
    for h in handles {
        if let Err(e) = h.join() {
            ctx.note_panic("churn thread", e);
        }
    }
}

/// Holds `count` threads alive at once; returns how many were alive together.
fn hold_alive(ctx: Arc<Ctx>, count: u32) -> (u64, u64) {
    ctx.run_thread_hooks();
    // Started by the event thread: back to the workers' priority, for this thread and the
    // threads it creates.
    let _ = cpu::set_thread_nice(0);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let started = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(count as usize);
    for i in 0..count {
        // Only SIGINT/SIGTERM cut a burst short: the run waits for it otherwise.
        if cpu::stop_requested() {
            break;
        }
        let (cx, g, st) = (ctx.clone(), gate.clone(), started.clone());
        let seed = schedule::thread_seed(ctx.seed, (2 << 20) + i as u64);
        cx.thread_started();
        let r = spawn_small(ctx.scenario.churn.stack_kib, "alive", move || {
            churn_body(&cx, seed, 1);
            st.fetch_add(1, Ordering::SeqCst);
            let (m, cv) = &*g;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            drop(open);
            cx.thread_ended();
        });
        match r {
            Ok(h) => handles.push(h),
            Err(_) => {
                ctx.thread_ended();
                ctx.created.fetch_sub(1, Ordering::Relaxed);
                ctx.spawn_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let want = handles.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < want && Instant::now() < deadline && !cpu::stop_requested() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let reached = started.load(Ordering::SeqCst);
    {
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    for h in handles {
        if let Err(e) = h.join() {
            ctx.note_panic("alive-burst thread", e);
        }
    }
    (count as u64, reached)
}

impl Engine {
    /// Starts the burst of `count` threads alive at once (joined before the run stops).
    pub(crate) fn alive_burst(&mut self, count: u32) -> String {
        let ctx = self.ctx.clone();
        let cx = ctx.clone();
        match std::thread::Builder::new().name("alive-burst".into()).spawn(move || hold_alive(cx, count)) {
            Ok(h) => {
                self.bursts.push(h);
                format!("burst of {count} threads started")
            }
            Err(e) => format!("cannot start burst: {e}"),
        }
    }
}
