#!/usr/bin/env python3
"""Interleaved whole-process timings: run commands A, B, C, A, B, C, ... N times each.

hyperfine runs one command's batch after the other, so on a shared machine a burst of
background load lands on one command only. Alternating spreads it evenly, which makes
the comparison fair even when absolute times are noisy. Reports the median and 10th
percentile of wall time and the median CPU time (user + system, from wait4) per command.

usage: interleave.py N NAME=COMMAND [NAME=COMMAND ...]   (COMMAND split on spaces)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def run_once(argv: list[str], devnull: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    return wall, ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status)


def main() -> int:
    n = int(sys.argv[1])
    cmds = []
    for spec in sys.argv[2:]:
        name, _, cmd = spec.partition("=")
        cmds.append((name, cmd.split()))
    devnull = os.open(os.devnull, os.O_WRONLY)
    walls: dict[str, list[float]] = {name: [] for name, _ in cmds}
    cpus: dict[str, list[float]] = {name: [] for name, _ in cmds}
    for _ in range(5):  # warm-up
        for _, argv in cmds:
            run_once(argv, devnull)
    for _ in range(n):
        for name, argv in cmds:
            wall, cpu, code = run_once(argv, devnull)
            if code != 0:
                print(f"{name} exited {code}", file=sys.stderr)
                return 1
            walls[name].append(wall)
            cpus[name].append(cpu)
    out = {}
    for name, _ in cmds:
        w = sorted(walls[name])
        out[name] = {
            "runs": n,
            "median_ms": statistics.median(w) * 1e3,
            "p10_ms": w[len(w) // 10] * 1e3,
            "cpu_median_ms": statistics.median(cpus[name]) * 1e3,
        }
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
