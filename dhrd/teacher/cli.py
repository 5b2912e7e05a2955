"""``dhrd rationales <command>``: generate / merge / import / check, each delegating to
its module's main(argv) (imported only when used: ``check`` needs no torch)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("dhrd.teacher.generate_cli", "main", "generate rationales with a local model or an endpoint"),
    "merge": ("dhrd.teacher.merge", "merge_main", "join shard / regenerated rationale files"),
    "import": ("dhrd.teacher.palm_cot", "main", "import released rationales (PaLM CoT, human explanations)"),
    "check": ("dhrd.teacher.consistency", "main", "label consistency, filter, length statistics"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: dhrd rationales {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, _, help_) in COMMANDS.items():
            print(f"  {name:<{width}}  {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[argv[0]]
    from ..cli_errors import run_main

    return run_main(f"dhrd rationales {argv[0]}", getattr(importlib.import_module(module), func), argv[1:])


if __name__ == "__main__":
    sys.exit(main())
