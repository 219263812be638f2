"""Option parsing shared by the commands: their interfaces are fixed (other tooling drives
them), so each command lists its options as a table and this walks the arguments."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


class Usage(Exception):
    """Bad usage: the command prints this sentence (if any) and its usage, and exits 2."""


def usage_exit(doc: str, message: str | None = None) -> NoReturn:
    if message:
        print(message, file=sys.stderr)
    sys.stderr.write(doc.strip("\n") + "\n")
    raise SystemExit(2)


def parse(argv: list[str], valued: dict[str, Callable[[str], None]],
          flags: dict[str, Callable[[], None]], *, prog: str, equals: bool = False,
          positional: Callable[[str], None] | None = None,
          rest: Callable[[list[str]], None] | None = None) -> None:
    """VALUED options take the next argument (also --opt=value when EQUALS); FLAGS none;
    POSITIONAL gets other words; REST gets everything after "--". Raises Usage."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help"):
            raise Usage(None)
        if a == "--" and rest is not None:
            rest(argv[i + 1:])
            return
        if a in valued:
            if i + 1 >= len(argv) or argv[i + 1] == "":
                raise Usage(f"{prog}: {a} needs a value")
            valued[a](argv[i + 1])
            i += 2
            continue
        if equals and "=" in a and a.split("=", 1)[0] in valued:
            key, value = a.split("=", 1)
            valued[key](value)
            i += 1
            continue
        if a in flags:
            flags[a]()
            i += 1
            continue
        if positional is not None and not a.startswith("-"):
            positional(a)
            i += 1
            continue
        what = "option" if a.startswith("-") or positional is None else "argument"
        raise Usage(f"{prog}: unknown {what} {a}")
    if rest is not None:
        rest([])
