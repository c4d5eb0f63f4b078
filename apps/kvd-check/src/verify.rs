//! The verifying client: client threads own disjoint key sets and follow a seeded sequence of
//! storage, counter, delete and multi-key get commands. Every reply is checked against a model
//! of what the server must hold (each command waits for its reply, so every write the model
//! holds was acknowledged), every value read must be the latest acknowledged one, and at the
//! end every key is read back and the server's `stats` counters must equal what the clients
//! counted from the replies.

use crate::client::{Conn, Store};
use crate::rng::{hash_str, mix, Rng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which commands the clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// set, add, replace, append, cas (good and bad), incr, delete, get and gets of 1..8 keys.
    Full,
    /// set and multi-key get only (for minimal servers).
    Simple,
}

impl Mix {
    pub fn parse(s: &str) -> Result<Mix, String> {
        match s {
            "full" => Ok(Mix::Full),
            "simple" => Ok(Mix::Simple),
            _ => Err(format!("unknown mix {s:?} (full, simple)")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mix::Full => "full",
            Mix::Simple => "simple",
        }
    }
}

/// One verifying run's parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub clients: usize,
    pub keys: usize,
    pub ops: usize,
    pub mix: Mix,
}

/// What the clients counted from the server's replies, in `stats` names.
pub const COUNTERS: [&str; 11] = [
    "cmd_get",
    "get_hits",
    "get_misses",
    "cmd_set",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
];

#[derive(Clone, Debug, Default)]
pub struct Counts(pub [u64; COUNTERS.len()]);

impl Counts {
    fn add(&mut self, name: &str, n: u64) {
        let i = COUNTERS.iter().position(|c| *c == name).expect("known counter");
        self.0[i] += n;
    }
}

/// The outcome of one run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Wrong replies, wrong values, connection errors, counter mismatches.
    pub failures: Vec<String>,
    /// Keys the model holds that the server did not return: losses unless the server evicted.
    pub missing: Vec<String>,
    pub evictions: u64,
    pub counts: Counts,
    pub ops: u64,
    pub items_expected: u64,
}

impl Outcome {
    /// A run passes when nothing failed and nothing acknowledged is missing (a missing key is
    /// tolerated only when the server reports evictions, and is then listed, not hidden).
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && (self.missing.is_empty() || self.evictions > 0)
    }
}

/// The value of `key` at `version`: starts with `key:version:` (so a wrong value read back
/// says which write it came from), then bytes derived from both; 8..=`max` bytes.
pub fn value_for(key: &str, version: u64, max: usize) -> Vec<u8> {
    let h = mix(hash_str(key) ^ version.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut v = format!("{key}:{version}:").into_bytes();
    let len = v.len() + 8 + (h % (max as u64).max(1)) as usize;
    let mut x = h;
    while v.len() < len {
        x = mix(x);
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

fn show(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    if s.len() > 80 {
        format!("{:?}... ({} bytes)", &s[..80], v.len())
    } else {
        format!("{s:?}")
    }
}

#[derive(Clone, Debug)]
struct Data {
    value: Vec<u8>,
    flags: u32,
}

struct Worker {
    conn: Conn,
    rng: Rng,
    data_keys: Vec<String>,
    data: Vec<Option<Data>>,
    num_keys: Vec<String>,
    nums: Vec<Option<u64>>,
    version: u64,
    counts: Counts,
    failures: Vec<String>,
    missing: Vec<String>,
    id: usize,
    op: usize,
}

const MAX_VALUE: usize = 1500;
const MAX_FAILURES: usize = 20;

impl Worker {
    fn fail(&mut self, msg: String) {
        if self.failures.len() < MAX_FAILURES {
            self.failures.push(format!("client {} op {}: {msg}", self.id, self.op));
        }
    }

    fn store(
        &mut self,
        cmd: &str,
        key_ix: usize,
        value: &[u8],
        flags: u32,
        cas: Option<u64>,
        want: Store,
    ) -> std::io::Result<Store> {
        let key = self.data_keys[key_ix].clone();
        let got = self.conn.store(cmd, &key, flags, value, cas)?;
        self.counts.add("cmd_set", 1);
        if cmd == "cas" {
            match got {
                Store::Stored => self.counts.add("cas_hits", 1),
                Store::Exists => self.counts.add("cas_badval", 1),
                Store::NotFound => self.counts.add("cas_misses", 1),
                Store::NotStored => {}
            }
        }
        if got != want {
            // A key the model holds that the server says is absent is a lost write.
            let lost = matches!(
                (cmd, got),
                ("replace" | "append", Store::NotStored) | ("cas", Store::NotFound) | ("add", Store::Stored)
            );
            if lost {
                self.missing.push(format!(
                    "{key}: {cmd} answered {got:?} where {want:?} was due (client {} op {})",
                    self.id, self.op
                ));
                if cmd != "add" {
                    self.data[key_ix] = None;
                }
            } else {
                self.fail(format!("{cmd} {key}: server answered {got:?}, due {want:?}"));
            }
        }
        Ok(got)
    }

    /// Multi-key get (or gets) of data keys `dk` and counter keys `nk`, checked against the model.
    fn get(&mut self, dk: &[usize], nk: &[usize], with_cas: bool) -> std::io::Result<BTreeMap<String, Option<u64>>> {
        let mut keys: Vec<String> = dk.iter().map(|&i| self.data_keys[i].clone()).collect();
        keys.extend(nk.iter().map(|&i| self.num_keys[i].clone()));
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = self.conn.get_multi(&refs, with_cas)?;
        self.counts.add("cmd_get", refs.len() as u64);
        self.counts.add("get_hits", got.len() as u64);
        self.counts.add("get_misses", (refs.len() - got.len()) as u64);
        let mut cas = BTreeMap::new();
        for (j, k) in keys.iter().enumerate() {
            let item = got.get(k);
            cas.insert(k.clone(), item.and_then(|i| i.cas));
            let (due, due_flags, slot): (Option<Vec<u8>>, u32, Option<usize>) = if j < dk.len() {
                let d = self.data[dk[j]].clone();
                (d.as_ref().map(|d| d.value.clone()), d.map_or(0, |d| d.flags), Some(dk[j]))
            } else {
                (self.nums[nk[j - dk.len()]].map(|n| n.to_string().into_bytes()), 0, None)
            };
            match (item, due) {
                (None, None) => {}
                (Some(i), None) => {
                    self.fail(format!("get {k}: returned {} for a key that must be absent", show(&i.value)))
                }
                (None, Some(_)) => {
                    self.missing.push(format!(
                        "{k}: acknowledged write not returned by get (client {} op {})",
                        self.id, self.op
                    ));
                    match slot {
                        Some(s) => self.data[s] = None,
                        None => self.nums[nk[j - dk.len()]] = None,
                    }
                }
                (Some(i), Some(v)) => {
                    if i.value != v {
                        self.fail(format!("get {k}: wrong value {}, due {}", show(&i.value), show(&v)));
                    } else if i.flags != due_flags {
                        self.fail(format!("get {k}: flags {}, due {due_flags}", i.flags));
                    } else if with_cas && i.cas.is_none() {
                        self.fail(format!("gets {k}: no cas unique"));
                    }
                }
            }
        }
        Ok(cas)
    }

    fn pick_keys(&mut self, n: usize, total: usize) -> Vec<usize> {
        let mut v: Vec<usize> = Vec::with_capacity(n);
        while v.len() < n.min(total) {
            let k = self.rng.below(total as u64) as usize;
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }

    fn step(&mut self, mix: Mix) -> std::io::Result<()> {
        let r = self.rng.below(100);
        let nd = self.data_keys.len();
        let k = self.rng.below(nd as u64) as usize;
        self.version += 1;
        let ver = self.version;
        let key = self.data_keys[k].clone();
        let present = self.data[k].is_some();
        let fresh = value_for(&key, ver, 200);
        let flags = (ver & 0xffff) as u32;
        let mix_r = if mix == Mix::Simple {
            if r < 60 {
                0
            } else {
                30
            }
        } else {
            r
        };
        match mix_r {
            0..=29 => {
                let n = 1 + self.rng.below(8) as usize;
                let dk = self.pick_keys(n, nd);
                let nn = self.rng.below(3) as usize;
                let nk = if mix == Mix::Full { self.pick_keys(nn, self.num_keys.len()) } else { vec![] };
                let gets = mix == Mix::Full && self.rng.below(4) == 0;
                self.get(&dk, &nk, gets)?;
            }
            30..=49 => {
                self.store("set", k, &fresh, flags, None, Store::Stored)?;
                self.data[k] = Some(Data { value: fresh, flags });
            }
            50..=55 => {
                let want = if present { Store::NotStored } else { Store::Stored };
                if self.store("add", k, &fresh, flags, None, want)? == Store::Stored {
                    self.data[k] = Some(Data { value: fresh, flags });
                }
            }
            56..=61 => {
                let want = if present { Store::Stored } else { Store::NotStored };
                if self.store("replace", k, &fresh, flags, None, want)? == Store::Stored {
                    self.data[k] = Some(Data { value: fresh, flags });
                }
            }
            62..=67 => {
                let suffix = value_for(&key, ver, 24);
                let too_long = self.data[k].as_ref().is_some_and(|d| d.value.len() + suffix.len() > MAX_VALUE);
                if too_long {
                    self.store("set", k, &fresh, flags, None, Store::Stored)?;
                    self.data[k] = Some(Data { value: fresh, flags });
                } else {
                    let want = if present { Store::Stored } else { Store::NotStored };
                    if self.store("append", k, &suffix, 0, None, want)? == Store::Stored {
                        if let Some(d) = self.data[k].as_mut() {
                            d.value.extend_from_slice(&suffix);
                        }
                    }
                }
            }
            68..=75 => {
                let cas = self.get(&[k], &[], true)?.get(&key).copied().flatten();
                let present = self.data[k].is_some();
                match cas {
                    Some(c) if present => {
                        if self.rng.below(5) == 0 {
                            self.store("cas", k, &fresh, flags, Some(c.wrapping_add(1_000_003)), Store::Exists)?;
                        } else if self.store("cas", k, &fresh, flags, Some(c), Store::Stored)? == Store::Stored {
                            self.data[k] = Some(Data { value: fresh, flags });
                        }
                    }
                    _ => {
                        self.store("cas", k, &fresh, flags, Some(1), Store::NotFound)?;
                    }
                }
            }
            76..=85 => {
                let n = self.rng.below(self.num_keys.len() as u64) as usize;
                let delta = 1 + self.rng.below(1000);
                let nkey = self.num_keys[n].clone();
                let got = self.conn.incr("incr", &nkey, delta)?;
                self.counts.add(if got.is_some() { "incr_hits" } else { "incr_misses" }, 1);
                match (got, self.nums[n]) {
                    (Some(g), Some(old)) if g == old + delta => self.nums[n] = Some(g),
                    (Some(g), Some(old)) => self.fail(format!("incr {nkey} {delta}: {g}, due {}", old + delta)),
                    (Some(g), None) => self.fail(format!("incr {nkey}: {g} for a key that must be absent")),
                    (None, Some(_)) => {
                        self.missing
                            .push(format!("{nkey}: incr answered NOT_FOUND (client {} op {})", self.id, self.op));
                        self.nums[n] = None;
                    }
                    (None, None) => {}
                }
            }
            86..=91 => {
                let numeric = self.rng.below(4) == 0;
                let (dkey, was) = if numeric {
                    let n = self.rng.below(self.num_keys.len() as u64) as usize;
                    let w = self.nums[n].is_some();
                    self.nums[n] = None;
                    (self.num_keys[n].clone(), w)
                } else {
                    self.data[k] = None;
                    (key.clone(), present)
                };
                let got = self.conn.delete(&dkey)?;
                self.counts.add(if got { "delete_hits" } else { "delete_misses" }, 1);
                if got && !was {
                    self.fail(format!("delete {dkey}: DELETED for a key that must be absent"));
                } else if !got && was {
                    self.missing.push(format!("{dkey}: delete answered NOT_FOUND (client {} op {})", self.id, self.op));
                }
            }
            _ => {
                let n = self.rng.below(self.num_keys.len() as u64) as usize;
                let start = self.rng.below(1_000_000);
                let v = start.to_string().into_bytes();
                let nkey = self.num_keys[n].clone();
                let got = self.conn.store("set", &nkey, 0, &v, None)?;
                self.counts.add("cmd_set", 1);
                if got != Store::Stored {
                    self.fail(format!("set {nkey}: {got:?}"));
                }
                self.nums[n] = Some(start);
            }
        }
        Ok(())
    }

    /// Reads every key back, 16 at a time.
    fn final_check(&mut self) -> std::io::Result<()> {
        let nd: Vec<usize> = (0..self.data_keys.len()).collect();
        for c in nd.chunks(16) {
            self.get(c, &[], false)?;
        }
        let nn: Vec<usize> = (0..self.num_keys.len()).collect();
        for c in nn.chunks(16) {
            self.get(&[], c, false)?;
        }
        Ok(())
    }
}

/// Runs the clients against `addr`; `stop_early` ends them when set (e.g. the server died).
/// `alive` is polled between operations and says why the run must stop.
pub fn run(addr: SocketAddr, p: &Params, abort: Arc<AtomicBool>) -> Outcome {
    let mut out = Outcome::default();
    let before = match Conn::connect(addr).and_then(|mut c| c.stats()) {
        Ok(s) => s,
        Err(e) => {
            out.failures.push(format!("stats before the run: {e}"));
            return out;
        }
    };
    let nkeys = (p.keys / 8).max(1);
    let handles: Vec<_> = (0..p.clients)
        .map(|id| {
            let p = p.clone();
            let abort = abort.clone();
            std::thread::spawn(move || -> (Counts, Vec<String>, Vec<String>, u64, u64) {
                let conn = match Conn::connect(addr) {
                    Ok(c) => c,
                    Err(e) => return (Counts::default(), vec![format!("client {id}: connect: {e}")], vec![], 0, 0),
                };
                let mut w = Worker {
                    conn,
                    rng: Rng::new(p.seed.wrapping_mul(1000).wrapping_add(id as u64)),
                    data_keys: (0..p.keys).map(|i| format!("v{}:c{id}:k{i}", p.seed)).collect(),
                    data: vec![None; p.keys],
                    num_keys: (0..nkeys).map(|i| format!("v{}:c{id}:n{i}", p.seed)).collect(),
                    nums: vec![None; nkeys],
                    version: 0,
                    counts: Counts::default(),
                    failures: vec![],
                    missing: vec![],
                    id,
                    op: 0,
                };
                let mut ops = 0;
                while w.op < p.ops && !abort.load(Ordering::Relaxed) && w.failures.len() < MAX_FAILURES {
                    if let Err(e) = w.step(p.mix) {
                        w.fail(format!("connection error: {e}"));
                        break;
                    }
                    w.op += 1;
                    ops += 1;
                }
                if w.failures.is_empty() {
                    w.op = p.ops;
                    if let Err(e) = w.final_check() {
                        w.fail(format!("connection error in the final read-back: {e}"));
                    }
                }
                let items =
                    w.data.iter().filter(|d| d.is_some()).count() + w.nums.iter().filter(|n| n.is_some()).count();
                (w.counts, w.failures, w.missing, ops, items as u64)
            })
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok((c, f, m, ops, items)) => {
                for (a, b) in out.counts.0.iter_mut().zip(c.0) {
                    *a += b;
                }
                out.failures.extend(f);
                out.missing.extend(m);
                out.ops += ops;
                out.items_expected += items;
            }
            Err(_) => out.failures.push("a client thread panicked".into()),
        }
    }
    let after = match Conn::connect(addr).and_then(|mut c| c.stats()) {
        Ok(s) => s,
        Err(e) => {
            out.failures.push(format!("stats after the run: {e}"));
            return out;
        }
    };
    let num = |m: &std::collections::HashMap<String, String>, k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
    out.evictions = match (num(&before, "evictions"), num(&after, "evictions")) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => {
            out.failures.push("stats has no evictions counter".into());
            0
        }
    };
    let aborted = abort.load(Ordering::Relaxed);
    let mut table = String::new();
    for (i, name) in COUNTERS.iter().enumerate() {
        let ours = out.counts.0[i];
        match (num(&before, name), num(&after, name)) {
            (Some(a), Some(b)) => {
                let delta = b.wrapping_sub(a);
                if delta != ours && !aborted {
                    let _ = write!(table, " {name}: server {delta}, clients {ours};");
                }
            }
            _ => {
                let _ = write!(table, " {name}: missing from stats;");
            }
        }
    }
    if !table.is_empty() {
        out.failures.push(format!("stats disagree with what the clients did:{table}"));
    }
    if out.failures.is_empty() && out.evictions == 0 {
        match (num(&before, "curr_items"), num(&after, "curr_items")) {
            (Some(a), Some(b)) if b.wrapping_sub(a) != out.items_expected => out.failures.push(format!(
                "curr_items grew by {}, the clients hold {} keys",
                b.wrapping_sub(a),
                out.items_expected
            )),
            (Some(_), Some(_)) => {}
            _ => out.failures.push("stats has no curr_items".into()),
        }
    }
    out
}
