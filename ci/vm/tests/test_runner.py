"""Tests of the kernel-matrix runner's host side: fetching and caching kernel packages (with
apt-get and apt-cache replaced by scripted fakes on PATH), unpacking a real .deb built with
dpkg-deb, the ACPI table patches, and the cpio writer. No qemu, no network.

    python3 -m unittest discover -s ci/vm/tests -v
"""

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
VM = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(VM))
import acpi  # noqa: E402
import run  # noqa: E402

# A fake apt-get / apt-cache. It logs every call to $FAKE_APT_DIR/calls and behaves as the
# files in $FAKE_APT_DIR say: "update_fail" (update fails), "pkgnames" (what apt-cache lists),
# "download_fail_times" (how many downloads fail before one succeeds), "deb" (the .deb that a
# successful download copies into the current directory).
FAKE_APT = r'''#!/bin/sh
d="$FAKE_APT_DIR"
echo "$(basename "$0") $*" >> "$d/calls"
case " $* " in
  *" update"*)
    [ -e "$d/update_fail" ] && { echo "E: Failed to fetch (fake)" >&2; exit 100; }
    exit 0 ;;
  *" pkgnames "*) cat "$d/pkgnames"; exit 0 ;;
  *" --print-uris "*)
    for last; do :; done
    echo "'http://fake.invalid/pool/${last}_1.0-1_amd64.deb' ${last}_1.0-1_amd64.deb 1234 SHA256:00"
    exit 0 ;;
  *" download "*)
    n=$(cat "$d/download_fail_times" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
      echo $((n - 1)) > "$d/download_fail_times"
      echo "E: Failed to fetch http://fake.invalid/ (fake)" >&2
      exit 100
    fi
    [ -e "$d/deb" ] && cp "$d/deb" ./fake_1.0-1_amd64.deb
    exit 0 ;;
esac
echo "fake apt: unexpected call: $*" >&2
exit 1
'''

K61 = run.KERNELS["6.1"]


def build_deb(where: Path, release: str) -> Path:
    """A real kernel-shaped .deb: boot/vmlinuz-RELEASE and boot/config-RELEASE."""
    root = where / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{release}\nVersion: 1.0-1\nArchitecture: amd64\n"
        "Maintainer: test <test@example.invalid>\nDescription: fake kernel\n")
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"MZ fake bzImage " + release.encode())
    (root / "boot" / f"config-{release}").write_text("CONFIG_RSEQ=y\n")
    deb = where / "fake.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, stdout=subprocess.DEVNULL)
    return deb


@unittest.skipUnless(shutil.which("dpkg-deb"), "needs dpkg-deb")
class KernelFetch(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="vm-test-"))
        self.fake = self.tmp / "fake"
        bindir = self.fake / "bin"
        bindir.mkdir(parents=True)
        for tool in ("apt-get", "apt-cache"):
            (bindir / tool).write_text(FAKE_APT)
            (bindir / tool).chmod(0o755)
        (self.fake / "pkgnames").write_text(
            "linux-image-6.1.0-9-cloud-amd64\nlinux-image-6.1.0-56-cloud-amd64\n"
            "linux-image-6.1.0-56-amd64\nlinux-headers-6.1.0-56-cloud-amd64\n")
        self.saved = (os.environ.get("PATH"), os.environ.get("FAKE_APT_DIR"), run.BACKOFF)
        os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
        os.environ["FAKE_APT_DIR"] = str(self.fake)
        run.BACKOFF = (0,)
        self.cache = run.KernelCache(self.tmp / "cache")

    def tearDown(self):
        path, fake, run.BACKOFF = self.saved
        os.environ["PATH"] = path
        if fake is None:
            os.environ.pop("FAKE_APT_DIR", None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def calls(self, word):
        f = self.fake / "calls"
        lines = f.read_text().splitlines() if f.exists() else []
        return [ln for ln in lines if f" {word}" in ln]

    def get(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            r = self.cache.get(K61)
        return r, out.getvalue()

    def test_fetches_the_newest_package_and_unpacks_it(self):
        shutil.copy(build_deb(self.tmp, "6.1.0-56-cloud-amd64"), self.fake / "deb")
        (vmlinuz, info), log = self.get()
        self.assertEqual(info["package"], "linux-image-6.1.0-56-cloud-amd64")  # 56 > 9, numerically
        self.assertEqual(info["release"], "6.1.0-56-cloud-amd64")
        self.assertEqual(vmlinuz.read_bytes(), b"MZ fake bzImage 6.1.0-56-cloud-amd64")
        self.assertEqual((vmlinuz.parent / "config").read_text(), "CONFIG_RSEQ=y\n")
        self.assertIn("downloading linux-image-6.1.0-56-cloud-amd64", log)
        # Cached: a second get downloads nothing.
        n = len(self.calls("-qq download"))
        (again, _), _ = self.get()
        self.assertEqual(again, vmlinuz)
        self.assertEqual(len(self.calls("-qq download")), n)

    def test_a_download_that_fails_twice_is_retried(self):
        shutil.copy(build_deb(self.tmp, "6.1.0-56-cloud-amd64"), self.fake / "deb")
        (self.fake / "download_fail_times").write_text("2")
        (vmlinuz, _), log = self.get()
        self.assertTrue(vmlinuz.is_file())
        self.assertEqual(len([c for c in self.calls("-qq download") if "--print-uris" not in c]), 3)
        self.assertIn("attempt 2/3 failed", log)

    def test_a_package_that_cannot_be_downloaded_is_fatal_and_named(self):
        (self.fake / "download_fail_times").write_text("99")
        with self.assertRaises(run.Fatal) as e:
            self.get()
        msg = str(e.exception)
        self.assertIn("kernel 6.1: cannot download package linux-image-6.1.0-56-cloud-amd64 1.0-1", msg)
        self.assertIn("http://fake.invalid/pool/", msg)
        self.assertIn(f"after {run.ATTEMPTS} attempts", msg)
        self.assertEqual(len([c for c in self.calls("-qq download")]), run.ATTEMPTS)

    def test_an_unreachable_index_with_nothing_cached_is_fatal(self):
        (self.fake / "update_fail").touch()
        with self.assertRaises(run.Fatal) as e:
            self.get()
        self.assertIn("kernel 6.1: cannot fetch the package index", str(e.exception))
        self.assertIn("nothing is cached", str(e.exception))
        self.assertEqual(len(self.calls("update")), run.ATTEMPTS)

    def test_a_cached_kernel_is_used_with_a_warning_when_the_network_fails(self):
        shutil.copy(build_deb(self.tmp, "6.1.0-55-cloud-amd64"), self.fake / "deb")
        (self.fake / "pkgnames").write_text("linux-image-6.1.0-55-cloud-amd64\n")
        (old, _), _ = self.get()
        # A newer package appears, but it cannot be downloaded.
        (self.fake / "pkgnames").write_text("linux-image-6.1.0-56-cloud-amd64\n")
        (self.fake / "download_fail_times").write_text("99")
        self.cache = run.KernelCache(self.tmp / "cache")
        (vmlinuz, info), log = self.get()
        self.assertEqual(vmlinuz, old)
        self.assertEqual(info["package"], "linux-image-6.1.0-55-cloud-amd64")
        self.assertIn("WARNING: cannot download linux-image-6.1.0-56-cloud-amd64", log)
        # And when even the index is gone.
        (self.fake / "update_fail").touch()
        self.cache = run.KernelCache(self.tmp / "cache")
        (vmlinuz, _), log = self.get()
        self.assertEqual(vmlinuz, old)
        self.assertIn("WARNING: apt-get update failed", log)

    def test_a_download_that_leaves_no_deb_is_fatal(self):
        with self.assertRaises(run.Fatal) as e:
            self.get()
        self.assertIn("kernel 6.1: apt-get download linux-image-6.1.0-56-cloud-amd64 left no .deb", str(e.exception))

    def test_a_series_without_any_package_is_fatal(self):
        (self.fake / "pkgnames").write_text("linux-image-6.1.0-56-amd64\n")
        with self.assertRaises(run.Fatal) as e:
            self.get()
        self.assertIn("kernel 6.1: no package matching", str(e.exception))

    def test_a_deb_without_a_kernel_is_fatal(self):
        root = self.tmp / "empty"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 1.0-1\nArchitecture: amd64\n"
            "Maintainer: test <test@example.invalid>\nDescription: no kernel inside\n")
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(self.fake / "deb")],
                       check=True, stdout=subprocess.DEVNULL)
        with self.assertRaises(run.Fatal) as e:
            self.get()
        self.assertIn("holds no vmlinuz", str(e.exception))


def table(sig: bytes, rev: int, body: bytes) -> bytes:
    t = bytearray(struct.pack("<4sIB", sig, 36 + len(body), rev) + bytes(27) + body)
    t[10:16] = b"BOCHS "
    struct.pack_into("<I", t, 24, 1)  # OEM revision
    return bytes(acpi.checksum(t))


class AcpiPatch(unittest.TestCase):
    def madt(self):
        body = struct.pack("<II", 0xFEE00000, 1)
        for apic_id in range(4):  # two enabled, two spare slots
            body += struct.pack("<BBBBI", 0, 8, apic_id, apic_id, 1 if apic_id < 2 else 0)
        body += struct.pack("<BBHIII", 9, 16, 0, 9, 0, 9)  # a spare x2APIC slot
        body += struct.pack("<BBBBII", 1, 12, 0, 0, 0xFEC00000, 0)  # an I/O APIC, left alone
        return table(b"APIC", 3, body)

    def test_fadt_becomes_revision_6_3_with_a_valid_checksum(self):
        new = acpi.patch_fadt(table(b"FACP", 1, bytes(244 - 36)))
        acpi.check(new, "FACP")
        self.assertEqual(len(new), acpi.FADT_63_LEN)
        self.assertEqual((new[8], new[acpi.FADT_MINOR_OFF]), (6, 3))
        self.assertEqual(struct.unpack_from("<I", new, 24)[0], 2)  # OEM revision + 1
        self.assertEqual(new[10:16], b"BOCHS ")

    def test_madt_marks_only_the_spare_slots_online_capable(self):
        new, marked = acpi.patch_madt(self.madt())
        acpi.check(new, "APIC")
        self.assertEqual(marked, 3)
        self.assertEqual(new[8], 5)
        self.assertEqual(acpi.lapics(new), [(0, 1), (1, 1), (2, 2), (3, 2), (9, 2)])
        self.assertEqual(new[-12:], self.madt()[-12:])  # the I/O APIC entry is untouched

    def test_bad_tables_are_refused(self):
        good = self.madt()
        bad_sum = bytearray(good)
        bad_sum[9] ^= 1
        for bad, why in ((bytes(bad_sum), "bad checksum"), (good[:-1], "header length"),
                         (table(b"FACP", 1, bytes(8)), "expected an ACPI APIC")):
            with self.subTest(why=why), self.assertRaisesRegex(ValueError, why):
                acpi.patch_madt(bad)
        with self.assertRaisesRegex(ValueError, "longer than"):
            acpi.patch_fadt(table(b"FACP", 6, bytes(300)))
        broken = bytearray(good)
        broken[44 + 1] = 0  # an entry of length 0
        with self.assertRaisesRegex(ValueError, "malformed"):
            acpi.patch_madt(bytes(acpi.checksum(broken)))


@unittest.skipUnless(shutil.which("cpio"), "needs cpio")
class CpioWriter(unittest.TestCase):
    def test_cpio_lists_and_extracts_what_was_written(self):
        data = run.small_cpio([("plan.sh", b"echo hi\n", 0o644), ("kernel/firmware/acpi/APIC.aml", b"\x01" * 77,
                                                                  0o644)])
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=d, check=True)
            self.assertEqual((Path(d) / "plan.sh").read_bytes(), b"echo hi\n")
            self.assertEqual((Path(d) / "kernel/firmware/acpi/APIC.aml").read_bytes(), b"\x01" * 77)


class Budget(unittest.TestCase):
    def test_plan_budget_sums_the_step_limits(self):
        plan = "singlestep on\nrun_step rseq.ops 300 /payload/tests/ops\nharness_step h 138 /payload/bin/harness\n" \
               "hotadd_step h2 170 6 3 1 /payload/bin/harness\n"
        self.assertEqual(run.plan_budget(plan), 608)


class Verdicts(unittest.TestCase):
    """A timed-out harness step in a guest's records becomes a failure that the end of the log repeats."""

    def boot_result(self):
        recs = ["BOOTED", "FACT kernel 6.12.0", "BEGIN harness.hotadd", "FACT clocksource.harness.hotadd hpet",
                "FACT kernel.harness.hotadd clocksource: Switched to clocksource hpet",
                "END harness.hotadd rc=143 secs=150.2", "DONE"]
        out = "".join(f"line {i}\n" for i in range(60)).encode()
        return {"records": recs, "files": {"out.harness.hotadd": out}, "done": True, "status": "exited",
                "console_full": "", "console_tail": "", "hotadd_events": [], "smp": 2}

    def test_a_timed_out_step_fails_and_is_repeated_at_the_end(self):
        steps, _ = run.evaluate(self.boot_result(), {}, 0)
        self.assertEqual([s["name"] for s in steps], ["harness.hotadd"])
        st = steps[0]
        self.assertIn("timed out in the guest", st["problems"])
        self.assertIn("no JSON report", st["problems"])
        self.assertTrue(any("clock source at the end: hpet" in n for n in st["notes"]), st["notes"])
        self.assertTrue(any("Switched to clocksource hpet" in n for n in st["notes"]), st["notes"])
        results = [{"series": "6.12", "passed": False, "boots": [{"name": "main", "steps": steps}]}]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            run.print_failures(results)
        text = buf.getvalue()
        self.assertIn("FAILED STEPS (1):", text)
        self.assertIn("6.12/main/harness.hotadd", text)
        self.assertIn("PROBLEM: timed out in the guest", text)
        self.assertIn("| line 59", text)
        self.assertNotIn("| line 47", text)

    def test_nothing_is_repeated_when_every_step_passed(self):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            run.print_failures([{"series": "6.1", "passed": True, "boots": [{"name": "main", "steps": [
                {"name": "rseq.ops", "problems": [], "notes": []}]}]}])
        self.assertEqual(buf.getvalue(), "")


if __name__ == "__main__":
    unittest.main()
