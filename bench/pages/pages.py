#!/usr/bin/env python3
"""Distinct 4 KiB pages of code and data one call of a function touches, from a valgrind
lackey trace (`--trace-mem=yes`): the call starts when the function's first instruction runs
and ends at the next instruction inside the caller.

usage: pages.py TRACE BINARY LOAD_BASE ENTRY_REGEX CALLER_REGEX [--detail]

ENTRY_REGEX and CALLER_REGEX match demangled symbol names (nm -C) of BINARY, which valgrind
loaded at LOAD_BASE (hex; 0x108000 for a position-independent executable). Prints the last
three calls, and with --detail the pages of the last one with the functions that touched them
(functions of shared libraries show as the nearest symbol of BINARY or '?')."""
import bisect
import collections
import re
import subprocess
import sys


def symbols(binary, base):
    out = subprocess.run(["nm", "-S", "-C", "--defined-only", binary],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            yield int(parts[0], 16) + base, int(parts[1], 16), parts[3]


def main():
    args = [a for a in sys.argv[1:] if a != "--detail"]
    detail = "--detail" in sys.argv
    if len(args) != 5:
        sys.exit(__doc__)
    trace, binary, base, entry_re, caller_re = args
    syms = sorted(symbols(binary, int(base, 16)))
    starts = [s[0] for s in syms]
    entries = {a for a, _, name in syms if re.search(entry_re, name)}
    callers = [(a, a + n) for a, n, name in syms if re.search(caller_re, name)]
    if not entries or not callers:
        sys.exit("pages.py: entry or caller symbol not found in " + binary)

    def name(addr):
        i = bisect.bisect_right(starts, addr) - 1
        return syms[i][2][:100] if i >= 0 else "?"

    calls, current, last_instruction = [], None, 0
    with open(trace) as f:
        for line in f:
            kind = line[:2].strip()
            if kind not in ("I", "L", "S", "M"):
                continue
            try:
                addr = int(line[3:].split(",")[0], 16)
            except ValueError:
                continue
            if kind == "I":
                if current is None and addr in entries:
                    current = (collections.defaultdict(set), collections.defaultdict(set), [0])
                elif current is not None and any(s <= addr < e for s, e in callers):
                    calls.append(current)
                    current = None
                    continue
                if current is not None:
                    current[2][0] += 1
                    current[0][addr >> 12].add(name(addr) if detail else "")
                    last_instruction = addr
            elif current is not None:
                current[1][addr >> 12].add(name(last_instruction) if detail else "")
    if not calls:
        sys.exit("pages.py: no complete call in the trace")
    for code, data, n in calls[-3:]:
        print(f"instructions {n[0]} code pages {len(code)} data pages {len(data)} "
              f"pages {len(code) + len(data)}")
    if detail:
        code, data, _ = calls[-1]
        for title, pages in (("code", code), ("data", data)):
            print(title)
            for page in sorted(pages):
                print(f"  {page:x}: " + "; ".join(sorted(pages[page]))[:300])


main()
