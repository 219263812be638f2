"""The console marker parser: job sections, statuses, and the facts read from one section."""

import unittest

from vtdharness import console
from vtdharness.console import JobOutput

CONSOLE = "\n".join([
    "\x1bc\x1b[?7l SeaBIOS noise",
    "e2e-l1: L1 up 3.1 s",
    "VTD-NEST-JOB first\r",
    "VTD cap=0x1d2078c222f0606 ecap=1880000000F43",
    "E2E-GUEST-START",
    "\x1b[0mGUEST-DISK d0 aaaa",
    "counter translations 12",
    "counter translations 15",
    "VTD-NEST-EXIT 0",
    "stray line between jobs",
    "VTD-NEST-JOB second",
    "VTD-NEST-TIMEOUT 90",
    "Killed",
    "VTD-NEST-EXIT 137",
    "VTD-NEST-JOB third",
    "a VMM that never came back",
    "VTD-NEST-L1-DONE",
])


class SplitSections(unittest.TestCase):
    def setUp(self):
        self.sections = console.split_sections(CONSOLE)

    def test_one_section_per_job_in_order(self):
        self.assertEqual([s.lines[0] for s in self.sections],
                         ["VTD-NEST-JOB first", "VTD-NEST-JOB second", "VTD-NEST-JOB third"])

    def test_statuses(self):
        self.assertEqual([s.status for s in self.sections], ["0", "timeout", "missing"])

    def test_escapes_and_carriage_returns_are_stripped(self):
        self.assertIn("GUEST-DISK d0 aaaa", self.sections[0].lines)
        self.assertFalse(any("\r" in line or "\x1b" in line for line in self.sections[0].lines))

    def test_lines_outside_jobs_are_dropped(self):
        flat = [line for s in self.sections for line in s.lines]
        self.assertNotIn("stray line between jobs", flat)
        self.assertFalse(any("SeaBIOS" in line for line in flat))

    def test_section_ends_at_its_exit_marker(self):
        self.assertEqual(self.sections[0].lines[-1], "VTD-NEST-EXIT 0")

    def test_a_name_with_spaces_is_not_a_job(self):
        self.assertEqual(console.split_sections("VTD-NEST-JOB two words\nVTD-NEST-EXIT 0"), [])


class AssignSections(unittest.TestCase):
    """A job run again in a fresh L1 (L1 got stuck in its first attempt) takes its place."""

    def sections(self, *jobs):
        text = "\n".join(f"VTD-NEST-JOB {name}\n" + (f"VTD-NEST-EXIT {rc}" if rc else "stuck")
                         for name, rc in jobs)
        return console.split_sections(text)

    def test_the_second_attempt_replaces_the_unfinished_first(self):
        final, first = console.assign_sections(
            ["a", "b", "c"], self.sections(("a", "0"), ("b", None), ("b", "0"), ("c", "1")))
        self.assertEqual([s.status for s in final], ["0", "0", "1"])
        self.assertEqual(list(first), [1])
        self.assertEqual(first[1].lines, ["VTD-NEST-JOB b", "stuck"])

    def test_two_jobs_of_one_name_that_both_finished_are_two_jobs(self):
        final, first = console.assign_sections(
            ["a", "a"], self.sections(("a", "0"), ("a", "1")))
        self.assertEqual([s.status for s in final], ["0", "1"])
        self.assertEqual(first, {})

    def test_jobs_that_never_ran_have_no_section(self):
        final, _ = console.assign_sections(["a", "b"], self.sections(("a", None)))
        self.assertEqual(final[0].status, "missing")
        self.assertIsNone(final[1])


class Facts(unittest.TestCase):
    def out(self, *lines):
        return JobOutput(list(lines))

    def test_last_counter_value_wins_and_malformed_lines_are_ignored(self):
        o = self.out("counter a 1", "counter a 2", "counter b x", "counter c 3 4", "xcounter d 5")
        self.assertEqual(o.counters, {"a": 2})
        self.assertIsNone(o.counter("b"))

    def test_disks_take_the_last_line_per_name(self):
        o = self.out("GUEST-DISK d0 old", "GUEST-DISK d0 new", "HOST-DISK d0 new",
                     "HOST-DISK d01 other")
        self.assertEqual(o.guest_disk("d0"), "new")
        self.assertEqual(o.host_disk("d0"), "new")
        self.assertIsNone(o.host_disk("d1"))

    def test_caps(self):
        o = self.out("[ 0.1] VTD cap=0x00ab ecap=CD extra", "GUEST-CAP 00ab 0xcd")
        self.assertEqual(o.vmm_cap, ("0x00ab", "CD"))
        self.assertEqual(tuple(map(console.hexnorm, o.vmm_cap)),
                         tuple(map(console.hexnorm, o.guest_cap)))
        self.assertEqual(console.hexnorm("0x000"), "0")

    def test_guest_markers(self):
        o = self.out("E2E-GUEST-START", "x CHECK-FAIL the disk: bad", "CHECK-FAIL later",
                     "E2E-GUEST-EXIT 1")
        self.assertTrue(o.guest_started)
        self.assertEqual(o.check_failure, "the disk: bad")
        self.assertFalse(o.guest_exited_ok)
        self.assertTrue(self.out("E2E-GUEST-EXIT 0").guest_exited_ok)
        self.assertFalse(self.out("GUEST-START").guest_started)

    def test_vmm_lines_leave_out_the_harness_and_l1(self):
        o = self.out("VTD-NEST-JOB j", "e2e-l1: job ran 1 s", "", "  ", "Killed",
                     "vtd-nest: refused", "HOST-DISK d0 x")
        self.assertEqual(o.vmm_lines(), ["vtd-nest: refused"])
        self.assertEqual(o.vmm_lines(killed_too=True), ["Killed", "vtd-nest: refused"])

    def test_last_vmm_line_skips_counters_and_guest_markers(self):
        o = self.out("vtd-nest: the guest powered off", "counter faults 0", "E2E-GUEST-EXIT 0",
                     "VTD-NEST-EXIT 0")
        self.assertEqual(o.last_vmm_line(), "vtd-nest: the guest powered off")
        self.assertEqual(self.out("x" * 300).last_vmm_line(), "x" * 160)


class Bench(unittest.TestCase):
    def test_workload_lines(self):
        b = JobOutput([
            "BENCH-BOOT 2.5", "BENCH-READY 3.0", "BENCH-CLOCK tsc", "BENCH-TIMER uptime",
            "BENCH-IOMMU DMA", "BENCH-CAP 1 2",
            "BENCH-PHASE read4k 1.5 4096 4100 16777216 4096",
            "BENCH-PHASE read4k 1.25 4096 4100 16777216 -",
            "BENCH-DMATIME 10 10 1.5 10 2.5 0 0",
            "counter vtd_translations 7", "counter walks 3",
            "BENCH-PHASE read1m x 1 1 1", "BENCH-DONE",
        ]).bench()
        self.assertEqual((b.boot, b.ready, b.clock, b.timer, b.domain, b.cap),
                         (2.5, 3.0, "tsc", "uptime", "DMA", "cap=1 ecap=2"))
        self.assertEqual(b.phases["read4k"], [(1.5, 4096, 4100, 16777216),
                                              (1.25, 4096, 4100, 16777216)])
        self.assertEqual(b.maps, {"read4k": [4096]})
        self.assertEqual(b.dmatime, [(10, (10, 1.5), (10, 2.5), (0, 0.0))])
        self.assertEqual(b.counters, {"translations": 7, "walks": 3})
        self.assertTrue(b.done)
        self.assertIsNone(b.bench_failure)
        self.assertEqual(len(b.notes), 1)
        self.assertIn("read1m x", b.notes[0])

    def test_failure_and_boot_unknown(self):
        b = JobOutput(["BENCH-BOOT -", "BENCH-FAIL dd failed: no space",
                       "BENCH-FAIL later"]).bench()
        self.assertIsNone(b.boot)
        self.assertEqual(b.bench_failure, "dd failed: no space")
        self.assertFalse(b.done)


if __name__ == "__main__":
    unittest.main()
