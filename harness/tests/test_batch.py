"""Jobs of a batch: disks and real devices, "@NAME" placeholders, the VMM command, results."""

import tempfile
import unittest
from pathlib import Path

from vtdharness import batch as b
from vtdharness.common import HarnessError
from vtdharness.launch import Runner, split_console


class Placeholders(unittest.TestCase):
    def test_only_listed_names_are_replaced(self):
        tokens = {"d0": "@@E2EDISK0@@", "vfio0": "@@E2EVFIO3@@"}
        self.assertEqual(b.substitute_placeholders("path=@d0,iommu=on", tokens),
                         "path=@@E2EDISK0@@,iommu=on")
        self.assertEqual(b.substitute_placeholders("sysfsdev=@vfio0 @d1 a@d0", tokens),
                         "sysfsdev=@@E2EVFIO3@@ @d1 a@@E2EDISK0@@")
        self.assertEqual(b.substitute_placeholders("@d00", tokens), "@d00")

    def test_vfio_addresses(self):
        self.assertEqual(b.vfio_bdf(0), "0000:00:10.0")
        self.assertEqual(b.vfio_bdf(14), "0000:00:1e.0")

    def test_disk_addresses_pack_eight_functions_below_the_real_devices(self):
        self.assertEqual(b.l1_disk_address(0), "03.0")
        self.assertEqual(b.l1_disk_address(9), "04.1")
        self.assertEqual(b.l1_disk_address(b.L1_DISK_MAX - 1), "0f.7")


class RenderCommand(unittest.TestCase):
    def test_vtd_nest_cmdline_gets_the_console_in_front(self):
        cmd = b.render_command("vtd-nest", "/bin/vtd-nest", "/k", "/i",
                               ["--cmdline", "iommu.strict=1", "--memory", "512M"])
        self.assertEqual(cmd, ["/bin/vtd-nest", "run", "--kernel", "/k", "--initrd", "/i",
                               "--cmdline", f"{b.L2_CONSOLE} iommu.strict=1", "--memory", "512M"])

    def test_equals_form_and_absent_cmdline(self):
        cmd = b.render_command("qemu", "qemu", "/k", "/i", ["-append=x", "-m", "1G"])
        self.assertEqual(cmd[:8], ["qemu", "-nographic", "-no-reboot", "-nic", "none",
                                   "-kernel", "/k", "-initrd"])
        self.assertIn(f"-append={b.L2_CONSOLE} x", cmd)
        cmd = b.render_command("qemu", "qemu", "/k", "/i", ["-m", "1G"])
        self.assertEqual(cmd[-2:], ["-append", b.L2_CONSOLE])

    def test_flag_without_value_is_refused(self):
        with self.assertRaises(HarnessError):
            b.render_command("vtd-nest", "v", "/k", "/i", ["--cmdline"])


class Jobs(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.work = Path(self.tmp.name)
        self.init = self.work / "init.sh"
        self.init.write_text("echo hi\n")
        self.batch = b.Batch(self.work / "batch")

    def tearDown(self):
        self.tmp.cleanup()

    def test_disks_and_devices_are_numbered_across_the_batch(self):
        j0 = self.batch.add("a", "vtd-nest", self.init, 90, ["d0=8M", "d1=8M"],
                            ["--disk", "path=@d0", "--disk", "path=@d1"])
        j1 = self.batch.add("b", "qemu", self.init, 30, ["d0=16M"], ["file=@d0", "@vfio0"],
                            vfio=["vfio0=16M"], vfio_modules="iommufd", kernel="6.12")
        self.assertEqual([d.index for d in j0.disks + j1.disks], [0, 1, 2])
        self.assertEqual(j1.callargs, ["file=@@E2EDISK2@@", "@@E2EVFIO0@@"])
        self.assertEqual((j1.vfio_modules, j1.kernel, j0.vfio_modules), ("iommufd", "", None))
        self.assertEqual(self.batch.vfio_sets(), ["iommufd"])
        self.assertEqual((j1.dir / "disks").read_text().split()[:2], ["d0", "2"])
        self.assertEqual(b.host_paths(["path=@@E2EDISK2@@"], j1), [f"path={j1.disks[0].file}"])

    def test_a_side_script_travels_with_its_job(self):
        side = self.work / "side.sh"
        side.write_text("echo side $#\n")
        with_side = self.batch.add("a", "vtd-nest", self.init, 90, [], [], side=side)
        without = self.batch.add("b", "vtd-nest", self.init, 90, [], [])
        self.assertEqual(with_side.side.read_text(), "echo side $#\n")
        self.assertIsNone(without.side)

    def test_a_side_script_runs_next_to_the_command_in_direct_mode(self):
        side = self.work / "side.sh"
        side.write_text('echo "side sees $# args: $*"\nexit 3\n')
        runner = Runner(self.batch, live=False)
        script = runner.start_side(side, ["/bin/vmm", "run"], 30)
        self.assertEqual(runner.run(["echo", "vmm line"]), 0)
        script.finish()
        log = self.batch.console.read_text().splitlines()
        self.assertIn("side sees 2 args: /bin/vmm run", log)
        self.assertIn("vmm line", log)
        self.assertEqual(log[-1], "VTD-NEST-SIDE-EXIT 3")

    def test_bad_specs_are_refused(self):
        for disks, kw in ((["d0"], {}), (["d-0=8M"], {}), (["d0="], {}),
                          ([], {"vfio_modules": "uio"}), ([], {"kernel": "2.6"})):
            with self.assertRaises(HarnessError):
                self.batch.add("x", "vtd-nest", self.init, 1, disks, [], **kw)
        with self.assertRaises(HarnessError):
            self.batch.add("x", "kvmtool", self.init, 1, [], [])
        with self.assertRaises(HarnessError):
            self.batch.add("x", "vtd-nest", self.work / "none.sh", 1, [], [])
        with self.assertRaises(HarnessError):
            self.batch.add("x", "vtd-nest", self.init, 1, [], ["a\nb"])

    def test_at_most_fifteen_real_devices(self):
        specs = [f"v{i}=1M" for i in range(b.L1_VFIO_MAX)]
        self.batch.add("x", "vtd-nest", self.init, 1, [], [], vfio=specs)
        with self.assertRaises(HarnessError):
            self.batch.add("y", "vtd-nest", self.init, 1, [], [], vfio=["one=1M"])

    def test_console_split_into_outputs_and_results(self):
        for name in ("a", "b", "c"):
            self.batch.add(name, "vtd-nest", self.init, 1, ["d0=1M"], [])
        self.batch.console.write_text(
            "VTD-NEST-JOB a\nhello\nVTD-NEST-EXIT 3\nVTD-NEST-JOB b\nVTD-NEST-TIMEOUT 1\n"
            "VTD-NEST-EXIT 137\n")
        split_console(self.batch)
        self.assertEqual([self.batch.result(i) for i in range(3)], ["3", "timeout", "missing"])
        self.assertEqual(self.batch.jobs[0].output.read_text(),
                         "VTD-NEST-JOB a\nhello\nVTD-NEST-EXIT 3\n")
        (self.batch.work / "l1-timed-out").touch()
        self.assertEqual(self.batch.result(2), "timeout")
        (self.batch.work / "l1-stalled").write_text("200 c\n")
        self.assertEqual([self.batch.result(i) for i in range(3)], ["3", "timeout", "l1-stalled"])

    def test_host_disk_lines_hash_the_images(self):
        self.batch.add("a", "vtd-nest", self.init, 1, ["d0=1K"], [])
        self.batch.create_disks()
        self.assertEqual(self.batch.host_disk_lines(0), [
            "HOST-DISK d0 "
            "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"])


if __name__ == "__main__":
    unittest.main()
