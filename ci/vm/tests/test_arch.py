"""Host-side tests of the runner's aarch64 support: the arm64 kernel patterns, the private apt
configuration per Debian architecture, the guest's busybox from busybox-static:arm64, the
cross build's environment, the loader and libraries of a cross-built binary, the aarch64 plan
and the "restarts happened" check. No qemu, no network.

    python3 -m unittest discover -s ci/vm/tests -v
"""

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
VM = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(VM))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402
from test_runner import FAKE_APT, build_deb  # noqa: E402

ARM = run.ARCHES["aarch64"]
X86 = run.ARCHES["x86_64"]


class KernelPatterns(unittest.TestCase):
    def newest(self, series, names):
        k = run.KERNELS_ARM64[series]
        hits = [n for n in names if k.pattern.match(n)]
        return max(hits, key=lambda n: [int(x) for x in __import__("re").findall(r"\d+", n)]) if hits else None

    def test_each_series_picks_its_arm64_image_and_never_a_dbg_or_amd64_one(self):
        names = ["linux-image-6.1.0-57-cloud-arm64", "linux-image-6.1.0-57-cloud-arm64-dbg",
                 "linux-image-6.1.0-58-cloud-amd64", "linux-image-6.12.118+deb12-cloud-arm64-unsigned",
                 "linux-image-6.12.117+deb12-cloud-arm64", "linux-image-6.12.118+deb12-cloud-arm64-dbg",
                 "linux-image-6.12.90+deb12.1-cloud-arm64", "linux-image-6.12-cloud-arm64",
                 "linux-binary-7.3.4+deb13-cloud-arm64", "linux-image-7.3.4+deb13-cloud-arm64"]
        self.assertEqual(self.newest("6.1", names), "linux-image-6.1.0-57-cloud-arm64")
        self.assertEqual(self.newest("6.12", names), "linux-image-6.12.118+deb12-cloud-arm64-unsigned")
        # 7.3's linux-image-… is only a meta package
        self.assertEqual(self.newest("7.3", names), "linux-binary-7.3.4+deb13-cloud-arm64")
        for s, k in run.KERNELS.items():
            self.assertFalse(k.pattern.match(self.newest(s, names) or "x"), s)

    def test_both_architectures_know_the_same_series(self):
        self.assertEqual(set(run.KERNELS), set(run.KERNELS_ARM64))


@unittest.skipUnless(shutil.which("dpkg-deb"), "needs dpkg-deb")
class Arm64Apt(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="vm-arch-test-"))
        self.fake = self.tmp / "fake"
        bindir = self.fake / "bin"
        bindir.mkdir(parents=True)
        for tool in ("apt-get", "apt-cache"):
            (bindir / tool).write_text(FAKE_APT)
            (bindir / tool).chmod(0o755)
        (self.fake / "pkgnames").write_text("linux-binary-7.3.4+deb13-cloud-arm64\nlinux-binary-7.3.4+deb13-cloud-amd64\n")
        self.saved = (os.environ.get("PATH"), os.environ.get("FAKE_APT_DIR"), run.BACKOFF)
        os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
        os.environ["FAKE_APT_DIR"] = str(self.fake)
        run.BACKOFF = (0,)

    def tearDown(self):
        path, fake, run.BACKOFF = self.saved
        os.environ["PATH"] = path
        if fake is None:
            os.environ.pop("FAKE_APT_DIR", None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def quiet(self, fn, *a):
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*a)

    def calls(self):
        return (self.fake / "calls").read_text().splitlines()

    def test_arm64_uses_its_own_apt_state_and_architecture(self):
        shutil.copy(build_deb(self.tmp, "7.3.4+deb13-cloud-arm64"), self.fake / "deb")
        kc = run.KernelCache(self.tmp / "cache", "arm64")
        _, info = self.quiet(kc.get, run.KERNELS_ARM64["7.3"])
        self.assertEqual(info["package"], "linux-binary-7.3.4+deb13-cloud-arm64")
        self.assertEqual(info["arch"], "arm64")
        for c in self.calls():
            self.assertIn("APT::Architecture=arm64", c)
            self.assertIn(f"{self.tmp}/cache/apt-arm64/", c)
        src = (self.tmp / "cache" / "apt-arm64" / "sources.list").read_text()
        self.assertIn("bookworm-security", src)
        self.assertIn("trixie-backports", src)
        self.assertIn(" bookworm main", src)  # busybox-static
        # amd64 keeps the old directory and its sources
        self.assertFalse((self.tmp / "cache" / "apt").exists())

    def test_a_cached_kernel_of_the_other_architecture_is_never_used(self):
        shutil.copy(build_deb(self.tmp, "7.3.4+deb13-cloud-amd64"), self.fake / "deb")
        (self.fake / "pkgnames").write_text("linux-binary-7.3.4+deb13-cloud-amd64\n")
        self.quiet(run.KernelCache(self.tmp / "cache").get, run.KERNELS["7.3"])
        (self.fake / "update_fail").touch()
        with self.assertRaises(run.Fatal) as e:
            self.quiet(run.KernelCache(self.tmp / "cache", "arm64").get, run.KERNELS_ARM64["7.3"])
        self.assertIn("nothing is cached", str(e.exception))

    def test_busybox_comes_from_busybox_static_and_is_cached(self):
        root = self.tmp / "bb"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "bin").mkdir()
        (root / "DEBIAN" / "control").write_text(
            "Package: busybox-static\nVersion: 1.0-1\nArchitecture: arm64\n"
            "Maintainer: test <test@example.invalid>\nDescription: fake\n")
        (root / "bin" / "busybox").write_bytes(b"\x7fELF fake arm64 busybox")
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(self.fake / "deb")],
                       check=True, stdout=subprocess.DEVNULL)
        kc = run.KernelCache(self.tmp / "cache", "arm64")
        bb = self.quiet(kc.busybox)
        self.assertEqual(bb.read_bytes(), b"\x7fELF fake arm64 busybox")
        self.assertTrue(os.access(bb, os.X_OK))
        self.assertIn("download busybox-static", "\n".join(self.calls()))
        n = len(self.calls())
        self.assertEqual(self.quiet(run.KernelCache(self.tmp / "cache", "arm64").busybox), bb)
        self.assertEqual(len(self.calls()), n)  # cached: apt is not asked again

    def test_a_busybox_that_cannot_be_downloaded_is_fatal(self):
        (self.fake / "download_fail_times").write_text("99")
        with self.assertRaises(run.Fatal) as e:
            self.quiet(run.KernelCache(self.tmp / "cache", "arm64").busybox)
        self.assertIn("cannot download busybox-static for arm64", str(e.exception))


class Modules(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="vm-arch-test-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    @staticmethod
    def ko(d, name, depends):
        # what matters of a .ko here: the NUL-separated strings of its .modinfo
        (d / f"{name}.ko").write_bytes(b"\x7fELF junk\0license=GPL\0depends=" + depends.encode() +
                                       b"\0intree=Y\0name=" + name.encode() + b"\0")

    def test_dependencies_load_first_and_built_in_drivers_need_nothing(self):
        d = self.tmp / "modules"
        d.mkdir()
        self.ko(d, "virtio_ring", "")
        self.ko(d, "virtio", "virtio_ring")
        self.ko(d, "virtio_pci_modern_dev", "")
        self.ko(d, "virtio_pci_legacy_dev", "")
        self.ko(d, "virtio_pci", "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio")
        self.ko(d, "virtio_console", "virtio,virtio_ring")
        self.assertEqual(run.module_depends(d / "virtio_console.ko"), ["virtio.ko", "virtio_ring.ko"])
        self.assertEqual(run.module_order(d), ["virtio_ring.ko", "virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko",
                                               "virtio.ko", "virtio_pci.ko", "virtio_console.ko"])
        (d / "virtio_ring.ko").unlink()
        with self.assertRaises(run.Fatal) as e:
            run.module_order(d)
        self.assertIn("virtio_ring.ko (needed by virtio_pci.ko) is not in", str(e.exception))
        # built in: no .ko, nothing to load
        self.assertEqual(run.module_order(self.tmp / "none"), [])

    @unittest.skipUnless(shutil.which("dpkg-deb"), "needs dpkg-deb")
    def test_an_arm64_kernel_package_gives_its_virtio_modules(self):
        root = self.tmp / "pkg"
        mods = root / "lib" / "modules" / "6.1.0-57-cloud-arm64"
        for sub in ("kernel/drivers/virtio", "kernel/drivers/char", "kernel/drivers/net"):
            (mods / sub).mkdir(parents=True)
        self.ko(mods / "kernel/drivers/virtio", "virtio", "")
        self.ko(mods / "kernel/drivers/char", "virtio_console", "virtio")
        self.ko(mods / "kernel/drivers/net", "virtio_net", "virtio")
        (root / "boot").mkdir()
        (root / "boot" / "vmlinuz-6.1.0-57-cloud-arm64").write_bytes(b"ARM64 Image")
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN" / "control").write_text(
            "Package: linux-image-6.1.0-57-cloud-arm64-unsigned\nVersion: 1.0-1\nArchitecture: arm64\n"
            "Maintainer: test <test@example.invalid>\nDescription: fake\n")
        deb = self.tmp / "k.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                       stdout=subprocess.DEVNULL)
        out = self.tmp / "out"
        out.mkdir()
        self.assertEqual(run.extract_kernel(deb, out, modules=True), "6.1.0-57-cloud-arm64")
        self.assertEqual(sorted(p.name for p in (out / "modules").iterdir()),
                         ["virtio.ko", "virtio_console.ko"])
        self.assertEqual(run.module_order(out / "modules", ("virtio_pci", "virtio_console")),
                         ["virtio.ko", "virtio_console.ko"])


class CrossBuild(unittest.TestCase):
    def test_the_cross_linker_comes_from_the_environment(self):
        e = ARM.env()
        self.assertEqual(e["CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"], "aarch64-linux-gnu-gcc")
        self.assertNotIn("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER", X86.env())
        self.assertFalse((run.ROOT / ".cargo" / "config.toml").exists())

    def test_work_directories_keep_x86_64_where_it_was(self):
        w = Path("/w")
        self.assertEqual(X86.workdir(w), w)
        self.assertEqual(ARM.workdir(w), w / "aarch64")

    def test_qemu_command_of_an_aarch64_guest(self):
        tmp = Path(tempfile.mkdtemp(prefix="vm-arch-test-"))
        try:
            g = run.Guest("t", Path("/k"), Path("/i"), 2, 2, "1G", tmp, arch=ARM)
            cmd = " ".join(g.cmd)
            self.assertTrue(cmd.startswith("qemu-system-aarch64 -M virt -cpu max,pauth-impdef=on -accel tcg,thread=single"))
            self.assertIn("console=ttyAMA0", cmd)
            self.assertIn("virtserialport,chardev=data,name=data", cmd)
            self.assertNotIn("isa-serial", cmd)
            g = run.Guest("t", Path("/k"), Path("/i"), 2, 8, "1G", tmp)
            self.assertIn("isa-serial,chardev=data", " ".join(g.cmd))
            self.assertIn("console=ttyS0", " ".join(g.cmd))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @unittest.skipUnless(shutil.which("aarch64-linux-gnu-gcc") and shutil.which("aarch64-linux-gnu-readelf")
                         and ARM.sysroot.is_dir(), "needs gcc-aarch64-linux-gnu and libc6-arm64-cross")
    def test_a_cross_binary_gets_the_arm64_loader_and_libc(self):
        tmp = Path(tempfile.mkdtemp(prefix="vm-arch-test-"))
        try:
            (tmp / "m.c").write_text("#include <math.h>\n#include <stdio.h>\n"
                                     "int main(int c, char **v) { (void)v; printf(\"%f\\n\", sin(c)); return 0; }\n")
            subprocess.run(["aarch64-linux-gnu-gcc", "-Wall", "-Wextra", "-Werror", "-o", str(tmp / "m"),
                            str(tmp / "m.c"), "-lm"], check=True)
            deps = dict((g, h) for h, g in run.elf_deps(tmp / "m", ARM))
            self.assertIn("/lib/ld-linux-aarch64.so.1", deps)
            self.assertIn("/lib/aarch64-linux-gnu/libc.so.6", deps)
            self.assertIn("/lib/aarch64-linux-gnu/libm.so.6", deps)
            self.assertNotIn("/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1", deps)  # libc's NEEDED loader
            for g, h in deps.items():
                self.assertTrue(Path(h).exists(), h)
                self.assertTrue(h.startswith("/usr/aarch64-linux-gnu/lib/"), h)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class Plan(unittest.TestCase):
    def options(self, **kw):
        o = type("O", (), {})()
        o.singlestep, o.test_timeout, o.duration, o.seed = "auto", 240, 6, 7
        for k, v in kw.items():
            setattr(o, k, v)
        return o

    def payload(self):
        pl = run.Payload()
        pl.harness = Path("/x/harness")
        pl.libs = [Path("/x/libpcounters.so")]
        pl.plugins = [Path("/x/libpercpu_counter.so")]
        pl.tests = [("ops", Path("/x/ops")), ("same_cpu_preemption", Path("/x/s"))]
        return pl

    def test_the_x86_64_main_plan_runs_the_no_restart_tests_before_single_stepping(self):
        o = self.options(hotadd=0)
        lines = run.main_plan(self.payload(), o).splitlines()
        on = lines.index("singlestep on")
        assert any("rseq.same_cpu_preemption" in l for l in lines[:on]), lines
        assert any("rseq.ops" in l for l in lines[on:]), lines
        assert not any("rseq.ops" in l for l in lines[:on]), lines
        assert any("harness.cpu_id" in l for l in lines[on:]), lines

    def test_the_aarch64_plan_covers_modes_indexes_and_tests_single_stepped(self):
        plan = run.arm_plan(self.payload(), self.options())
        lines = plan.splitlines()
        # the tests that need no restart first, then single-stepping for the others and the harness
        self.assertEqual(lines[1], "singlestep on")
        self.assertNotIn("singlestep off", plan)
        self.assertNotIn("hotadd_step", plan)
        steps = [shlex.split(ln) for ln in lines if ln != "singlestep on"]
        self.assertEqual([w[1] for w in steps], ["rseq.same_cpu_preemption", "rseq.ops", "harness.cpu_id",
                                                 "harness.mm_cid", "harness.none"])
        modes = set()
        for w in steps[2:]:
            self.assertEqual(w[0], "harness_step")
            modes.add((w[w.index("--mode") + 1], w[w.index("--index") + 1]))
            self.assertIn("/payload/lib/libpcounters.so", w)
            self.assertIn("/payload/plugins/libpercpu_counter.so", w)
            self.assertEqual(w[w.index("--hotplug") + 1], "real")
            self.assertEqual(int(w[2]), 6 * 8 + 90)
        self.assertEqual(modes, {("libc", "cpu_id"), ("reserved", "mm_cid"), ("none", "mm_cid")})
        self.assertEqual(run.plan_budget(plan), 2 * 240 + 3 * 138)

    def test_singlestep_on_or_off_applies_to_every_step(self):
        on = run.arm_plan(self.payload(), self.options(singlestep="on")).splitlines()
        self.assertEqual(on[0], "singlestep on")
        self.assertEqual(shlex.split(on[1])[1], "rseq.ops")
        off = run.arm_plan(self.payload(), self.options(singlestep="off"))
        self.assertNotIn("singlestep", off)
        self.assertIn(str(6 * 3 + 90), off)


class Series(unittest.TestCase):
    def test_short_all_runs_arm64_on_7_3_only_unless_told(self):
        every = ["6.1", "6.12", "7.3"]
        self.assertEqual(run.aarch64_series(True, "all", every, None), ["7.3"])
        self.assertEqual(run.aarch64_series(False, "all", every, None), every)
        self.assertEqual(run.aarch64_series(True, "aarch64", every, None), every)
        self.assertEqual(run.aarch64_series(True, "all", every, "6.1, 7.3"), ["6.1", "7.3"])


def harness_report(aborts, mode="libc"):
    libs = [{"name": n, "modes": {"0": {"mode": "libc-owned"}}, "counts": {"ops": 100, "aborts": a,
                                                                         "fallback_ops": 0}}
            for n, a in aborts.items()]
    return json.dumps({"passed": True, "seed": 1, "violations": [], "state": {
        "process": {"libc_size": 32, "kernel_feature_size": 28}, "mode": mode, "index": "cpu_id",
        "libs": libs, "events": [], "elapsed_ms": 6000, "scenario": {"duration_ms": 6000},
        "cpus": {}, "cpuset_changes": [0, 0]}}).encode()


class Aborts(unittest.TestCase):
    def boot(self, aborts, mode="libc", singlestep=True):
        recs = (["FACT singlestep on"] if singlestep else []) + ["BEGIN harness.cpu_id",
                                                                  "END harness.cpu_id rc=0 secs=20.0"]
        return {"records": recs, "files": {"json.harness.cpu_id": harness_report(aborts, mode),
                                           "out.harness.cpu_id": b"ok\n"},
                "done": True, "status": "exited", "smp": 2, "console_tail": "", "console_full": "",
                "hotadd_events": []}

    def step(self, *a, require=True, **kw):
        steps, _ = run.evaluate(self.boot(*a, **kw), {}, 0, require_aborts=require)
        return steps[0]

    def test_a_single_stepped_run_without_restarts_fails(self):
        s = self.step({"pcounters": 0, "percpu_counter": 0})
        self.assertIn("no critical section was restarted (aborts 0 in every library)", s["problems"])

    def test_restarts_pass_and_libraries_without_any_are_named(self):
        s = self.step({"pcounters": 12, "percpu_counter": 0})
        self.assertEqual(s["problems"], [])
        self.assertEqual(s["aborts"], 12)
        self.assertIn("no restarts in: percpu_counter", s["notes"])
        self.assertIn("operations / rseq restarts: pcounters 100 / 12; percpu_counter 100 / 0", s["notes"])

    def test_the_summary_line_names_the_restarts_of_each_checked_run(self):
        s = self.step({"pcounters": 3, "percpu_counter": 13})
        kr = {"boots": [{"steps": [s, {"name": "rseq.ops"}]}]}
        self.assertEqual(run.restarts_line(kr), "  restarts (pcounters/percpu_counter): cpu_id 3/13")
        self.assertEqual(run.restarts_line({"boots": [{"steps": [{"name": "rseq.ops"}]}]}), "")

    def test_the_usual_clock_sources_get_no_note(self):
        for clock, noted in (("tsc", False), ("arch_sys_counter", False), ("hpet", True)):
            b = self.boot({"pcounters": 1})
            b["records"].append(f"FACT clocksource.harness.cpu_id {clock}")
            s = run.evaluate(b, {}, 0, require_aborts=True)[0][0]
            self.assertEqual(any("clock source" in n for n in s["notes"]), noted, clock)

    def test_no_rseq_or_no_single_stepping_or_x86_64_requires_nothing(self):
        self.assertEqual(self.step({"pcounters": 0}, mode="none")["problems"], [])
        self.assertEqual(self.step({"pcounters": 0}, singlestep=False)["problems"], [])
        self.assertEqual(self.step({"pcounters": 0}, require=False)["problems"], [])


if __name__ == "__main__":
    unittest.main()
