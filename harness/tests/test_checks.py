"""The scenarios' host-side checks, and how a scenario's bash description is read."""

import unittest

from vtdharness import checks
from vtdharness.common import E2E_LIB
from vtdharness.console import JobOutput
from vtdharness.scenarios import Scenario, parse_description, run_served

GOOD = ["VTD-NEST-JOB s", "VTD cap=0x12 ecap=0x34", "E2E-GUEST-START", "CHECK-OK fine",
        "GUEST-CAP 12 34", "GUEST-DISK d0 abc", "E2E-GUEST-EXIT 0", "counter translations 5",
        "vtd-nest: the guest powered off", "VTD-NEST-EXIT 0", "HOST-DISK d0 abc"]


def out(lines):
    return JobOutput(list(lines))


class GuestRan(unittest.TestCase):
    def test_a_good_run(self):
        self.assertIsNone(checks.guest_ran(out(GOOD), "0"))

    def test_each_way_to_fail(self):
        cases = [
            (GOOD, "timeout", "the VMM timed out; last output: vtd-nest: the guest powered off"),
            (GOOD, "missing", "the VMM never reported an exit status (L1 died or timed out)"),
            (GOOD[:3], "l1-stalled",
             "L1 made no progress and was stopped before the job finished (where its vCPUs "
             "were: l1-stall.txt in the work directory)"),
            (["boom"], "1",
             "the guest never reached its init (VMM exit status 1; last output: boom)"),
            (GOOD + ["CHECK-FAIL no DMAR"], "0", "guest: no DMAR"),
            ([x for x in GOOD if not x.startswith("E2E-GUEST-EXIT")], "0",
             "the guest's script did not finish (no E2E-GUEST-EXIT 0)"),
            (GOOD, "2", "the VMM exited with status 2 after the guest ran"),
        ]
        for lines, status, why in cases:
            self.assertEqual(checks.guest_ran(out(lines), status), why)


class Values(unittest.TestCase):
    def test_disk_hash(self):
        self.assertIsNone(checks.disk_hash_matches(out(GOOD), "d0"))
        self.assertEqual(checks.disk_hash_matches(out(GOOD + ["HOST-DISK d0 abd"]), "d0"),
                         "disk d0: guest sha256 abc != host sha256 abd")
        self.assertEqual(checks.disk_hash_matches(out(GOOD), "d1"),
                         "the guest printed no hash of disk d1")
        self.assertEqual(checks.disk_hash_matches(out(["GUEST-DISK d1 x"]), "d1"),
                         "no host hash of disk d1")

    def test_cap(self):
        self.assertIsNone(checks.cap_matches(out(GOOD)))
        self.assertEqual(checks.cap_matches(out(GOOD[:4] + ["GUEST-CAP 12 35"])),
                         "guest sees cap=12 ecap=35, the VMM reported cap=12 ecap=34")
        self.assertEqual(checks.cap_matches(out(["GUEST-CAP 1 2"])),
                         "the VMM printed no 'VTD cap=<hex> ecap=<hex>' line")

    def test_counter_is(self):
        o = out(GOOD)
        self.assertIsNone(checks.counter_is(o, "translations", "-gt", "0"))
        self.assertIsNone(checks.counter_is(o, "translations", "-le", "5"))
        self.assertEqual(checks.counter_is(o, "translations", "-eq", "0"),
                         "counter translations is 5, want -eq 0")
        self.assertEqual(checks.counter_is(o, "faults", "-ge", "1"),
                         "the VMM's summary has no 'counter faults <value>' line")


class Refused(unittest.TestCase):
    LINES = ["VTD-NEST-JOB r", "e2e-l1: vfio: modules loaded",
             "vtd-nest: --device needs nested translation; use x-flts=off", "VTD-NEST-EXIT 2"]

    def test_one_sentence_matching(self):
        self.assertIsNone(checks.vmm_refused(out(self.LINES), "2",
                                             "nested translation.*x-flts=off", "vtd-nest"))

    def test_failures(self):
        o = out(self.LINES)
        self.assertEqual(checks.vmm_refused(o, "0", "x", "vtd-nest"),
                         "the VMM exited with status 0 instead of refusing")
        self.assertEqual(checks.vmm_refused(o, "1", "x-flts", "vtd-nest"),
                         "the VMM exited with status 1, want 2")
        self.assertIn("does not match /caching-mode/",
                      checks.vmm_refused(o, "2", "caching-mode", "vtd-nest"))
        two = out(self.LINES[:3] + ["Caused by: more"])
        self.assertIn("want one sentence, the VMM printed 2 lines",
                      checks.vmm_refused(two, "2", "x-flts", "vtd-nest"))
        self.assertIsNone(checks.vmm_refused(two, "1", "x-flts", "qemu"))
        self.assertEqual(checks.vmm_refused(out(["E2E-GUEST-START"]), "2", "x", "vtd-nest"),
                         "a guest started (status 2)")

    def test_the_regex_is_grep_extended(self):
        o = out(["vtd-nest: Device assignment needs caching-mode=on"])
        self.assertIsNone(checks.vmm_refused(o, "2", "Device assignment.*caching-mode=on",
                                             "vtd-nest"))
        self.assertIsNone(checks.vmm_refused(o, "2", "needs[[:space:]]+caching", "vtd-nest"))


class Served(unittest.TestCase):
    """checks.sh's functions in bash, answered by the harness over the pipes."""

    def run_check(self, body, lines=GOOD, inner="vtd-nest"):
        script = (f'. "{E2E_LIB}/checks.sh"\ncheck() {{\n{body}\n}}\n'
                  'if check; then exit 0; else exit 1; fi')
        return run_served(["bash", "-c", script], out(lines), inner, {"OUT": "/dev/null"})

    def test_a_chain_that_holds(self):
        self.assertEqual(self.run_check(
            'guest_ran 0 && disk_hash_matches d0 && cap_matches && '
            'counter_is translations -gt 0 && [ "$(counter translations)" = 5 ]'), (0, ""))

    def test_the_first_failure_is_printed(self):
        rc, said = self.run_check('guest_ran 0 && counter_is translations -eq 0 && '
                                  'disk_hash_matches d9')
        self.assertEqual((rc, said), (1, "counter translations is 5, want -eq 0\n"))

    def test_arguments_with_spaces_and_a_message_in_a_message(self):
        rc, said = self.run_check(
            'vmm_refused 2 "needs nested translation; use" || return 1\n'
            'echo "why$(vmm_said)"; return 1', Refused.LINES)
        self.assertEqual((rc, said), (1, "why; last output: vtd-nest: --device needs nested "
                                         "translation; use x-flts=off\n"))

    def test_an_unknown_check_and_bad_arguments_fail(self):
        self.assertEqual(self.run_check("vtd_check no_such"), (1, "no check no_such\n"))
        rc, said = self.run_check("counter_is translations -gt many")
        self.assertEqual(rc, 1)
        self.assertIn("bad arguments", said)

    def test_outside_the_harness_a_check_says_so(self):
        import subprocess
        proc = subprocess.run(["bash", "-c", f'. "{E2E_LIB}/checks.sh"; guest_ran 0'],
                              capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(proc.returncode, 2)
        self.assertIn("not run by the harness", proc.stdout)


class Description(unittest.TestCase):
    def test_records(self):
        raw = (b"S:DISKS\0d0=8M d1=8M\0A:ARGS\0003\0--cmdline\0a b\0\0S:HOST_ONLY\0000\0"
               b"A:QEMU_ARGS\0000\0S:GUEST_SCRIPT\0echo 1\necho 2\0")
        self.assertEqual(parse_description(raw), {
            "DISKS": "d0=8M d1=8M", "ARGS": ["--cmdline", "a b", ""], "HOST_ONLY": "0",
            "QEMU_ARGS": [], "GUEST_SCRIPT": "echo 1\necho 2"})

    def test_a_side_function_becomes_the_side_script(self):
        api = Scenario.load("api")
        self.assertIn("vtd-nest", api.side_script or "")
        self.assertIsNone(Scenario.load("sm-strict").side_script)


if __name__ == "__main__":
    unittest.main()
