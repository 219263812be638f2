"""vtdharness: the host-side harness of vtd-nest's end-to-end runs and benchmarks.

One package behind e2e/run, e2e/suite, bench/compare and bench/profile/run (thin launchers):

    e2e/run ─────────┐                      ┌─ initramfs.py  L1/L2 initramfs assembly
    e2e/suite ─ suite.py ─ scenarios.py ─┐  │
    bench/compare ─ compare.py ──────────┼─ batch.py ─ launch.py  direct on /dev/kvm, or nested
    bench/profile/run ─ profile.py ──────┘      │                 in one L1 under QEMU TCG
                                                 └─ console.py   the console markers, parsed
    checks.py (the scenarios' host-side checks) ─┘               here and nowhere else
    report.py (bench/compare's tables) ──────────┘

Guest-side scripts (e2e/guest, e2e/lib/l1-init, e2e/lib/l2-init, bench/guest) stay busybox sh,
and so do the scenario files (e2e/scenarios/*.sh), which scenarios.py runs in bash.
"""
