"""Benchmark scripts write their own section of BENCHMARKS.md, between HTML-comment markers,
so a rerun replaces its section and leaves every other one alone."""
import datetime
import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(key: str, heading: str, command: str, text: str) -> None:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    machine = f"Run {datetime.date.today()} on {platform.machine()} with {os.cpu_count()} cores, `{command}`."
    body = "\n".join([begin, machine, "", text, end])
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        current = current[: current.index(begin)] + body + current[current.index(end) + len(end):]
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + body + "\n"
    BENCHMARKS.write_text(current)
