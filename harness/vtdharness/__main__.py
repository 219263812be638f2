"""python3 -m vtdharness COMMAND ARGS...: the entry point behind the launchers.

    run       e2e/run           suite     e2e/suite        compare   bench/compare
    report    bench/report      profile   bench/profile/run
    l2-initrd INIT OUT [TAG]    an L2 initramfs (for scenarios that boot the VMM themselves)

A `HarnessError` ends the command with "e2e: error: <sentence>" and status 2; SIGINT and SIGTERM
end it with 130 after the running child is stopped (each command's finally blocks).
"""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path

from .common import HarnessError

COMMANDS = {"run": "run", "suite": "suite", "compare": "compare", "report": "report",
            "profile": "profile", "l2-initrd": "initramfs"}


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds through the commands' cleanup."""


def _interrupt(signum, frame):
    raise Interrupted()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python3 -m vtdharness {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if argv[0] == "l2-initrd":
            from .initramfs import l2_initrd
            args = argv[1:] + [""]
            l2_initrd(Path(args[0]), Path(args[1]), args[2])
            return 0
        module = importlib.import_module(f".{COMMANDS[argv[0]]}", __package__)
        return module.main(argv[1:])
    except HarnessError as e:
        print(f"e2e: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Interrupted:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
