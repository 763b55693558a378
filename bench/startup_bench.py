"""Start-up benchmark: `provision --help` (and each group's --help) against a bare interpreter.

Baseline, measured in the same run with the same interpreter: `python -c pass`, and, for
reference, `python -c "import click"` (the floor of any click command line). Runs of the
baseline and of the commands are interleaved so that a busy machine slows both alike.
Target (from the issue): `provision --help` under 4x the bare interpreter.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 4.0
GROUPS = ("run", "runs", "demo", "data", "dev")


def provision_command() -> list[str]:
    """The installed console script when present (what users run), else `python -m`."""
    script = Path(sys.executable).parent / "provision"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "provisioner.cli.main"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def medians(commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time of each command over `runs` rounds, one of each per round."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # warm the file cache and .pyc files first
        timed(argv)
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(timed(argv))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench startup")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    provision = provision_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import click'": [sys.executable, "-c", "import click"],
        "provision --help": [*provision, "--help"],
        **{f"provision {group} --help": [*provision, group, "--help"] for group in GROUPS},
    }
    times = medians(commands, args.runs)
    base = times["python -c pass"]
    print(
        f"Start-up, median of {args.runs} runs each (baseline: python -c pass = "
        f"{base * 1000:.1f} ms)"
    )
    for name, seconds in times.items():
        print(f"  {name:<28} {seconds * 1000:7.1f} ms  {seconds / base:5.1f}x")
    ratio = times["provision --help"] / base
    if ratio >= TARGET_RATIO:
        print(
            f"Target missed: provision --help is {ratio:.1f}x python -c pass "
            f"(target under {TARGET_RATIO:g}x)"
        )
        return 1
    print(f"provision --help: {ratio:.1f}x python -c pass (target under {TARGET_RATIO:g}x): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
