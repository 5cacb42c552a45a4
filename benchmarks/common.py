"""Helpers shared by the benchmarks: rounds that alternate between sides, peak memory of a process tree,
a served pool, JSON output."""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Sequence


def alternate(sides: dict[str, Callable[[int], object]], rounds: int,
              prepare: Callable[[str, int], None] | None = None) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Call every side once per round, the order rotating each round (two sides alternate), so no side
    always goes first or always follows the same one. `prepare(side, round)` runs untimed before each call.
    Returns each side's wall seconds and return values, round by round."""
    names = list(sides)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if prepare:
                prepare(name, r)
            start = time.perf_counter()
            values[name].append(sides[name](r))
            seconds[name].append(time.perf_counter() - start)
    return seconds, values


def median_range(key: str, values: Sequence[float], digits: int = 3) -> dict:
    """`key`: the median of per-round figures; `key_range`: their [min, max]."""
    return {key: round(statistics.median(values), digits),
            f"{key}_range": [round(min(values), digits), round(max(values), digits)]}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_bytes(root: int) -> int:
    """Resident memory of `root` and all its descendants (Linux /proc)."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        try:
            rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            total += rss_pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
        todo += tree.get(pid, [])
    return total


class PeakRSS:
    """Samples the RSS of this process tree while the block runs; `.peak_gb` after."""

    def __init__(self, every_s: float = 0.2, exclude: tuple[int, ...] = ()):
        self.every_s, self.exclude, self.peak = every_s, exclude, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss_bytes(os.getpid()) - sum(tree_rss_bytes(p) for p in self.exclude)
            self.peak = max(self.peak, rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(self.peak / 2**30, 3)


def _serve(root: str, host: str, port: int, hang_s: float, ready) -> None:
    from curate.synthetic.serve import PoolServer

    with PoolServer(Path(root), host, port, hang_s):
        ready.set()
        threading.Event().wait()


def serve_in_subprocess(synth_dir: Path) -> multiprocessing.Process:
    """Serve a synth pool from another process, so the server does not share a GIL with the client."""
    from curate.synthetic.synth import serve_settings

    s = serve_settings(synth_dir)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_serve, args=(str(synth_dir / "files"), s["host"], s["port"], s["hang_s"], ready),
                       daemon=True)
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("pool server did not start")
    return proc


def emit(result: dict, out_dir: Path | None, name: str) -> None:
    """Print one JSON line and keep a copy in out_dir/<name>.json."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} "
              f"{os.cpu_count()} cpu", **result}
    line = json.dumps(result)
    print(line)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{name}.json").write_text(line + "\n")
