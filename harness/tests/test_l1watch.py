"""Watching L1 for progress and reading where its vCPUs are: the watchdog's decision, the QMP
client, QEMU's register dump, L1's symbols."""

import contextlib
import io
import json
import os
import socket
import tempfile
import threading
import unittest
from pathlib import Path
from unittest import mock

from vtdharness import launch, l1state, l1watch
from vtdharness.batch import Batch
from vtdharness.common import HarnessError

# `info registers -a` as QEMU 10 prints it (trimmed to the lines read, plus neighbours): vCPU 0
# halted in L1's kernel (GS in L1's direct map), vCPU 1 in L2's kernel (L2's randomized map).
REGISTERS = """
CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000001 RDX=0000000000000000
RIP=ffffffff81ce705f RFL=00000216 [----AP-] CPL=0 II=0 A20=1 SMM=0 HLT=1
ES =0000 0000000000000000 00000000 00000000
GS =0000 ffff88807c600000 00000000 00000000
EFER=0000000000001d01

CPU#1
RAX=0000000000000000 RBX=ffffc900001c6ea8 RCX=ffffffffffffffff RDX=7b7a6844b531e7d2
RIP=ffffffff95515ea0 RFL=00000247 [---Z-PC] CPL=0 II=0 A20=1 SMM=0 HLT=0
GS =0000 ffff8db15f200000 00000000 00000000
EFER=0000000000001d01

CPU#2
RIP=0000000000401000 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0
GS =0000 0000000000000000 00000000 00000000

CPU#3
RIP=ffffffff81ce7050 RFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
GS =0000 0000000000000000 00000000 00000000

CPU#4
RAX=0000000000000000 (a block cut short: no RIP)
"""

KALLSYMS = """0000000000000000 A fixed_percpu_data
ffffffff81000000 T _text
ffffffff81ce7050 T pv_native_safe_halt
ffffffff81ce7070 t default_idle
ffffffff81ce7080 d idle_data
ffffffff82c10000 D init_task
ffffffffc0a1e000 t svm_vcpu_run\t[kvm_amd]
ffffffffc0a1f000 T svm_vcpu_enter_exit\t[kvm_amd]
"""

GIB2 = 2 << 30

# `info lapic 1` of an L1 found stuck: the LAPIC timer's vector 236 in service on a halted CPU.
LAPIC_STUCK = """dumping local APIC state for CPU 1

LVTT	 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)
Timer	 DCR=0x3 (divide by 16) initial_count = 234911 current_count = 0
ISR	 236
IRR	 75 236

APR 0x01 TPR 0x10 DFR 0x0f LDR 0x00 PPR 0xe0
"""
LAPIC_IDLE = """ISR	 (none)
IRR	 (none)

APR 0x00 TPR 0x10 DFR 0x0f LDR 0x00 PPR 0x10
"""


class Registers(unittest.TestCase):
    def test_the_dump_is_read_per_vcpu(self):
        vcpus = l1state.parse_registers(REGISTERS)
        self.assertEqual([v.index for v in vcpus], [0, 1, 2, 3])
        self.assertEqual((vcpus[0].rip, vcpus[0].cpl, vcpus[0].halted),
                         (0xffffffff81ce705f, 0, True))
        self.assertEqual([v.level(GIB2) for v in vcpus],
                         ["L1 kernel", "L2 kernel", "user", "kernel entry"])

    def test_a_gs_base_beyond_l1s_memory_is_not_l1(self):
        v = l1state.parse_registers(REGISTERS)[0]
        self.assertEqual(v.level(1 << 30), "L2 kernel")

    def test_nothing_readable_gives_no_vcpus(self):
        self.assertEqual(l1state.parse_registers("Error: no CPU\n"), [])


class Lapic(unittest.TestCase):
    def test_vectors_and_priority(self):
        self.assertEqual(l1state.parse_lapic(LAPIC_STUCK), l1state.Lapic((236,), (75, 236), 0xe0))
        self.assertEqual(l1state.parse_lapic(LAPIC_IDLE), l1state.Lapic((), (), 0x10))

    def test_a_halted_vcpu_with_a_vector_in_service_is_stuck(self):
        halted, running = l1state.parse_registers(REGISTERS)[:2]
        stuck = l1state.parse_lapic(LAPIC_STUCK)
        self.assertEqual(stuck.stuck(halted),
                         "vCPU 0 is halted with vector(s) 236 in service (no EOI came; "
                         "requested: 75 236, PPR 0xe0)")
        self.assertIsNone(stuck.stuck(running))
        self.assertIsNone(l1state.parse_lapic(LAPIC_IDLE).stuck(halted))


class Symbols(unittest.TestCase):
    def setUp(self):
        self.syms = l1state.Symbols.from_kallsyms(KALLSYMS)

    def test_text_symbols_of_kernel_and_modules(self):
        self.assertEqual(self.syms.name(0xffffffff81ce705f), "pv_native_safe_halt+0xf")
        self.assertEqual(self.syms.name(0xffffffffc0a1e02a), "svm_vcpu_run+0x2a [kvm_amd]")
        self.assertEqual(self.syms.name(0xffffffff81000000), "_text+0x0")

    def test_data_symbols_are_not_candidates(self):
        self.assertEqual(self.syms.name(0xffffffff81ce7090), "default_idle+0x20")

    def test_no_name_below_the_first_or_far_beyond_the_last(self):
        self.assertIsNone(self.syms.name(0xffffffff80000000))
        self.assertIsNone(self.syms.name(0xffffffff82c10010, max_offset=0x1000))
        self.assertIsNone(self.syms.name(0xffffffffc0a1f000 + (2 << 20)))

    def test_describe_names_l1s_symbol_only_in_l1s_kernel(self):
        v0, v1, v2, v3 = l1state.parse_registers(REGISTERS)
        self.assertEqual(l1state.describe(v0, GIB2, self.syms),
                         "vCPU 0: L1 kernel, RIP ffffffff81ce705f pv_native_safe_halt+0xf "
                         "(GS ffff88807c600000), halted")
        self.assertEqual(l1state.describe(v1, GIB2, self.syms),
                         "vCPU 1: L2 kernel, RIP ffffffff95515ea0 (GS ffff8db15f200000)")
        self.assertEqual(l1state.describe(v2, GIB2, None), "vCPU 2: user, RIP 0000000000401000")
        self.assertEqual(l1state.describe(v3, GIB2, self.syms),
                         "vCPU 3: kernel entry, RIP ffffffff81ce7050 (if L1's: "
                         "pv_native_safe_halt+0x0) (GS 0)")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Watchdog(unittest.TestCase):
    def setUp(self):
        self.clock = FakeClock()
        self.fired = []
        self.dog = l1watch.Watchdog(30, lambda silent, job: self.fired.append((silent, job)),
                                    clock=self.clock)

    def test_fires_once_after_the_limit_and_names_the_job(self):
        self.dog.progress(["e2e-l1: L1 up 3 s", "VTD-NEST-JOB irqchip-split"])
        self.assertEqual((self.dog.jobs_started, self.dog.l1_done), (1, False))
        self.clock.now += 30
        self.assertFalse(self.dog.check())
        self.clock.now += 1
        self.assertTrue(self.dog.check())
        self.clock.now += 100
        self.assertFalse(self.dog.check())
        self.assertEqual(self.fired, [(31, "irqchip-split")])

    def test_output_restarts_the_clock(self):
        for _ in range(5):
            self.clock.now += 25
            self.dog.progress(["CHECK-OK something"])
            self.assertFalse(self.dog.check())
        self.clock.now += 31
        self.assertTrue(self.dog.check())
        self.assertEqual(self.fired, [(31, None)])

    def test_the_thread_stops_without_firing(self):
        self.dog.start()
        self.dog.stop()
        self.assertEqual(self.fired, [])


class Reboots(unittest.TestCase):
    """After L1 got stuck in a job, a fresh L1 runs the jobs after it (boot_l1 stubbed: it
    returns how many of its jobs had started when L1 got stuck, or None)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        work = Path(self.tmp.name)
        (work / "init").write_text("true\n")
        self.batch = Batch(work / "batch")
        for name in "abcde":
            self.batch.add(name, "qemu", work / "init", 1, [], [])
        self.runner = launch.Runner(self.batch, live=False)

    def tearDown(self):
        self.tmp.cleanup()

    def boots(self, results):
        firsts = []

        def boot(batch, runner, qemu, append, vmm, first):
            firsts.append(first)
            return results[len(firsts) - 1]

        with mock.patch.object(launch, "boot_l1", boot), mock.patch.object(launch, "log"), \
                mock.patch.dict(os.environ, {"VTD_NEST_E2E_L1_IOMMU": "off"}):
            launch.launch_nested(self.batch, self.runner)
        return firsts

    def test_the_job_l1_got_stuck_in_runs_once_more_in_a_new_l1_with_the_rest(self):
        self.assertEqual(self.boots([2, None]), [0, 1])
        self.assertIn("booting L1 again to run b once more and the 3 job(s) after it",
                      self.batch.console.read_text())
        self.assertTrue((self.batch.jobs[1].dir / "retried").exists())
        self.assertFalse((self.batch.jobs[0].dir / "retried").exists())

    def test_a_job_l1_fails_in_twice_is_left_behind(self):
        self.assertEqual(self.boots([2, 1, None]), [0, 1, 2])
        self.assertIn("booting L1 again for the 3 job(s) after b",
                      self.batch.console.read_text())

    def test_the_last_job_is_run_again_too_but_no_boot_before_the_first(self):
        self.assertEqual(self.boots([5, None]), [0, 4])
        self.assertEqual(self.boots([0]), [0])

    def test_boots_are_bounded(self):
        self.assertEqual(self.boots([1] * 5), [0, 0, 1][:launch.L1_BOOTS])


class OneBoot(unittest.TestCase):
    """boot_l1's answer from what L1's console said (QEMU and the initramfs stubbed)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        work = Path(self.tmp.name)
        (work / "init").write_text("true\n")
        self.batch = Batch(work / "batch")
        for name in "abc":
            self.batch.add(name, "qemu", work / "init", 1, [], [])
        self.runner = launch.Runner(self.batch, live=False)

    def tearDown(self):
        self.tmp.cleanup()

    def boot(self, console_lines, rc):
        def run(cmd, watch):
            watch.progress(console_lines)
            return rc

        with mock.patch.object(launch, "l1_initrd"), mock.patch.object(launch, "log"), \
                mock.patch.object(self.runner, "run", run), \
                contextlib.redirect_stderr(io.StringIO()):
            return launch.boot_l1(self.batch, self.runner, ["qemu"], "", None, 0)

    def test_an_l1_that_ran_every_job_is_done(self):
        self.assertIsNone(self.boot(["VTD-NEST-JOB a", "VTD-NEST-EXIT 0", "VTD-NEST-JOB b",
                                     "VTD-NEST-EXIT 0", "VTD-NEST-JOB c", "VTD-NEST-EXIT 1",
                                     "VTD-NEST-L1-DONE"], 0))

    def test_an_l1_that_died_in_a_job_counts_the_jobs_started(self):
        self.assertEqual(self.boot(["VTD-NEST-JOB a", "VTD-NEST-EXIT 0", "VTD-NEST-JOB b",
                                    "[ 89.9] Kernel panic - not syncing: corrupted stack end"],
                                   0), 2)
        self.assertIn("e2e: L1 ended during job b without finishing its jobs",
                      self.batch.console.read_text())

    def test_an_l1_out_of_time_is_not_booted_again(self):
        self.assertIsNone(self.boot(["VTD-NEST-JOB a"], 124))
        self.assertTrue((self.batch.work / "l1-timed-out").exists())


class StallLimit(unittest.TestCase):
    def test_the_longest_job_plus_grace_and_margin(self):
        with mock.patch.dict(os.environ, {"VTD_NEST_E2E_L1_STALL": ""}):
            self.assertEqual(l1watch.stall_limit(90, 30), 90 + 30 + l1watch.STALL_MARGIN)

    def test_the_environment_overrides_and_is_checked(self):
        with mock.patch.dict(os.environ, {"VTD_NEST_E2E_L1_STALL": "7"}):
            self.assertEqual(l1watch.stall_limit(90, 30), 7)
        for bad in ("0", "-1", "2m"):
            with mock.patch.dict(os.environ, {"VTD_NEST_E2E_L1_STALL": bad}):
                with self.assertRaises(HarnessError):
                    l1watch.stall_limit(90, 30)


class FakeMonitor:
    """A QMP server on a unix socket, one connection: a greeting, then answers from a table
    (an event before each answer, as QEMU may send)."""

    def __init__(self, path: Path, answers: dict):
        self.path, self.answers = path, answers
        self.received: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            f.flush()
            for line in f:
                req = json.loads(line)
                self.received.append(req)
                key = req["execute"]
                if key == "human-monitor-command":
                    key = req["arguments"]["command-line"]
                f.write(b'{"event": "RTC_CHANGE", "data": {}}\n')
                f.write(json.dumps(self.answers.get(key, {"error": {"desc": "no such"}}))
                        .encode() + b"\n")
                f.flush()
        self.server.close()


class Qmp(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.sock = Path(self.tmp.name) / "qmp.sock"

    def tearDown(self):
        self.tmp.cleanup()

    def test_capabilities_then_human_commands(self):
        mon = FakeMonitor(self.sock, {"qmp_capabilities": {"return": {}},
                                      "info registers -a": {"return": REGISTERS}})
        with l1state.Qmp(self.sock) as qmp:
            self.assertEqual(len(l1state.parse_registers(qmp.hmp("info registers -a"))), 4)
            with self.assertRaisesRegex(l1state.QmpError, "no such"):
                qmp.hmp("info nothing")
        mon.thread.join()
        self.assertEqual([r["execute"] for r in mon.received],
                         ["qmp_capabilities", "human-monitor-command", "human-monitor-command"])

    def test_a_stall_look_gathers_samples_controllers_and_presses_sysrq(self):
        answers = {"qmp_capabilities": {"return": {}},
                   "info registers -a": {"return": REGISTERS},
                   "info pic": {"return": "ioapic0: ver=0x20\n"},
                   "info lapic 0": {"return": LAPIC_STUCK},
                   "info lapic 1": {"return": LAPIC_IDLE},
                   "info lapic 2": {"return": LAPIC_IDLE},
                   "info lapic 3": {"return": LAPIC_IDLE}}
        for key in ("9", "l", "w"):
            answers[f"sendkey alt-sysrq-{key}"] = {"return": ""}
        for port in ("0x3f9", "0x3fd"):
            answers[f"i /b {port}"] = {"return": f"portb[{port}] = 0x60\n"}
        mon = FakeMonitor(self.sock, answers)
        samples, lapics, raw = [], {}, []
        with mock.patch.object(l1watch.time, "sleep"), l1state.Qmp(self.sock) as qmp:
            l1watch.Stall._look(qmp, samples, lapics, raw)
        mon.thread.join()
        self.assertEqual(len(samples), l1watch.SAMPLES)
        self.assertEqual(sorted(lapics), [0, 1, 2, 3])
        self.assertEqual(lapics[0].isr, (236,))
        said = [r["arguments"]["command-line"] for r in mon.received[1:]]
        self.assertEqual(said[-3:], ["sendkey alt-sysrq-9", "sendkey alt-sysrq-l",
                                     "sendkey alt-sysrq-w"])
        self.assertTrue(any(r.startswith("== COM1 LSR: portb[0x3fd]") for r in raw))

    def test_a_stall_without_a_monitor_still_marks_reports_and_stops(self):
        work = Path(self.tmp.name)
        said, stopped = [], []
        stall = l1watch.Stall(work, self.sock, ["qemu"], "console=ttyS0", GIB2, said.append,
                              lambda: stopped.append(True))
        stall.diagnose(200.4, "irqchip-split")
        self.assertTrue(stopped)
        self.assertEqual((work / "l1-stalled").read_text(), "200 irqchip-split\n")
        self.assertEqual(said[0], "e2e: L1 made no progress for 200 s (its console silent) "
                                  "during job irqchip-split; looking at its vCPUs")
        self.assertTrue(said[1].startswith("e2e: L1's monitor did not answer"))
        self.assertIn("=== L1 stuck during job irqchip-split", stall.report.read_text())

    def test_no_monitor_is_a_qmp_error(self):
        with self.assertRaises(l1state.QmpError):
            l1state.Qmp(self.sock, timeout=1)


if __name__ == "__main__":
    unittest.main()
