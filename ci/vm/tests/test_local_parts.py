"""Host-side tests of the runner's local parts: --kernel-image (a kernel built here in place
of Debian's package) and --guest-libc (another glibc for the guest's binaries). No qemu, no
network.

    python3 -m unittest discover -s ci/vm/tests -v
"""

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
VM = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(VM))
import run  # noqa: E402


def runner(*args):
    return subprocess.run([sys.executable, str(VM / "run.py"), *args], capture_output=True, text=True)


class KernelImage(unittest.TestCase):
    def test_a_series_outside_kernels_or_a_missing_path_is_refused(self):
        r = runner("--kernels", "7.3", "--kernel-image", "6.1=/x")
        self.assertEqual(r.returncode, 2)
        self.assertIn("expected SERIES=PATH with SERIES one of --kernels (7.3)", r.stderr)
        r = runner("--kernels", "7.3", "--kernel-image", "7.3")
        self.assertEqual(r.returncode, 2)
        self.assertIn("expected SERIES=PATH", r.stderr)

    def test_the_local_image_is_used_with_its_release_and_config(self):
        with tempfile.TemporaryDirectory() as d:
            img = Path(d) / "arch" / "x86" / "boot" / "bzImage"
            img.parent.mkdir(parents=True)
            img.write_bytes(b"\0" * 64)
            (Path(d) / ".config").write_text("CONFIG_RSEQ_SLICE_EXTENSION=y\n")
            path, info = run.local_kernel("7.3", str(img), run.ARCHES["x86_64"])
            self.assertEqual(path, img.resolve())
            self.assertEqual((info["series"], info["package"]), ("7.3", "local"))
            self.assertEqual(info["config"], str(Path(d) / ".config"))
            with self.assertRaises(run.Fatal):
                run.local_kernel("7.3", str(Path(d) / "none"), run.ARCHES["x86_64"])


class GuestLibc(unittest.TestCase):
    def test_files_of_the_other_glibc_replace_the_hosts_by_name(self):
        with tempfile.TemporaryDirectory() as d:
            lib = Path(d) / "usr" / "lib" / "x86_64-linux-gnu"
            lib.mkdir(parents=True)
            (lib / "libc.so.6").write_bytes(b"new libc")
            (lib / "ld-linux-x86-64.so.2").write_bytes(b"new loader")
            (Path(d) / "usr" / "lib64").mkdir()
            os.symlink(lib / "ld-linux-x86-64.so.2", Path(d) / "usr" / "lib64" / "ld-linux-x86-64.so.2")
            found = run.guest_libc_files(Path(d))
            self.assertEqual(found["libc.so.6"], (lib / "libc.so.6").resolve())
            self.assertEqual(found["ld-linux-x86-64.so.2"], (lib / "ld-linux-x86-64.so.2").resolve())
            saved = run.GUEST_LIBC
            try:
                run.GUEST_LIBC = found
                self.assertEqual(run.guest_libc_file("/lib/x86_64-linux-gnu/libc.so.6").read_bytes(), b"new libc")
                # a library the other glibc does not have stays the host's
                host = Path(d) / "libgcc_s.so.1"
                host.write_bytes(b"host")
                self.assertEqual(run.guest_libc_file(str(host)), host.resolve())
                run.GUEST_LIBC = None
                self.assertEqual(run.guest_libc_file(str(host)), host.resolve())
            finally:
                run.GUEST_LIBC = saved

    def test_a_directory_without_a_glibc_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            r = runner("--kernels", "7.3", "--guest-libc", d)
            self.assertEqual(r.returncode, 2)
            self.assertIn("no libc.so.6 and ld-linux-x86-64.so.2 under it", r.stderr)


if __name__ == "__main__":
    unittest.main()
