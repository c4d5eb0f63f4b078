#!/usr/bin/env python3
"""Kernel matrix: runs the libs/rseq tests and the harness inside qemu (TCG) guests booted on
Debian's 6.1, 6.12 and 7.3 cloud kernels, with true vCPU hot-add through QMP and, with --full,
16 and 32 vCPUs. Python 3 standard library only. See ci/vm/README.md.

Per kernel, one boot with `-smp 2,maxcpus=8`:
  1. every libs/rseq test binary (`--test-threads=2`);
  2. a harness run, index cpu_id, real hotplug inside the guest;
  3. a harness run, index mm_cid, during which the host adds vCPUs one by one (QMP device_add),
     the guest brings each online and then takes the added CPUs offline and online again.
With --full, per kernel, one boot each with `-smp 16` and `-smp 32`: harness runs with as many
threads as CPUs, cpu_id and mm_cid.

With --arch aarch64 (or all), the same series on arm64 (Debian's cloud-arm64 kernels in
qemu-system-aarch64 -M virt), with a payload cross-built for aarch64-unknown-linux-gnu: one
`-smp 2` boot per kernel, the rseq tests and harness runs in the three registration modes and
both index modes, single-stepped where restarts are needed, and rseq restarts required (no
hot-add: QEMU 7.2's virt machine has none).

Exit status: 0 when every kernel passed, 1 when one failed, 2 when the run could not start
(a kernel package that could not be fetched, a build that failed, no qemu).
"""

import argparse
import base64
import contextlib
import fcntl
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.dont_write_bytecode = True  # no __pycache__ in the clone
sys.path.insert(0, str(HERE))
import acpi  # noqa: E402

DEBIAN = os.environ.get("RSEQ_VM_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY = os.environ.get("RSEQ_VM_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Kernel:
    def __init__(self, series, pattern, note):
        self.series = series
        self.pattern = re.compile(pattern)
        self.note = note


# Newest package of each series in the private apt configuration (bookworm-security and
# trixie-backports). The 7.3 "linux-image-…" name is a meta package: the image is in
# "linux-binary-…".
KERNELS = {
    "6.1": Kernel("6.1", r"^linux-image-6\.1\.0-\d+-cloud-amd64$", "no mm_cid (rseq feature size 0)"),
    "6.12": Kernel("6.12", r"^linux-image-6\.12\.\d+\+deb12-cloud-amd64$", "LTS, mm_cid (feature size 28)"),
    "7.3": Kernel("7.3", r"^linux-binary-7\.3\.\d+\+deb13-cloud-amd64$", "reworked rseq of 6.19+"),
}

# The same three series for arm64: bookworm-security (6.1; 6.12 as linux-image-…-cloud-arm64 or
# its -unsigned twin) and trixie-backports (7.3).
KERNELS_ARM64 = {
    "6.1": Kernel("6.1", r"^linux-image-6\.1\.0-\d+-cloud-arm64(-unsigned)?$", "no mm_cid (rseq feature size 0)"),
    "6.12": Kernel("6.12", r"^linux-image-6\.12\.\d+\+deb12-cloud-arm64(-unsigned)?$",
                   "LTS, mm_cid (feature size 28)"),
    "7.3": Kernel("7.3", r"^linux-binary-7\.3\.\d+\+deb13-cloud-arm64$", "reworked rseq of 6.19+"),
}


class Arch:
    """What differs between the two guest architectures: kernel packages, qemu, the payload's
    cross build, the guest's serial lines."""

    def __init__(self, name, deb, kernels, qemu, machine, console, data_dev, target=None, cc="cc",
                 tool_prefix="", sysroot=None, hotadd=True):
        self.name = name
        self.deb = deb  # Debian architecture
        self.kernels = kernels
        self.qemu = qemu
        self.machine = machine  # qemu arguments before the rest
        self.console = console  # the guest's console device (people)
        self.data_dev = data_dev  # qemu arguments of the data channel's device (chardev "data")
        self.target = target  # Rust target triple of a cross build, None for the host's
        self.cc = cc
        self.tool_prefix = tool_prefix  # binutils prefix (objcopy, readelf)
        self.sysroot = sysroot  # where a cross build's loader and libraries are on the host
        self.hotadd = hotadd  # vCPU hot-add through QMP (QEMU 7.2's arm "virt" machine has none)

    def env(self):
        """cargo's environment: the cross linker comes from the environment, so nothing in the
        repository changes the host build."""
        e = dict(os.environ)
        if self.target:
            t = self.target.upper().replace("-", "_")
            e[f"CARGO_TARGET_{t}_LINKER"] = self.cc
            e.setdefault(f"CC_{self.target.replace('-', '_')}", self.cc)
        return e

    def workdir(self, work: Path):
        """x86_64 keeps the layout of the single-architecture runner (target/vm/<kernel>)."""
        return work if self.name == "x86_64" else work / self.name


ARCHES = {
    "x86_64": Arch("x86_64", "amd64", KERNELS, "qemu-system-x86_64", [], "ttyS0",
                   ["-device", "isa-serial,chardev=data"]),
    # -M virt has one PL011 (the console); the data channel is a virtio serial port named "data".
    # pauth-impdef: pointer authentication stays on (Debian's kernels sign their return
    # addresses) with QEMU's cheap implementation-defined algorithm instead of QARMA, which
    # under TCG costs much time on every kernel function call.
    "aarch64": Arch("aarch64", "arm64", KERNELS_ARM64, "qemu-system-aarch64",
                    ["-M", "virt", "-cpu", "max,pauth-impdef=on"],
                    "ttyAMA0", ["-device", "virtio-serial-pci", "-device", "virtserialport,chardev=data,name=data"],
                    target="aarch64-unknown-linux-gnu", cc="aarch64-linux-gnu-gcc",
                    tool_prefix="aarch64-linux-gnu-", sysroot=Path("/usr/aarch64-linux-gnu"), hotadd=False),
}

ATTEMPTS = 3
# "single", "multi", or "auto": single-threaded TCG for boots of at most 8 vCPUs, multi-threaded
# for the 16/32-vCPU boots (see --tcg-thread).
TCG_THREAD = "auto"


# Extra arguments for every harness run (--harness-arg).
HARNESS_ARGS = []
# --guest-libc: file name -> path of another glibc for the guest (None: the host's).
GUEST_LIBC = None


def tcg_thread_for(maxcpus):
    if TCG_THREAD != "auto":
        return TCG_THREAD
    return "single" if maxcpus <= 8 else "multi"
BACKOFF = (5, 15)


class Fatal(Exception):
    """The run cannot go on (exit status 2)."""


def log(msg):
    print(msg, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def retry(what, fn):
    """fn() up to ATTEMPTS times with a growing pause; re-raises the last error."""
    for i in range(ATTEMPTS):
        try:
            return fn()
        except (subprocess.CalledProcessError, OSError) as e:
            err = e
            if i + 1 < ATTEMPTS:
                pause = BACKOFF[min(i, len(BACKOFF) - 1)]
                log(f"  {what}: attempt {i + 1}/{ATTEMPTS} failed ({short_err(e)}); again in {pause} s")
                time.sleep(pause)
    raise err


def short_err(e):
    if isinstance(e, subprocess.CalledProcessError):
        tail = (e.stderr or b"")
        if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
        tail = " | ".join(tail.strip().splitlines()[-2:])
        return f"exit {e.returncode}{': ' + tail if tail else ''}"
    return str(e)


# --------------------------------------------------------------------------------------------
# Kernel packages: fetched with apt-get download through a private apt configuration, unpacked
# with dpkg-deb, never installed. Cached (vmlinuz + config) under CACHE/kernels.


class KernelCache:
    def __init__(self, cache: Path, deb_arch="amd64"):
        self.cache = cache
        self.arch = deb_arch
        # amd64 keeps the directory of the single-architecture runner.
        self.apt = cache / ("apt" if deb_arch == "amd64" else f"apt-{deb_arch}")
        self.kdir = cache / "kernels"
        self.updated = None  # None: not tried; True/False: apt-get update result
        self.update_error = ""

    def apt_opts(self):
        a = self.apt
        return [
            "-o", f"Dir::Etc::SourceList={a}/sources.list",
            "-o", f"Dir::Etc::SourceParts={a}/sources.list.d",
            "-o", f"Dir::Etc::Preferences={a}/preferences",
            "-o", f"Dir::Etc::PreferencesParts={a}/preferences.d",
            "-o", f"Dir::State={a}/state",
            "-o", f"Dir::State::Lists={a}/lists",
            "-o", f"Dir::State::status={a}/status",
            "-o", f"Dir::Cache={a}/cache",
            "-o", "Debug::NoLocking=1",
            "-o", f"APT::Architecture={self.arch}",
            "-o", f"APT::Architectures::={self.arch}",
            "-o", "Acquire::Languages=none",
            "-o", "Acquire::Retries=2",
            "-o", "Acquire::http::Timeout=30",
        ]

    def setup(self):
        a = self.apt
        for d in ("sources.list.d", "preferences.d", "state", "lists/partial", "cache/archives/partial"):
            (a / d).mkdir(parents=True, exist_ok=True)
        (a / "status").touch()
        (a / "preferences").touch()
        extra = ""
        if self.arch != "amd64":
            # busybox-static for the guest's architecture (the host's busybox is amd64)
            extra = f"deb [signed-by={KEYRING}] {DEBIAN} bookworm main\n"
        (a / "sources.list").write_text(
            f"deb [signed-by={KEYRING}] {DEBIAN_SECURITY} bookworm-security main\n"
            f"deb [signed-by={KEYRING}] {DEBIAN} trixie-backports main\n" + extra
        )

    def update(self):
        if self.updated is not None:
            return self.updated
        self.setup()
        log(f"kernels: apt-get update (private configuration for {self.arch}: bookworm-security, "
            f"trixie-backports{', bookworm' if self.arch != 'amd64' else ''})")
        try:
            retry("apt-get update", lambda: run(
                ["apt-get", *self.apt_opts(), "--error-on=any", "-qq", "update"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            self.updated = True
        except (subprocess.CalledProcessError, OSError) as e:
            self.updated = False
            self.update_error = short_err(e)
        return self.updated

    def newest(self, k: Kernel):
        out = subprocess.run(["apt-cache", *self.apt_opts(), "pkgnames", "linux-"],
                             capture_output=True, text=True, check=True).stdout
        names = [n for n in out.split() if k.pattern.match(n)]
        if not names:
            return None
        return max(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])

    def cached(self, k: Kernel):
        """Newest cached kernel of the series, or None."""
        best = None
        for info in self.kdir.glob("*/info.json"):
            try:
                d = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            if d.get("series") == k.series and d.get("arch", "amd64") == self.arch and \
                    (info.parent / "vmlinuz").is_file():
                key = [int(x) for x in re.findall(r"\d+", d["package"] + "_" + d["version"])]
                if best is None or key > best[0]:
                    best = (key, d, info.parent)
        return best

    def get(self, k: Kernel):
        """Path of vmlinuz and the package facts; raises Fatal naming the package."""
        self.kdir.mkdir(parents=True, exist_ok=True)
        with open(self.cache / "lock", "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            return self._get(k)

    @staticmethod
    def _use_cached(fallback, why):
        """The newest cached kernel of the series, with a warning saying why it is used."""
        _, d, p = fallback
        log(f"  WARNING: {why}; using the cached {d['package']} {d['version']}")
        return p / "vmlinuz", d

    def _get(self, k: Kernel):
        fallback = self.cached(k)
        if not self.update():
            if fallback:
                return self._use_cached(fallback, f"apt-get update failed ({self.update_error})")
            raise Fatal(f"kernel {k.series}: cannot fetch the package index for "
                        f"{k.pattern.pattern} ({self.update_error}) and nothing is cached")
        name = self.newest(k)
        if name is None:
            if fallback:
                return self._use_cached(fallback, f"no package matches {k.pattern.pattern} any more")
            raise Fatal(f"kernel {k.series}: no package matching {k.pattern.pattern} in "
                        "bookworm-security or trixie-backports")
        uris = subprocess.run(["apt-get", *self.apt_opts(), "download", "--print-uris", name],
                              capture_output=True, text=True)
        m = re.search(r"'(\S+)' (\S+\.deb) (\d+) (\S+)", uris.stdout)
        if uris.returncode != 0 or not m:
            raise Fatal(f"kernel {k.series}: cannot locate package {name}: {uris.stderr.strip()}")
        url, debname, size = m.group(1), m.group(2), int(m.group(3))
        version = debname.split("_")[1].replace("%3a", ":")
        dest = self.kdir / debname[: -len(".deb")]
        if (dest / "vmlinuz").is_file() and (dest / "info.json").is_file():
            d = json.loads((dest / "info.json").read_text())
            # arm64 entries need the virtio modules (kept since aarch64 6.1 needed them)
            if self.arch == "amd64" or "modules" in d:
                return dest / "vmlinuz", d
        log(f"kernels: downloading {name} {version} ({size / 1e6:.0f} MB)")
        tmp = self.kdir / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        t0 = time.time()
        try:
            retry(f"apt-get download {name}", lambda: run(
                ["apt-get", *self.apt_opts(), "-qq", "download", name],
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        except (subprocess.CalledProcessError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if fallback:
                return self._use_cached(fallback, f"cannot download {name} {version} ({short_err(e)})")
            raise Fatal(f"kernel {k.series}: cannot download package {name} {version} from {url} "
                        f"after {ATTEMPTS} attempts: {short_err(e)}")
        deb = next(tmp.glob("*.deb"), None)
        if deb is None:
            raise Fatal(f"kernel {k.series}: apt-get download {name} left no .deb in {tmp}")
        part = self.kdir / (dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        release = extract_kernel(deb, part, modules=self.arch != "amd64")
        if release is None:
            raise Fatal(f"kernel {k.series}: {debname} holds no vmlinuz (boot/vmlinuz-* or "
                        "usr/lib/modules/*/vmlinuz)")
        info = {"series": k.series, "arch": self.arch, "package": name, "version": version, "release": release,
                "deb": debname, "url": url, "fetched": time.strftime("%Y-%m-%d %H:%M:%S")}
        if self.arch != "amd64":
            info["modules"] = sorted(m.name for m in (part / "modules").glob("*.ko"))
        (part / "info.json").write_text(json.dumps(info, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"  {release}: {time.time() - t0:.1f} s")
        return dest / "vmlinuz", info


    def busybox(self):
        """A static busybox for the guest's architecture, from Debian's busybox-static (cached
        in CACHE/tools/busybox-<arch>; the host's own busybox serves amd64)."""
        out = self.cache / "tools" / f"busybox-{self.arch}"
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache / "lock", "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            if out.is_file():
                return out
            if not self.update():
                raise Fatal(f"busybox-static:{self.arch}: cannot fetch the package index ({self.update_error})")
            tmp = self.cache / "tools" / f"tmp-{self.arch}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            log(f"tools: downloading busybox-static for {self.arch}")
            try:
                retry("apt-get download busybox-static", lambda: run(
                    ["apt-get", *self.apt_opts(), "-qq", "download", "busybox-static"],
                    cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            except (subprocess.CalledProcessError, OSError) as e:
                raise Fatal(f"cannot download busybox-static for {self.arch} after {ATTEMPTS} attempts: "
                            f"{short_err(e)}")
            deb = next(tmp.glob("*.deb"), None)
            data = deb and extract_member(deb, "bin/busybox")
            if not data:
                raise Fatal(f"busybox-static for {self.arch}: no bin/busybox in {deb}")
            part = out.with_suffix(".part")
            part.write_bytes(data)
            part.chmod(0o755)
            part.rename(out)
            shutil.rmtree(tmp, ignore_errors=True)
            return out


def extract_member(deb: Path, name: str):
    """The contents of one file of a .deb's data, or None."""
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    data = None
    with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
        for m in tf:
            if m.isfile() and m.name.lstrip("./") == name:
                with tf.extractfile(m) as src:
                    data = src.read()
    p.stdout.close()
    p.wait()
    return data


# Modules the guest loads when the kernel has them as modules (6.1's arm64 cloud kernel: the
# data channel's virtio serial port needs virtio_pci and virtio_console), with their
# dependencies from each module's .modinfo.
GUEST_MODULES = ("virtio_pci", "virtio_console")


def extract_kernel(deb: Path, dest: Path, modules=False):
    """Copies the kernel image (and its config when the package has it) out of a kernel .deb
    into dest/vmlinuz and dest/config; with modules, also the virtio modules (uncompressed
    ones only) into dest/modules/. Returns the kernel release or None."""
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    release = None
    if modules:
        (dest / "modules").mkdir()
    with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            n = m.name.lstrip("./")
            mod = re.fullmatch(r"(?:usr/)?lib/modules/[^/]+/(kernel/drivers/(?:virtio|char)/virtio[^/]*\.ko)",
                               n)
            if modules and mod:
                with tf.extractfile(m) as src, open(dest / "modules" / os.path.basename(n), "wb") as out:
                    shutil.copyfileobj(src, out)
                continue
            mb = re.fullmatch(r"boot/(vmlinuz|config)-(.+)", n)
            mm = re.fullmatch(r"usr/lib/modules/([^/]+)/(vmlinuz|config)", n)
            if mb:
                kind, rel = mb.group(1), mb.group(2)
            elif mm:
                kind, rel = mm.group(2), mm.group(1)
            else:
                continue
            with tf.extractfile(m) as src, open(dest / kind, "wb") as out:
                shutil.copyfileobj(src, out)
            if kind == "vmlinuz":
                release = rel
    p.stdout.close()
    p.wait()
    return release if p.returncode == 0 else None


# --------------------------------------------------------------------------------------------
# Payload: the harness, every project library (cdylibs under libs/), the harness plugins and
# the libs/rseq test binaries, with the loader and the shared libraries they use.


class Payload:
    def __init__(self):
        self.harness = None
        self.libs = []  # project cdylibs
        self.plugins = []
        self.tests = []  # (name, path)
        self.extras = []  # (name, path): more programs under /payload/bin (--slice)


def cargo_json(args, env=None):
    p = subprocess.run(["cargo", *args, "--message-format=json"], cwd=ROOT, stdout=subprocess.PIPE, env=env)
    if p.returncode != 0:
        raise Fatal(f"cargo {' '.join(args)} failed")
    return [json.loads(line) for line in p.stdout.decode().splitlines() if line.startswith("{")]


def build_payload(profile, work: Path, arch: Arch = None, slice_hold=False) -> Payload:
    arch = arch or ARCHES["x86_64"]
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                                     cwd=ROOT, capture_output=True, check=True).stdout)
    libpkgs = []
    for p in meta["packages"]:
        if Path(p["manifest_path"]).resolve().is_relative_to(ROOT / "libs") and any(
                "cdylib" in t["kind"] for t in p["targets"]):
            libpkgs.append(p["name"])
    prof = ["--release"] if profile == "release" else []
    if arch.target:
        prof += ["--target", arch.target]
    env = arch.env()
    pkgs = [a for n in ["harness", *libpkgs] for a in ("-p", n)]
    lk = f" (linker {arch.cc})" if arch.target else ""
    log(f"build: cargo build {' '.join(prof + pkgs)}{lk}")
    pl = Payload()
    for m in cargo_json(["build", *prof, *pkgs], env):
        if m.get("reason") != "compiler-artifact":
            continue
        if m["target"]["name"] == "harness" and m.get("executable"):
            pl.harness = Path(m["executable"])
        elif "cdylib" in m["target"]["kind"] and m["package_id"].split("#")[0].find("/libs/") >= 0:
            pl.libs += [Path(f) for f in m["filenames"] if f.endswith(".so")]
    # The harness drives the kinds its registry lists (participants/registry.rs); other
    # cdylibs (the drop-in malloc) stay out of the guest.
    known = set(re.findall(r'default_file:\s*Some\("([^"]+)"\)',
                           (ROOT / "harness/src/participants/registry.rs").read_text()))
    skipped = [p.name for p in pl.libs if p.name not in known]
    pl.libs = [p for p in pl.libs if p.name in known]
    if skipped:
        log(f"build: no harness adapter for {', '.join(sorted(skipped))}: left out of the guest runs")
    log(f"build: cargo test {' '.join(prof)} -p rseq --no-run")
    for m in cargo_json(["test", *prof, "-p", "rseq", "--no-run"], env):
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
            pl.tests.append((m["target"]["name"], Path(m["executable"])))
    if not pl.harness or not pl.tests:
        raise Fatal("build: the harness or the rseq test binaries were not produced")
    if slice_hold:
        log(f"build: cargo build {' '.join(prof)} -p locks --example slice_hold")
        for m in cargo_json(["build", *prof, "-p", "locks", "--example", "slice_hold"], env):
            if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "slice_hold":
                pl.extras.append(("slice_hold", Path(m["executable"])))
        if not pl.extras:
            raise Fatal("build: the slice_hold example was not produced")
    plugdir = ROOT / "harness" / "plugins"
    if (plugdir / "Makefile").is_file():
        if not shutil.which(arch.cc) or not shutil.which("make"):
            raise Fatal(f"build: the harness plugins need {arch.cc} and make")
        out = arch.workdir(work) / "plugins"
        log(f"build: make -C harness/plugins CC={arch.cc} OUT={out}")
        run(["make", "-s", "-C", str(plugdir), f"CC={arch.cc}", f"OUT={out}"])
        pl.plugins = sorted(out.glob("*.so"))
        if not pl.plugins:
            raise Fatal(f"build: make -C harness/plugins produced no plugin in {out}")
    return pl


def ldd(path: Path):
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    deps = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            deps.append(m.group(1))
    return deps


def elf_deps(path: Path, arch: Arch):
    """(host path, guest path) of the loader and every shared library a binary needs, found
    under the cross sysroot (ldd cannot run a foreign binary). Libraries go where the guest's
    loader looks by default (/lib/<triple>/), the loader where PT_INTERP says."""
    if arch.sysroot is None:
        return [(d, d) for d in ldd(path)]
    lib = arch.sysroot / "lib"
    triple = arch.tool_prefix.rstrip("-")
    out, todo, seen = [], [path], set()
    while todo:
        f = todo.pop()
        text = subprocess.run([arch.tool_prefix + "readelf", "-d", "-l", str(f)], capture_output=True,
                              text=True).stdout
        m = re.search(r"Requesting program interpreter: (\S+)\]", text)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            out.append((str(lib / os.path.basename(m.group(1))), m.group(1)))
        for n in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text):
            if n in seen or n.startswith("ld-linux"):  # the loader: in place at its PT_INTERP path
                continue
            seen.add(n)
            src = lib / n
            if not src.exists():
                raise Fatal(f"build: {f.name} needs {n}, not found in {lib} (libc6-arm64-cross?)")
            out.append((str(src), f"/lib/{triple}/{n}"))
            todo.append(src)
    return out


class Cpio:
    """newc archive writer."""

    def __init__(self, f):
        self.f = f
        self.ino = 1
        self.dirs = set()

    def _entry(self, name, mode, data=b"", nlink=1):
        name = name.lstrip("/")
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0))
        self.ino += 1
        buf = hdr.encode() + name.encode() + b"\0"
        buf += b"\0" * (-len(buf) % 4)
        self.f.write(buf)
        self.f.write(data)
        self.f.write(b"\0" * (-len(data) % 4))

    def mkdir(self, path):
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, 0o040755, nlink=2)

    def file(self, path, data: bytes, mode=0o644):
        parent = os.path.dirname(path.lstrip("/"))
        if parent:
            self.mkdir(parent)
        self._entry(path, 0o100000 | mode, data)

    def symlink(self, path, target):
        if os.path.dirname(path.lstrip("/")):
            self.mkdir(os.path.dirname(path.lstrip("/")))
        self._entry(path, 0o120777, target.encode())

    def close(self):
        self._entry("TRAILER!!!", 0)
        self.f.write(b"\0" * (-self.f.tell() % 512))


def stripped(path: Path, stage: Path, objcopy="objcopy") -> bytes:
    """The file without its debug sections (the payload is read into guest RAM)."""
    if shutil.which(objcopy):
        dst = stage / path.name
        if subprocess.run([objcopy, "--strip-debug", str(path), str(dst)]).returncode == 0:
            return dst.read_bytes()
    return path.read_bytes()


def module_depends(ko: Path):
    """The `depends=` of a module's .modinfo (Debian's packages ship no modules.dep: depmod
    writes it at installation)."""
    for field in ko.read_bytes().split(b"\0"):
        if field.startswith(b"depends="):
            return [d + ".ko" for d in field[len(b"depends="):].decode().split(",") if d]
    return []


def module_order(moddir: Path, wanted=GUEST_MODULES):
    """The .ko files to insmod, in order (dependencies first), for the wanted modules that the
    kernel has as modules; [] where they are built in (no .ko of that name)."""
    order = []

    def add(ko, chain=()):
        if ko in order:
            return
        if not (moddir / ko).is_file():
            raise Fatal(f"module {ko} (needed by {' <- '.join(chain) or 'the guest'}) is not in {moddir}")
        for d in module_depends(moddir / ko):
            add(d, (ko,) + chain)
        order.append(ko)

    for w in wanted:
        if (moddir / f"{w}.ko").is_file():
            add(f"{w}.ko")
    return order


def build_initramfs(pl: Payload, work: Path, arch: Arch = None, busybox=None) -> Path:
    """The base initramfs (busybox, /init, payload, loader and libraries). busybox: a static
    busybox for the guest (default: the host's)."""
    arch = arch or ARCHES["x86_64"]
    work = arch.workdir(work)
    stage = work / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    if busybox is None:
        busybox = shutil.which("busybox")
        if not busybox or "not a dynamic" not in subprocess.run(["ldd", busybox], capture_output=True,
                                                                text=True).stdout + subprocess.run(
                ["ldd", busybox], capture_output=True, text=True).stderr:
            raise Fatal("a static busybox is needed (apt-get install busybox-static)")
    objcopy = arch.tool_prefix + "objcopy"
    out = work / "payload.cpio"
    elfs = []
    with open(out, "wb") as f:
        c = Cpio(f)
        for d in ("dev", "proc", "sys", "tmp", "bin", "sbin", "usr/bin", "usr/sbin", "payload/bin",
                  "payload/lib", "payload/plugins", "payload/tests"):
            c.mkdir(d)
        c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        c.symlink("bin/sh", "busybox")
        c.file("init", (HERE / "guest" / "init.sh").read_bytes(), 0o755)
        c.file("plan.sh", b"echo 'no plan'\n")
        c.file("payload/bin/harness", stripped(pl.harness, stage, objcopy), 0o755)
        elfs.append(pl.harness)
        for lib in pl.libs:
            c.file(f"payload/lib/{lib.name}", stripped(lib, stage, objcopy), 0o755)
            elfs.append(lib)
        for p in pl.plugins:
            c.file(f"payload/plugins/{p.name}", stripped(p, stage, objcopy), 0o755)
            elfs.append(p)
        for name, t in pl.tests:
            c.file(f"payload/tests/{name}", stripped(t, stage, objcopy), 0o755)
            elfs.append(t)
        for name, t in pl.extras:
            c.file(f"payload/bin/{name}", stripped(t, stage, objcopy), 0o755)
            elfs.append(t)
        pairs = sorted({pair for e in elfs for pair in elf_deps(e, arch)}, key=lambda p: p[1])
        deps = [g for _, g in pairs]
        for src, dst in pairs:
            c.file(dst, guest_libc_file(src).read_bytes(), 0o755)
        c.close()
    shutil.rmtree(stage, ignore_errors=True)
    log(f"initramfs: {out.stat().st_size / 1e6:.1f} MB ({len(elfs)} payload files; "
        f"{', '.join(os.path.basename(d) for d in deps)})")
    return out


def guest_libc_file(src) -> Path:
    """The file the guest gets for the host library `src`: the same-named file of
    --guest-libc when it has one (another glibc for the guest's binaries), else the host's."""
    if GUEST_LIBC is not None:
        alt = GUEST_LIBC.get(os.path.basename(src))
        if alt is not None:
            return alt
    return Path(src).resolve()


def guest_libc_files(d: Path):
    """Every shared object under d (an unpacked libc6 .deb or a sysroot), by file name."""
    found = {}
    for p in sorted(d.rglob("*.so*")):
        if p.is_file() and not p.is_symlink():
            found.setdefault(p.name, p.resolve())
    for p in sorted(d.rglob("*.so*")):
        if p.is_symlink() and p.resolve().is_file():
            found.setdefault(p.name, p.resolve())
    return found


def small_cpio(files) -> bytes:
    import io
    b = io.BytesIO()
    c = Cpio(b)
    for path, data, mode in files:
        c.file(path, data, mode)
    c.close()
    return b.getvalue()


# --------------------------------------------------------------------------------------------
# QEMU and QMP


def connect_unix(path: Path, timeout):
    deadline = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.05)


class Qmp:
    def __init__(self, path: Path, timeout=30):
        self.s = connect_unix(path, timeout)
        self.s.settimeout(30)
        self.lock = threading.Lock()
        self.buf = b""
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise OSError("QMP connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        with self.lock:
            self.s.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                r = self._read()
                if "event" in r:
                    continue
                if "error" in r:
                    raise RuntimeError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
                return r.get("return")

    def close(self):
        with contextlib.suppress(OSError):
            self.s.close()


class Guest:
    """One boot: qemu with the console and the data channel in files, QMP on a socket."""

    def __init__(self, name, vmlinuz, initrd, smp, maxcpus, mem, rundir: Path, verbose=False, arch=None):
        arch = arch or ARCHES["x86_64"]
        self.name = name
        self.dir = rundir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console = self.dir / "console.log"
        self.data = self.dir / "data.log"
        self.sock = self.dir / "qmp.sock"
        self.dsock = self.dir / "data.sock"
        for p in (self.console, self.data, self.sock, self.dsock):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.cmd = [
            arch.qemu, *arch.machine, "-accel", f"tcg,thread={tcg_thread_for(maxcpus)}", "-m", mem,
            "-smp", f"{smp},maxcpus={maxcpus}" if maxcpus != smp else str(smp),
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", f"console={arch.console} panic=-1 loglevel=5",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console}",
            # the data channel (ttyS1 on x86_64, a virtio serial port on aarch64): both ways,
            # on a socket
            "-chardev", f"socket,id=data,path={self.dsock},server=on,wait=off",
            *arch.data_dev,
            "-qmp", f"unix:{self.sock},server=on,wait=off",
        ]
        self.verbose = verbose
        self.proc = None
        self.qmp = None
        self.chan = None
        self.t0 = None

    def start(self):
        (self.dir / "qemu-cmd.txt").write_text(shlex.join(self.cmd) + "\n")
        self.t0 = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.dir / "qemu.out", "wb"), stderr=subprocess.STDOUT)
        self.qmp = Qmp(self.sock)
        self.chan = connect_unix(self.dsock, 30)
        self.chan.setblocking(False)

    def read_data(self):
        """Bytes the guest sent on the data channel since the last call (b"" if none)."""
        out = b""
        while self.chan:
            try:
                d = self.chan.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                d = b""
            if not d:
                self.chan.close()
                self.chan = None
                break
            out += d
        if out:
            with open(self.data, "ab") as f:
                f.write(out)
        return out

    def reply(self, line: str):
        if self.chan:
            with contextlib.suppress(OSError):
                self.chan.setblocking(True)
                self.chan.sendall(line.encode() + b"\n")
                self.chan.setblocking(False)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.qmp:
            self.qmp.close()
        if self.chan:
            self.chan.close()
            self.chan = None


def tail(path: Path, n=40):
    try:
        lines = path.read_bytes().decode(errors="replace").replace("\r", "").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class DataReader:
    """Incremental parser of the guest's data channel."""

    def __init__(self):
        self.partial = b""
        self.records = []
        self.files = {}
        self._file = None
        self._chunks = []

    def feed(self, data: bytes):
        new = []
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").strip("\r")
            if line.startswith("@@ "):
                rec = line[3:]
                if rec.startswith("FILE "):
                    self._file, self._chunks = rec[5:], []
                elif rec.startswith("ENDFILE "):
                    blob = "".join(self._chunks)
                    try:
                        self.files[self._file] = gzip.decompress(base64.b64decode(blob)) if blob else b""
                    except (ValueError, OSError, EOFError) as e:
                        self.files[self._file] = f"(undecodable: {e})".encode()
                    self._file = None
                else:
                    self.records.append((time.time(), rec))
                    new.append(rec)
            elif self._file is not None:
                self._chunks.append(line.strip())
        return new


class ConsoleStreamer:
    def __init__(self, path: Path, prefix):
        self.path, self.prefix, self.pos, self.partial = path, prefix, 0, b""

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            print(f"{self.prefix} {raw.decode(errors='replace').rstrip()}", flush=True)


def hot_add(guest: Guest, n, interval, events):
    """Adds n vCPUs through QMP, one every `interval` seconds (runs in a thread)."""
    try:
        slots = guest.qmp.cmd("query-hotpluggable-cpus")
        free = [s for s in slots if not s.get("qom-path")]
        free.sort(key=lambda s: tuple(s["props"].get(k, 0) for k in ("socket-id", "core-id", "thread-id")))
        events.append((time.time(), f"{len(free)} free vCPU slots"))
        for i, s in enumerate(free[:n]):
            args = {"driver": s["type"], "id": f"hotcpu{i}", **s["props"]}
            try:
                guest.qmp.cmd("device_add", **args)
                events.append((time.time(), f"device_add {json.dumps(s['props'], sort_keys=True)} ok"))
            except (RuntimeError, OSError) as e:
                events.append((time.time(), f"device_add {json.dumps(s['props'], sort_keys=True)} FAILED: {e}"))
            time.sleep(interval)
    except (RuntimeError, OSError) as e:
        events.append((time.time(), f"QMP FAILED: {e}"))


def answer(g: Guest, question, res):
    """The host's answer to an ASK record of the guest."""
    if question in ("singlestep on", "singlestep off"):
        try:
            g.qmp.cmd("human-monitor-command", **{"command-line": question})
            res.setdefault("host_events", []).append((time.time(), question))
            return "OK " + question
        except (RuntimeError, OSError) as e:
            return f"ERR {question}: {e}"
    if question == "bye":
        return "OK bye"
    return f"ERR unknown question {question}"


def boot(name, vmlinuz, initrd, smp, maxcpus, mem, rundir, timeout, verbose, hotadd_interval=2.0, arch=None):
    """Boots, follows the data channel, does the hot-add when asked; returns the boot's facts."""
    g = Guest(name, vmlinuz, initrd, smp, maxcpus, mem, rundir, verbose, arch)
    dr = DataReader()
    cs = ConsoleStreamer(g.console, f"[{name}]") if verbose else None
    res = {"name": name, "smp": smp, "maxcpus": maxcpus, "hotadd_events": [], "done": False}
    booted_at = None
    done_at = None
    adder = None
    status = "timeout"
    try:
        g.start()
        while True:
            for rec in dr.feed(g.read_data()):
                if rec.startswith("ASK "):
                    g.reply(answer(g, rec[4:], res))
                elif rec == "BOOTED" and booted_at is None:
                    booted_at = time.time()
                elif rec.startswith("HOTADD READY"):
                    n = int(rec.split()[2])
                    adder = threading.Thread(target=hot_add, args=(g, n, hotadd_interval, res["hotadd_events"]),
                                             daemon=True)
                    adder.start()
                elif rec == "DONE":
                    res["done"] = True
                    done_at = time.time()
            if cs:
                cs.poll()
            if g.proc.poll() is not None:
                status = "exited"
                break
            if time.time() - g.t0 > timeout:
                status = "timeout"
                break
            if done_at and time.time() - done_at > 15:
                status = "no power-off"  # the plan finished; the guest did not switch itself off
                break
            time.sleep(0.2)
    finally:
        if adder:
            adder.join(timeout=10)
        dr.feed(g.read_data())
        g.stop()
        if cs:
            cs.poll()
    res["status"] = status
    res["wall_s"] = round(time.time() - g.t0, 1)
    res["boot_s"] = round(booted_at - g.t0, 1) if booted_at else None
    res["records"] = [r for _, r in dr.records]
    res["record_times"] = [round(t - g.t0, 1) for t, _ in dr.records]
    res["files"] = dr.files
    res["hotadd_events"] = [(round(t - g.t0, 1), e) for t, e in res["hotadd_events"]]
    res["console_tail"] = tail(g.console, 60)
    res["console_full"] = tail(g.console, 100000)
    return res


# --------------------------------------------------------------------------------------------
# ACPI override for the hot-add layout


def qemu_version():
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def acpi_override(cache: Path, work: Path, base: Path, vmlinuz, smp, maxcpus, mem, verbose):
    """The early cpio with the patched FACP and APIC for this layout (cached per layout). The
    tables hold physical addresses near the top of guest RAM (FACS, DSDT), so the memory size is
    part of the layout."""
    key = f"qemu-{qemu_version()}-pc-smp{smp}-max{maxcpus}-m{mem}"
    d = cache / "acpi" / key
    out = d / "override.cpio"
    if out.is_file():
        return out, json.loads((d / "info.json").read_text())
    log(f"acpi: first boot to read QEMU's tables for -smp {smp},maxcpus={maxcpus}")
    rundir = work / "acpi-dump"
    initrd = rundir / "initrd"
    rundir.mkdir(parents=True, exist_ok=True)
    with open(initrd, "wb") as f:
        with open(base, "rb") as b:
            shutil.copyfileobj(b, f)
        f.write(small_cpio([("plan.sh", b"dump_acpi\n", 0o644)]))
    r = boot("acpi-dump", vmlinuz, initrd, smp, maxcpus, mem, rundir, 120, verbose)
    fadt, madt = r["files"].get("acpi.FACP"), r["files"].get("acpi.APIC")
    if not r["done"] or not fadt or not madt:
        raise Fatal(f"acpi: could not read the tables from the guest ({r['status']}):\n{r['console_tail']}")
    new_fadt = acpi.patch_fadt(fadt)
    new_madt, marked = acpi.patch_madt(madt)
    d.mkdir(parents=True, exist_ok=True)
    (d / "FACP.orig").write_bytes(fadt)
    (d / "APIC.orig").write_bytes(madt)
    info = {"layout": key, "fadt": f"{len(fadt)} bytes rev {fadt[8]} -> {len(new_fadt)} bytes rev 6.3",
            "madt": f"rev {madt[8]} -> 5, online-capable on {marked} disabled local APIC entries",
            "dump_boot_s": r["wall_s"]}
    tmp = d / "override.cpio.tmp"
    tmp.write_bytes(small_cpio([("kernel/firmware/acpi/FACP.aml", new_fadt, 0o644),
                                ("kernel/firmware/acpi/APIC.aml", new_madt, 0o644)]))
    (d / "info.json").write_text(json.dumps(info, indent=1))
    tmp.rename(out)
    log(f"acpi: {info['fadt']}; MADT {info['madt']} ({r['wall_s']} s)")
    return out, info


# --------------------------------------------------------------------------------------------
# Plans


def harness_cmd(pl: Payload, name, args, seed):
    cmd = ["/payload/bin/harness", "--no-default-libs", "--no-progress", "--replay-dir", "/tmp",
           "--json", f"/tmp/json.{name}"]
    for lib in pl.libs:
        cmd += ["--lib", f"/payload/lib/{lib.name}"]
    for p in pl.plugins:
        cmd += ["--plugin", f"/payload/plugins/{p.name}"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    return cmd + args + HARNESS_ARGS


def main_plan(pl: Payload, o):
    """Boot 1 of every kernel: rseq tests, a harness run, a harness run with hot-add. With
    --singlestep auto the tests that need no restart (NO_SINGLESTEP_TESTS) run first without
    single-stepping, as on aarch64 (single-stepped, lazy_state's fresh processes took minutes)."""
    lines = slice_steps(pl, o) + rseq_test_steps(pl, o)
    d = o.duration
    # Single-stepping, a harness run lasts 4 to 10 times its scenario (its events run late):
    # 22-37 s for 6 s on 7.3 when the host is quiet, 62-120 s when it is loaded, and once more
    # than 138 s (2026-12-07, steal time rising, killed at the old limit of 8 x + 90 s while
    # its quiesced check still waited for slow units). 20 x + 150 s leaves room for that.
    slow, extra = (20, 150) if o.singlestep != "off" else (3, 90)
    lines.append(shlex.join(["harness_step", "harness.cpu_id", str(int(d * slow + extra)),
                             *harness_cmd(pl, "harness.cpu_id",
                                          ["--index", "cpu_id", "--hotplug", "real", "--threads", "4",
                                           "--duration", str(d)], o.seed)]))
    if o.hotadd > 0:
        if o.singlestep == "auto":
            # Bringing a CPU up one instruction per block takes 5 to 10 s under TCG, and a
            # single-stepped 30 s hot-add run of 8 vCPUs on one TCG thread passed 330 s. The
            # restarts are exercised by the single-stepped steps before this one.
            lines.append("singlestep off")
        # settle, then one vCPU every interval, then the offline/online cycles, then a tail
        hd = max(o.hotadd_duration, o.settle + o.hotadd * o.hotadd_interval + 8)
        # Not single-stepped, 8 vCPUs on one TCG thread: the harness stops at its duration, but
        # one quiesced check can take up to ~50 s there (6.12 on this host), and the final
        # checks and unloads come after it.
        limit = hd * 8 + 90 if o.singlestep == "on" else hd * 4 + 150
        lines.append(shlex.join(["hotadd_step", "harness.hotadd", str(int(limit)), str(o.hotadd),
                                 str(o.settle), str(o.cycles),
                                 *harness_cmd(pl, "harness.hotadd",
                                              # The guest script does the offline/online cycles
                                              # itself; real hotplug from the harness at the same
                                              # time as QMP device_add crashed QEMU 7.2's TCG.
                                              ["--index", "mm_cid", "--hotplug", "simulated", "--threads",
                                               str(o.maxcpus), "--duration", str(hd)], o.seed)]))
    return "\n".join(lines) + "\n"


# The aarch64 boot's harness runs: every library and plugin in each, both index modes, the three
# registration modes, real CPU hotplug inside the guest and the default disturbances (signal
# storms among them). (name, --mode, --index)
ARM_RUNS = (("harness.cpu_id", "libc", "cpu_id"), ("harness.mm_cid", "reserved", "mm_cid"),
            ("harness.none", "none", "mm_cid"))


# rseq test binaries whose checks need no restart inside a branch-free section. With
# --singlestep auto the aarch64 boot runs them first, not single-stepped: they start dozens of
# processes each (lazy_state), which single-stepped took minutes. same_cpu_preemption's
# section spins in a loop, so the scheduler's tick lands inside it without single-stepping.
NO_SINGLESTEP_TESTS = ("rseq", "lazy_state", "pool_oom", "topology", "same_cpu_preemption")


def slice_steps(pl: Payload, o):
    """With --slice: the libs/locks slice_hold measurement (lock holders preempted and hold-time
    tails, with and without the rseq time-slice extension, interleaved rounds), first in the
    boot, before any single-stepping. About 2 * rounds * secs seconds plus start-up."""
    if not getattr(o, "slice", False) or not pl.extras:
        return []
    limit = int(2 * o.slice_rounds * o.slice_secs * 3 + 60)
    grant = []
    if getattr(o, "slice_grant_us", None):
        # The kernel's grant limit (debugfs rseq/slice_ext_nsec, 5-50 us; 5 by default).
        ns = int(o.slice_grant_us * 1000)
        grant = [shlex.join(["run_step", "locks.slice_grant", "20", "sh", "-c",
                             "mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
                             f"echo {ns} > /sys/kernel/debug/rseq/slice_ext_nsec; "
                             "echo slice_ext_nsec $(cat /sys/kernel/debug/rseq/slice_ext_nsec)"])]
    return grant + [shlex.join(["run_step", "locks.slice_hold", str(limit), "/payload/bin/slice_hold",
                        "--threads", "3", "--cpus", "1", "--hold-us", "20", "--rounds", str(o.slice_rounds),
                        "--secs", str(o.slice_secs)])]


def rseq_test_steps(pl: Payload, o):
    """The libs/rseq test binaries of a boot: with --singlestep auto, NO_SINGLESTEP_TESTS
    first without single-stepping, then single-stepping on and the others; with on/off,
    everything is or is not."""
    def test(name):
        # same_cpu_preemption prints what it saw (sections, aborts, preemptions inside one)
        more = ["--nocapture"] if name == "same_cpu_preemption" else []
        return shlex.join(["run_step", f"rseq.{name}", str(o.test_timeout), f"/payload/tests/{name}",
                           "--test-threads=2", *more])
    lines = []
    later = [n for n, _ in pl.tests]
    if o.singlestep == "auto":
        lines += [test(n) for n in later if n in NO_SINGLESTEP_TESTS]
        later = [n for n in later if n not in NO_SINGLESTEP_TESTS]
    if o.singlestep != "off":
        lines.append("singlestep on")
    return lines + [test(n) for n in later]


def arm_plan(pl: Payload, o):
    """The aarch64 boot of every kernel (-smp 2, no hot-add: QEMU 7.2's virt machine has none):
    the rseq tests and three harness runs. With --singlestep auto, the tests that need
    restarts and the harness runs are single-stepped, the others (NO_SINGLESTEP_TESTS) run
    first without it; with on/off, everything is or is not."""
    lines = slice_steps(pl, o) + rseq_test_steps(pl, o)
    d = o.duration
    slow = 8 if o.singlestep != "off" else 3
    for name, mode, index in ARM_RUNS:
        lines.append(shlex.join(["harness_step", name, str(int(d * slow + 90)),
                                 *harness_cmd(pl, name, ["--mode", mode, "--index", index, "--hotplug", "real",
                                                         "--threads", "4", "--duration", str(d)], o.seed)]))
    return "\n".join(lines) + "\n"


def many_plan(pl: Payload, o, n):
    lines = ["singlestep on"] if o.singlestep == "on" else []
    for index in ("cpu_id", "mm_cid"):
        name = f"harness.smp{n}.{index}"
        # A CPU going offline in a 32-vCPU guest on a 2-CPU host took up to ~100 s (stop_machine
        # waits for every vCPU), and a quiesced check waits for it: 8 s more per vCPU.
        lines.append(shlex.join(["harness_step", name, str(int(o.many_duration * 6 + 120 + 8 * n)),
                                 *harness_cmd(pl, name, ["--index", index, "--hotplug", "real", "--threads",
                                                         str(n), "--duration", str(o.many_duration)], o.seed)]))
    if o.many_tests:
        for name, _ in pl.tests:
            lines.append(shlex.join(["run_step", f"rseq.smp{n}.{name}", str(o.test_timeout * 3),
                                     f"/payload/tests/{name}", "--test-threads=2"]))
    return "\n".join(lines) + "\n"


def mem_for(maxcpus):
    return "1G" if maxcpus <= 8 else "2G"


def plan_budget(plan: str):
    """Sum of the guest-side step timeouts in a plan."""
    total = 0
    for line in plan.splitlines():
        w = shlex.split(line)
        if w and w[0] in ("run_step", "harness_step", "hotadd_step"):
            total += int(w[2])
    return total


# --------------------------------------------------------------------------------------------
# Results


def parse_kv(records, prefix):
    out = {}
    for r in records:
        if r.startswith(prefix + " "):
            k, _, v = r[len(prefix) + 1:].partition(" ")
            out.setdefault(k, []).append(v)
    return out


def evaluate(boot_res, kernel_info, expect_hotadd, require_aborts=False):
    """Turns one boot's records into steps with verdicts. require_aborts: a single-stepped harness
    run in which rseq is used (its mode is not "none") must have restarted critical sections."""
    recs = boot_res["records"]
    facts = parse_kv(recs, "FACT")
    steps = []
    cur = None
    sstep = "off"
    for r in recs:
        if r in ("FACT singlestep on", "FACT singlestep off"):
            sstep = r.split()[-1]
        if r.startswith("BEGIN "):
            cur = {"name": r[6:], "rc": None, "secs": None, "problems": [], "notes": [], "singlestep": sstep}
            steps.append(cur)
        elif r.startswith("END ") and cur:
            m = re.match(r"END (\S+) rc=(\S+) secs=(\S+)", r)
            if m:
                cur["rc"] = int(m.group(2)) if m.group(2).lstrip("-").isdigit() else m.group(2)
                cur["secs"] = float(m.group(3))
    files = boot_res["files"]
    for s in steps:
        out = files.get(f"out.{s['name']}", b"").decode(errors="replace")
        s["output_tail"] = "\n".join(out.splitlines()[-40:])
        clock = facts.get(f"clocksource.{s['name']}", [""])[0]
        if clock and clock not in ("tsc", "arch_sys_counter"):  # x86_64's and aarch64's usual ones
            s["notes"].append(f"guest clock source at the end: {clock} (slow reads under TCG)")
        for line in facts.get(f"kernel.{s['name']}", []):
            s["notes"].append(f"guest kernel: {line}")
        if s["rc"] is None:
            s["problems"].append("did not finish (guest hung or died)")
        elif s["rc"] in (143, 137):
            s["problems"].append("timed out in the guest")
        elif s["rc"] != 0:
            s["problems"].append(f"exit status {s['rc']}")
        if s["name"].startswith("rseq."):
            res = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored", out)
            s["notes"].append("; ".join(f"{p} passed, {f} failed, {i} ignored" for _, p, f, i in res) or "no result")
            s["notes"] += [ln.strip() for ln in out.splitlines() if ln.startswith("same_cpu_preemption: ")]
            s["summary"] = "\n".join(ln for ln in out.splitlines() if ln.startswith(("test ", "failures", "---- ")) and
                                     ("FAILED" in ln or "panicked" in ln or ln.startswith("----")))
        if s["name"].startswith("harness."):
            rep = None
            raw = files.get(f"json.{s['name']}")
            if raw:
                try:
                    rep = json.loads(raw)
                except ValueError:
                    s["problems"].append("the JSON report is not JSON")
            else:
                s["problems"].append("no JSON report")
            m = re.search(r"\nlibrary .*", out, re.S)
            s["summary"] = m.group(0).strip("\n") if m else "\n".join(out.splitlines()[-30:])
            if rep:
                harness_facts(s, rep, facts)
                if require_aborts and s["singlestep"] == "on":
                    aborts_check(s)
            rss = facts.get(f"rss_kib.{s['name']}")
            if rss and rss[0].strip().isdigit():
                s["rss_kib"] = int(rss[0])
            ticks = {}
            for v in facts.get(f"ticks.{s['name']}", []):
                c, t = v.split()
                ticks[int(c[3:])] = int(t)
            s["ticks"] = ticks
            if s["name"].endswith(".hotadd") and expect_hotadd:
                hotadd_checks(s, boot_res, facts, rep, expect_hotadd)
    if not boot_res["done"]:
        problem = "the guest " + ("timed out" if boot_res["status"] == "timeout" else "stopped") + \
                  " before the end of its plan"
        oops = [ln for ln in boot_res["console_full"].splitlines()
                if re.search(r"Oops|BUG:|Kernel panic|RIP: 0010", ln)]
        if oops:
            problem += ": guest kernel " + " / ".join(oops[:3])
        steps.append({"name": "guest", "rc": None, "problems": [problem], "notes": [],
                      "output_tail": boot_res["console_tail"]})
    return steps, facts


def harness_facts(s, rep, facts):
    st = rep["state"]
    p = st["process"]
    fs = p["kernel_feature_size"]
    s["rseq"] = {"libc_size": p["libc_size"], "feature_size": fs, "node_id": fs >= 24, "mm_cid": fs >= 28,
                 "mode": st["mode"], "index": st["index"]}
    s["libs"] = {l["name"]: sorted(m["mode"] for m in l["modes"].values()) for l in st["libs"]}
    s["ops"] = {l["name"]: {"ops": l["counts"].get("ops"), "aborts": l["counts"].get("aborts"),
                            "fallback_ops": l["counts"].get("fallback_ops")} for l in st["libs"]}
    s["notes"].append("operations / rseq restarts: " + "; ".join(
        f"{k} {v['ops']} / {v['aborts']}" for k, v in s["ops"].items()))
    ran = [e for e in st.get("events", []) if not e["outcome"].startswith("not run")]
    if ran:
        lags = sorted(e["ran_ms"] - e["at_ms"] for e in ran)
        s["notes"].append(f"schedule: {len(ran)} of {len(st['events'])} events ran, lag median "
                          f"{lags[len(lags) // 2]} ms, max {lags[-1]} ms; elapsed {st['elapsed_ms'] / 1000:.1f} s "
                          f"for {st['scenario']['duration_ms'] / 1000:.1f} s planned")
        slow = max(ran, key=lambda e: e.get("took_ms", 0))
        if slow.get("took_ms", 0) >= 100:
            kind = slow["event"].get("event", "?")
            s["notes"][-1] += f"; slowest event: {kind} took {slow['took_ms']} ms ({slow['outcome'][:60]})"
    s["seed"] = rep["seed"]
    idx = st["index"]
    if idx == "mm_cid" and fs < 28:
        s["notes"].append(f"index mm_cid asked, kernel feature size {fs}: no mm_cid, the libraries' checks "
                          "accepted their fall-back to cpu_id")
    if not rep["passed"]:
        s["problems"].append("harness: " + "; ".join(str(v) for v in rep["violations"])[:400])
    if st["cpus"].get("cpuset_hierarchy"):
        ok, refused = st["cpuset_changes"]
        s["notes"].append(f"cpuset (cgroup {st['cpus']['cpuset_hierarchy']}): {ok} changes, {refused} refused")
    notes = [st["cpus"].get("hotplug_note"), st["cpus"].get("cpuset_note")]
    s["notes"] += [n for n in notes if n]


def aborts_check(s):
    """A run without restarts proves nothing about the abort path: with rseq in use, the
    libraries together must report rseq restarts (each library's count is in the notes)."""
    if s["rseq"]["mode"] == "none":
        return
    total = sum(v["aborts"] or 0 for v in s["ops"].values())
    s["aborts"] = total
    if total == 0:
        s["problems"].append("no critical section was restarted (aborts 0 in every library)")
    else:
        zero = [k for k, v in s["ops"].items() if not v["aborts"]]
        if zero:
            s["notes"].append(f"no restarts in: {', '.join(zero)}")


def hotadd_checks(s, boot_res, facts, rep, expect):
    initial = boot_res["smp"]
    ev = boot_res["hotadd_events"]
    s["hotadd_events"] = ev
    ok_adds = sum(1 for _, e in ev if e.startswith("device_add") and e.endswith(" ok"))
    onl = parse_kv(boot_res["records"], "CPU")
    onlined = [v.split()[0] for v in onl.get("online", []) if v.split()[1] == "ok"]
    cycles = onl.get("cycle", [])
    cycles_ok = sum(1 for c in cycles if c.split()[1] == "ok")
    s["notes"].append(f"QMP device_add: {ok_adds}/{expect} ok; guest brought online: {', '.join(onlined) or 'none'}; "
                      f"offline/online cycles in the guest: {cycles_ok}/{len(cycles)} clean")
    if ok_adds < expect:
        s["problems"].append(f"only {ok_adds} of {expect} vCPUs were added ({'; '.join(e for _, e in ev)})")
    if len(onlined) < expect:
        s["problems"].append(f"only {len(onlined)} of {expect} added vCPUs came online in the guest")
    added = sorted(int(c[3:]) for c in onlined)
    busy = {c: s["ticks"].get(c, 0) for c in added}
    s["added_cpu_ticks"] = busy
    worked = [c for c, t in busy.items() if t > 0]
    s["notes"].append("busy ticks on added CPUs during the run: " +
                      (", ".join(f"cpu{c} {t}" for c, t in busy.items()) or "none"))
    if added and not worked:
        s["problems"].append("no work ran on the added CPUs")
    if rep:
        st = rep["state"]
        pinned = 0
        offl = 0
        for e in st["events"]:
            out = e.get("outcome", "")
            m = re.match(r"thread \d+ -> (\S+)$", out)
            if m and any(c >= initial for c in cpu_list(m.group(1))):
                pinned += 1
            m = re.match(r"cpu(\d+) offline$", out)
            if m and int(m.group(1)) >= initial:
                offl += 1
        s["pinned_to_added"] = pinned
        s["notes"].append(f"harness: {pinned} affinity changes put threads on added CPUs; "
                          f"it took added CPUs offline {offl} times; online at the end "
                          f"{','.join(map(str, st['cpus']['final_online']))}")
        if added and pinned == 0:
            s["problems"].append("the harness never pinned a thread to an added CPU")


def cpu_list(s):
    out = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def print_kernel(kr):
    log("")
    log("=" * 100)
    info = kr.get("package", {})
    verdict = "PASS" if kr["passed"] else "FAIL"
    log(f"KERNEL {kr.get('arch', 'x86_64')} {kr['series']}: {verdict}   {info.get('release', '?')} ({info.get('package', '?')} "
        f"{info.get('version', '?')})")
    for b in kr["boots"]:
        f = b["facts"]
        log(f"  boot {b['name']}: -smp {b['smp']},maxcpus={b['maxcpus']} ({b.get('tcg', '?')}-threaded TCG): "
            f"{b['status']}, boot {b['boot_s']} s, "
            f"total {b['wall_s']} s; possible {f.get('possible', ['?'])[0]}, online {f.get('online', ['?'])[0]}"
            + (f"; {b['acpi']}" if b.get("acpi") else ""))
        for why in b.get("boot_retries", []):
            log(f"    RETRIED: {why}")
        for d in f.get("dmesg", []):
            if "hotplug CPUs" in d or "Table Upgrade" in d:
                log(f"    dmesg: {d}")
        for s in b["steps"]:
            mark = "ok  " if not s["problems"] else "FAIL"
            extra = []
            if s.get("secs") is not None:
                extra.append(f"{s['secs']} s")
            extra.append(f"singlestep {s.get('singlestep', 'off')}")
            if "rss_kib" in s:
                extra.append(f"max RSS {s['rss_kib'] / 1024:.1f} MiB")
            log(f"    [{mark}] {s['name']} ({', '.join(extra)})")
            if "rseq" in s:
                r = s["rseq"]
                log(f"           rseq: __rseq_size {r['libc_size']}, AT_RSEQ_FEATURE_SIZE {r['feature_size']} "
                    f"(node_id {'yes' if r['node_id'] else 'no'}, mm_cid {'yes' if r['mm_cid'] else 'no'}), "
                    f"registration {r['mode']}, index asked {r['index']}")
                log("           library modes: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in s["libs"].items()))
            for n in s["notes"]:
                log(f"           {n}")
            for p in s["problems"]:
                log(f"           PROBLEM: {p}")
            if s["problems"] and s.get("output_tail"):
                log("           --- tail ---")
                for line in s["output_tail"].splitlines()[-25:]:
                    log(f"           | {line}")
        harness_summaries = [s for s in b["steps"] if s["name"].startswith("harness.") and s.get("summary")]
        for s in harness_summaries[:1] if kr["passed"] else harness_summaries:
            log(f"    harness summary ({s['name']}):")
            for line in s["summary"].splitlines():
                log(f"      {line}")


def restarts_line(kr):
    """The rseq restarts of each harness run whose restarts were checked, per library."""
    parts = []
    for b in kr["boots"]:
        for st in b["steps"]:
            if "aborts" in st:
                parts.append(f"{st['name'][len('harness.'):]} " + "/".join(
                    str(v["aborts"]) for v in st["ops"].values()))
    return f"  restarts ({'/'.join(next((st['ops'] for b in kr['boots'] for st in b['steps'] if 'aborts' in st), {}))}): " \
        + ", ".join(parts) if parts else ""


def print_failures(results):
    """Repeats every failed step at the very end, where a log cut to its head and tail still shows it."""
    failed = [(kr, b, s) for kr in results for b in kr["boots"] for s in b["steps"] if s["problems"]]
    if not failed:
        return
    log("")
    log(f"FAILED STEPS ({len(failed)}):")
    for kr, b, s in failed:
        seed = f", seed {s['seed']}" if s.get("seed") is not None else ""
        log(f"  {kr.get('arch', 'x86_64')}/{kr['series']}/{b['name']}/{s['name']}{seed}:")
        for p in s["problems"]:
            log(f"    PROBLEM: {p}")
        for n in s["notes"]:
            if n.startswith(("schedule:", "QMP device_add", "harness:")):
                log(f"    {n}")
        for line in (s.get("output_tail") or "").splitlines()[-12:]:
            log(f"    | {line}")


def aarch64_series(short, arch, series, explicit):
    """The kernels of the aarch64 guests: --aarch64-kernels when given; 7.3 alone in
    `--short --arch all` (CI's short mode: one arm64 boot, about 4 minutes here); else the
    same as x86_64's."""
    if explicit is not None:
        return [s.strip() for s in explicit.split(",") if s.strip()]
    return ["7.3"] if short and arch == "all" else list(series)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="CI mode: short harness runs (about 20 s of payload "
                    "per kernel), hot-add to 8 vCPUs, no 16/32 vCPU boots")
    ap.add_argument("--full", action="store_true", help="also boot every kernel with -smp 16 and -smp 32")
    ap.add_argument("--kernels", default="6.1,6.12,7.3", help="comma-separated series [%(default)s]")
    ap.add_argument("--arch", choices=("x86_64", "aarch64", "all"), default="x86_64",
                    help="guest architecture: x86_64 (qemu-system-x86_64, hot-add), aarch64 (qemu-system-aarch64 "
                    "-M virt, a cross-built payload, no hot-add), or all (both, x86_64 first) [%(default)s]")
    ap.add_argument("--aarch64-kernels", help="the series of the aarch64 guests, when they differ from --kernels "
                    "[--short --arch all: 7.3 (what CI's short mode can afford); else --kernels]")
    ap.add_argument("--smp", type=int, default=2, help="vCPUs at boot for the hot-add boot [%(default)s]")
    ap.add_argument("--maxcpus", type=int, default=8, help="vCPU slots for the hot-add boot [%(default)s]")
    ap.add_argument("--many", default="16,32", help="-smp values of the --full boots [%(default)s]")
    ap.add_argument("--duration", type=float, help="seconds of the plain harness run [short 6, else 10]")
    ap.add_argument("--hotadd-duration", type=float, help="seconds of the hot-add harness run (at least "
                    "what the hot-add needs) [short 0, else 30]")
    ap.add_argument("--hotadd-interval", type=float, default=1.5, help="seconds between two device_add "
                    "[%(default)s]")
    ap.add_argument("--settle", type=float, default=3, help="seconds of harness run before the first hot-add "
                    "[%(default)s]")
    ap.add_argument("--cycles", type=int, help="offline/online rounds over the added CPUs [short 1, else 3]")
    ap.add_argument("--singlestep", choices=("auto", "on", "off"), default="auto",
                    help="one instruction per TCG translation block while the payload runs: without it an "
                    "interrupt never lands inside a branch-free critical section and rseq restarts are "
                    "rare (the rseq storm tests then fail); it makes the guest several times slower. "
                    "auto = on for the rseq tests and the cpu_id harness run of the 2-8 vCPU boot, off "
                    "for its hot-add run and in the 16/32 vCPU boots [%(default)s]")
    ap.add_argument("--tcg-thread", choices=("auto", "multi", "single"), default="auto",
                    help="qemu TCG threading: multi = one host thread per vCPU; single = all vCPUs "
                    "round-robin on one host thread (no cross-vCPU code-patching races; too slow "
                    "for 32 vCPUs); auto = single up to 8 vCPUs, multi for the 16/32-vCPU boots "
                    "[%(default)s]")
    ap.add_argument("--no-hotadd", action="store_true", help="no vCPU hot-add")
    ap.add_argument("--kernel-image", action="append", default=[], metavar="SERIES=PATH",
                    help="boot a kernel image built here for that series instead of Debian's package (e.g. "
                         "7.3=/path/arch/x86/boot/bzImage, a 7.3 built with CONFIG_RSEQ_SLICE_EXTENSION=y); "
                         "repeatable")
    ap.add_argument("--guest-libc", metavar="DIR",
                    help="give the guest's binaries the glibc found under DIR (e.g. an unpacked libc6 .deb: "
                         "dpkg-deb -x libc6_2.43-*.deb DIR) instead of the host's; a glibc that registers rseq "
                         "with the kernel's feature size is what lets a 7.x kernel offer the time-slice extension")
    ap.add_argument("--slice", action="store_true", help="also run the libs/locks slice_hold measurement (time-slice "
                    "extension on/off, interleaved rounds) first in each main boot")
    ap.add_argument("--slice-grant-us", type=float, metavar="US",
                    help="with --slice: set the kernel's grant limit (debugfs rseq/slice_ext_nsec, 5-50 us) "
                         "before the measurement [the kernel's default, 5]")
    ap.add_argument("--slice-rounds", type=int, default=3, help="slice_hold rounds per mode [%(default)s]")
    ap.add_argument("--slice-secs", type=float, default=2, help="seconds of each slice_hold round [%(default)s]")
    ap.add_argument("--many-duration", type=float, default=10, help="seconds of each 16/32-vCPU harness run "
                    "[%(default)s]")
    ap.add_argument("--many-tests", action="store_true", help="also run the rseq tests in the 16/32-vCPU boots")
    ap.add_argument("--test-timeout", type=int, default=240, help="guest-side limit per rseq test binary "
                    "[%(default)s]")
    ap.add_argument("--seed", help="harness seed for every run (default: a new one each run, printed)")
    ap.add_argument("--profile", choices=("release", "debug"), default="release", help="cargo profile "
                    "[%(default)s]")
    ap.add_argument("--acpi-override", choices=("auto", "always", "never"), default="auto",
                    help="ACPI table override for hot-add: auto = on the hot-add boot of every kernel "
                    "[%(default)s]")
    ap.add_argument("--cache", default=os.environ.get("RSEQ_VM_CACHE", "/var/cache/rseq-vm"),
                    help="kernel and ACPI cache, kept between runs [%(default)s]")
    ap.add_argument("--work", default=str(ROOT / "target" / "vm"), help="work directory [%(default)s]")
    ap.add_argument("--json", help="write every result as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the per-boot initrds (logs are always kept)")
    ap.add_argument("--max-minutes", type=float, help="time budget of the whole run: each boot's limit is cut "
                    "to what is left, and the run fails (exit 2) when it runs out [none]")
    ap.add_argument("--harness-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for every harness run, e.g. --harness-arg=--no-cpuset "
                    "(repeatable; later ones override the runner's)")
    ap.add_argument("--verbose", "-v", action="store_true", help="stream the guests' consoles")
    o = ap.parse_args()
    global TCG_THREAD, HARNESS_ARGS, GUEST_LIBC
    TCG_THREAD = o.tcg_thread
    HARNESS_ARGS = list(o.harness_arg)
    if o.short and o.full:
        ap.error("--short and --full exclude each other")
    o.duration = o.duration if o.duration is not None else (6 if o.short else 10)
    o.hotadd_duration = o.hotadd_duration if o.hotadd_duration is not None else (0 if o.short else 30)
    o.cycles = o.cycles if o.cycles is not None else (1 if o.short else 3)
    o.hotadd = 0 if o.no_hotadd else o.maxcpus - o.smp
    if o.seed is not None:
        o.seed = int(o.seed, 0)
    series = [s.strip() for s in o.kernels.split(",") if s.strip()]
    for s in series:
        if s not in KERNELS:
            ap.error(f"unknown kernel series {s} (known: {', '.join(KERNELS)})")
    images = {}
    for spec in o.kernel_image:
        ser, sep, path = spec.partition("=")
        if not sep or not path or ser not in series:
            ap.error(f"--kernel-image {spec!r}: expected SERIES=PATH with SERIES one of --kernels ({', '.join(series)})")
        images[ser] = path
    if images and o.arch != "x86_64":
        ap.error("--kernel-image applies to x86_64 guests only")
    o.kernel_image = images
    if o.slice_grant_us is not None and not (o.slice and 5 <= o.slice_grant_us <= 50):
        ap.error("--slice-grant-us needs --slice and a value from 5 to 50 (the kernel's limits)")
    if o.guest_libc:
        d = Path(o.guest_libc)
        GUEST_LIBC = guest_libc_files(d) if d.is_dir() else {}
        if "libc.so.6" not in GUEST_LIBC or "ld-linux-x86-64.so.2" not in GUEST_LIBC:
            ap.error(f"--guest-libc {o.guest_libc}: no libc.so.6 and ld-linux-x86-64.so.2 under it")
        if o.arch != "x86_64":
            ap.error("--guest-libc applies to x86_64 guests only")
    many = [int(x) for x in o.many.split(",")] if o.full else []
    o.arm_series = aarch64_series(o.short, o.arch, series, o.aarch64_kernels)
    for s in o.arm_series:
        if s not in KERNELS_ARM64:
            ap.error(f"unknown kernel series {s} (known: {', '.join(KERNELS_ARM64)})")
    try:
        return run_all(o, series, many)
    except Fatal as e:
        log(f"\nFATAL: {e}")
        return 2


def local_kernel(series, image, arch):
    """A kernel image built here (--kernel-image SERIES=PATH) in place of Debian's package: the
    release string is read from the image's header (`file`), the config from a `.config` or
    `config` file beside it when there is one."""
    img = Path(image).resolve()
    if not img.is_file():
        raise Fatal(f"kernel {series}: --kernel-image {image}: no such file")
    release = "?"
    try:
        desc = subprocess.run(["file", "-b", str(img)], capture_output=True, text=True).stdout
        m = re.search(r"version (\S+)", desc)
        if m:
            release = m.group(1)
    except OSError:
        pass
    info = {"series": series, "arch": arch.deb, "package": "local", "version": str(img), "release": release}
    for c in (img.parent / ".config", img.parent / "config", img.parents[3] / ".config" if len(img.parents) > 3 else None):
        if c is not None and c.is_file():
            info["config"] = str(c)
            break
    log(f"kernels: {series} is the local image {img} ({release})")
    return img, info


def run_arch(o, arch, series, many, cache, work, deadline, timings, several):
    """Fetches the kernels of one architecture, builds its payload and boots every kernel."""
    label = f"{arch.name}/" if several or arch.name != "x86_64" else ""
    # Timings of x86_64 keep their names; the other architecture's get a prefix.
    tk = "" if arch.name == "x86_64" else f"{arch.name}_"
    t = time.time()
    kc = KernelCache(cache, arch.deb)
    kernels = {}
    for s in series:
        kernels[s] = local_kernel(s, o.kernel_image[s], arch) if s in o.kernel_image else kc.get(arch.kernels[s])
    busybox = kc.busybox() if arch.target else None
    timings[tk + "kernels_s"] = round(time.time() - t, 1)

    t = time.time()
    pl = build_payload(o.profile, work, arch, slice_hold=o.slice)
    timings[tk + "build_s"] = round(time.time() - t, 1)
    t = time.time()
    base = build_initramfs(pl, work, arch, busybox)
    timings[tk + "initramfs_s"] = round(time.time() - t, 1)
    hotadd = o.hotadd if arch.hotadd else 0
    maxcpus_main = o.maxcpus if arch.hotadd else o.smp
    if not arch.hotadd:
        many = []  # the 16/32-vCPU boots are x86_64 only (see the README)

    override = None
    if hotadd > 0 and o.acpi_override != "never":
        t = time.time()
        override = acpi_override(cache, work, base, kernels[series[0]][0], o.smp, o.maxcpus, mem_for(o.maxcpus),
                                  o.verbose)
        timings[tk + "acpi_s"] = round(time.time() - t, 1)

    results = []
    for s in series:
        vml, info = kernels[s]
        kr = {"arch": arch.name, "series": s, "package": info, "boots": []}
        layouts = [("main", o.smp, maxcpus_main, main_plan(pl, o) if arch.hotadd else arm_plan(pl, o))] + \
                  [(f"smp{n}", n, n, many_plan(pl, o, n)) for n in many]
        mods = module_order(vml.parent / "modules")
        # /init loads these before it looks for the data channel
        modules = [(f"modules/{k}", (vml.parent / "modules" / k).read_bytes(), 0o644) for k in mods]
        if mods:
            modules.append(("modules/order", "".join(f"{k}\n" for k in mods).encode(), 0o644))
            log(f"   {s}: modules for the guest: {' '.join(mods)}")
        for bname, smp, maxcpus, plan in layouts:
            rundir = arch.workdir(work) / s / bname
            rundir.mkdir(parents=True, exist_ok=True)
            initrd = rundir / "initrd"
            acpi_note = None
            with open(initrd, "wb") as f:
                if bname == "main" and override and (o.acpi_override == "always" or o.acpi_override == "auto"):
                    f.write(override[0].read_bytes())
                    acpi_note = "ACPI override: FADT 6.3, MADT 5 online-capable"
                with open(base, "rb") as b:
                    shutil.copyfileobj(b, f)
                f.write(small_cpio([("plan.sh", plan.encode(), 0o644)] + modules))
            (rundir / "plan.sh").write_text(plan)
            budget = 30 + 2 * smp + plan_budget(plan) + 60
            mem = mem_for(maxcpus)
            log(f"\n== {label}{s}: boot {bname} (-smp {smp},maxcpus={maxcpus}, limit {budget} s) {info['release']}")
            retries = []
            hot = hotadd if bname == "main" else 0
            over = None
            for attempt in range(2):
                limit = budget
                if deadline is not None:
                    # The whole run has --max-minutes: a boot gets what is left, and none
                    # starts with less than a minute.
                    limit = min(budget, int(deadline - time.time()))
                    if limit < 60:
                        over = (f"not run: the run's time budget (--max-minutes {o.max_minutes:g}) ran out"
                                + (" before the retry" if attempt else ""))
                        break
                    if limit < budget:
                        log(f"   limit cut to {limit} s by --max-minutes {o.max_minutes:g}")
                r = boot(f"{label}{s}/{bname}", vml, initrd, smp, maxcpus, mem, rundir, limit, o.verbose,
                         o.hotadd_interval, arch)
                oops = [ln for ln in r["console_tail"].splitlines()
                        if re.search(r"Oops|BUG:|Kernel panic|general protection|int3", ln)]
                if r["boot_s"] is None:
                    # The kernel died before the payload started (seen once: an int3 Oops in the
                    # scheduler while booting 7.3 with 32 vCPUs under TCG). Reported, tried again once.
                    why = f"boot attempt {attempt + 1} died before the payload: " + \
                          (" / ".join(oops[:3]) or r["status"])
                else:
                    steps, facts = evaluate(r, info, hot, require_aborts=not arch.hotadd)
                    # The emulator or the guest kernel died mid-payload (QEMU exited, an int3 Oops
                    # from TCG's code patching) while every step that finished had passed: an
                    # infrastructure failure, reported and tried again once. A step that failed,
                    # or a guest that hung until the time limit, is never retried.
                    unfinished = [st["name"] for st in steps if st["rc"] is None]
                    failed = [st["name"] for st in steps if st["rc"] not in (None, 0)]
                    if not (unfinished and not failed and r["status"] == "exited") or attempt == 1:
                        break
                    why = (f"boot attempt {attempt + 1}: the emulator or guest kernel died during "
                           f"{', '.join(unfinished)} with every finished step passing: "
                           + (" / ".join(oops[:3]) or "no Oops on the console (QEMU exited)"))
                # Kept beside the boot's directory, which the next attempt starts afresh.
                kept = rundir.parent / f"{bname}.attempt{attempt + 1}.console.log"
                shutil.copy(rundir / "console.log", kept)
                log(f"   {why} (console: {kept})")
                retries.append(why)
            if over and attempt == 0:
                # Reported as a failed boot: a kernel is never left out silently.
                kr["boots"].append({"name": bname, "smp": smp, "maxcpus": maxcpus, "status": "not run",
                                    "boot_s": None, "boot_retries": [], "wall_s": 0, "facts": {},
                                    "steps": [{"name": "boot", "rc": None, "problems": [over], "notes": []}],
                                    "acpi": None, "hotadd_events": [], "records": []})
                log(f"   FAIL: {over}")
                if not o.keep:
                    initrd.unlink()
                continue
            if over:
                retries.append(over)
            if r["boot_s"] is None:
                steps, facts = evaluate(r, info, hot, require_aborts=not arch.hotadd)
            b = {"name": bname, "smp": smp, "maxcpus": maxcpus, "tcg": tcg_thread_for(maxcpus),
                 "status": r["status"], "boot_s": r["boot_s"],
                 "boot_retries": retries,
                 "wall_s": r["wall_s"], "facts": facts, "steps": steps, "acpi": acpi_note,
                 "hotadd_events": r["hotadd_events"], "records": r["records"]}
            (rundir / "result.json").write_text(json.dumps(b, indent=1, default=str))
            for name, data in r["files"].items():
                if name.startswith(("json.", "out.")):
                    (rundir / name).write_bytes(data)
            kr["boots"].append(b)
            bad = [st["name"] for st in steps if st["problems"]]
            log(f"   {'PASS' if not bad else 'FAIL: ' + ', '.join(bad)} (boot {r['boot_s']} s, total {r['wall_s']} s)")
            if not o.keep:
                initrd.unlink()
        kr["passed"] = all(not st["problems"] for b in kr["boots"] for st in b["steps"])
        kr["wall_s"] = round(sum(b["wall_s"] for b in kr["boots"]), 1)
        results.append(kr)

    return results


def run_all(o, series, many):
    t_all = time.time()
    deadline = t_all + o.max_minutes * 60 if o.max_minutes else None
    arches = ["x86_64", "aarch64"] if o.arch == "all" else [o.arch]
    tools = ["apt-get", "dpkg-deb", "cargo"]
    for an in arches:
        a = ARCHES[an]
        tools += [a.qemu] + ([a.cc, a.tool_prefix + "readelf"] if a.target else [])
    for tool in tools:
        if not shutil.which(tool):
            raise Fatal(f"{tool} is missing (ci/vm/run.sh installs the host packages)")
    for an in arches:
        t = ARCHES[an].target
        if t:
            libdir = subprocess.run(["rustc", "--print", "target-libdir", "--target", t], capture_output=True,
                                    text=True).stdout.strip()
            if not libdir or not any(Path(libdir).glob("libstd-*")):
                raise Fatal(f"the Rust target {t} is not installed (rustup target add {t})")
    cache, work = Path(o.cache).resolve(), Path(o.work).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}

    results = []
    for an in arches:
        ser = o.arm_series if an == "aarch64" else series
        results += run_arch(o, ARCHES[an], ser, many, cache, work, deadline, timings, len(arches) > 1)

    for kr in results:
        print_kernel(kr)
    timings["total_s"] = round(time.time() - t_all, 1)
    log("")
    log("=" * 100)
    for kr in results:
        log(f"{kr.get('arch', 'x86_64'):>7} {kr['series']:>5}  {'PASS' if kr['passed'] else 'FAIL'}  "
            f"{kr['package'].get('release', '?'):<32} "
            + "  ".join(f"{b['name']} {b['wall_s']} s (boot {b['boot_s']} s)" for b in kr["boots"])
            + restarts_line(kr))
    log("host: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    print_failures(results)
    ok = all(kr["passed"] for kr in results)
    log(f"VM MATRIX: {'PASS' if ok else 'FAIL'}")
    if o.json:
        Path(o.json).write_text(json.dumps({"passed": ok, "timings": timings, "kernels": results}, indent=1,
                                           default=str))
    return 0 if ok else 1


def on_term(sig, _frame):
    # Unwinds through every `finally`, which stops the running guest.
    raise KeyboardInterrupt(f"signal {sig}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"\ninterrupted ({e or 'SIGINT'}); guests stopped")
        sys.exit(130)
