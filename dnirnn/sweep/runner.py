"""Running a grid's cells: one ``python -m dnirnn fit`` process per cell, ``jobs`` at once.

A cell's folder ``<runs>/<cell>/`` holds the run (``version_0/``: metrics.csv, summary.json,
checkpoints), ``fit.log`` (the process's output), ``cell.json`` (its spec and every attempt),
and, at the end, ``done.json`` or ``failed.json``. The state of a cell is read from there:

- ``done``: ``done.json`` with the grid's current spec: skipped.
- ``stale``: ``done.json`` with another spec (the grid changed): skipped and left out of
  the tables; delete the folder to rerun it.
- ``partial``: started, not finished, same spec, a ``last.ckpt``: resumed from it
  (``--fresh``: restarted instead).
- ``new``, or started with no checkpoint or with another spec: (re)started clean (the folder
  is emptied first, so the run lands in ``version_0``).

A failed cell writes ``failed.json`` (exit code, last lines of its log) and the others go
on; the next sweep tries it again, from its ``last.ckpt`` if it has one of the same spec.
Ctrl-C (or SIGTERM) stops starting cells, passes the interrupt on to the running ones (which
save a checkpoint and their summary) and exits 130; they resume next time.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from dnirnn.sweep.grid import env_for
from dnirnn.sweep.parts import Cell, shown

INTERRUPTED = (130, 143, -signal.SIGINT, -signal.SIGTERM)  # (dnirnn exits 130 / 143 itself)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_folder(root: Path) -> Path | None:
    """The cell's run folder (the latest ``version_N``)."""
    versions = [p for p in root.glob("version_*") if p.name[8:].isdigit()]
    return max(versions, key=lambda p: int(p.name[8:]), default=None)


def last_checkpoint(root: Path) -> Path | None:
    v = run_folder(root)
    ckpt = v / "checkpoints" / "last.ckpt" if v else None
    return ckpt if ckpt and ckpt.is_file() else None


def checkpoint_step(ckpt: Path) -> int | None:
    """The training step of a checkpoint (for the dry run's "resume from step N")."""
    try:
        import torch

        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except Exception:
        return None


def state(cell: Cell) -> str:
    """done | stale | failed | partial | new (see the module docstring)."""
    done = read_json(cell.root / "done.json")
    if done is not None:
        return "done" if done.get("spec") == cell.spec() else "stale"
    if (cell.root / "failed.json").is_file():
        return "failed"
    info = read_json(cell.root / "cell.json")
    if info is not None and info.get("spec") == cell.spec() and last_checkpoint(cell.root):
        return "partial"
    return "new"


def launch(cmd: list[str], log: Path, env: dict[str, str], running: set) -> int:
    """Runs one ``python -m dnirnn ...`` process, its output appended to ``log``."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "dnirnn", *cmd], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        running.add(proc)
        try:
            return proc.wait()
        finally:
            running.discard(proc)


_TRACEBACK_END = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b[^ ]*:")


def failure_reason(tail: list[str]) -> str:
    """The line of a failed run's log that says why: dnirnn's own error paragraph
    (``dnirnn: error: ...``; not its warnings), else a traceback's last line, else the last
    line that is not a warning (Lightning's warnings often come after the error)."""
    lines = [ln.strip() for ln in tail if ln.strip()]
    for pick in (lambda ln: ln.startswith("dnirnn: ") and not ln.startswith("dnirnn: warning"),
                 lambda ln: _TRACEBACK_END.match(ln) is not None,
                 lambda ln: "warn" not in ln.lower()):
        found = next((ln for ln in reversed(lines) if pick(ln)), None)
        if found:
            return found
    return lines[-1] if lines else ""


def _tail(log: Path, n: int = 15) -> list[str]:
    try:
        return log.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


class Runner:
    """Runs cells ``jobs`` at a time. ``launch(cmd, log, env, running) -> exit code`` is
    replaceable (tests)."""

    def __init__(self, jobs: int = 1, fresh: bool = False,
                 launch: Callable[..., int] = launch, say: Callable[[str], None] = print):
        self.jobs, self.fresh, self.launch = max(1, jobs), fresh, launch
        self.stop = threading.Event()
        self.running: set = set()
        self._lock = threading.Lock()
        self._say = say

    def say(self, msg: str) -> None:
        with self._lock:
            self._say(f"{time.strftime('%H:%M:%S')} {msg}")

    def run(self, cells: list[Cell]) -> dict[str, str]:
        """Runs the cells that are not done; returns ``{cell: final state}``."""
        results: dict[str, str] = {}

        def one(cell: Cell) -> None:
            if self.stop.is_set():
                results[cell.name] = state(cell)
                return
            try:
                results[cell.name] = self.run_cell(cell)
            except Exception as e:  # a cell's trouble never stops the others
                self.say(f"FAILED {cell.name}: {e!r}")
                results[cell.name] = "failed"

        pool = ThreadPoolExecutor(self.jobs)
        futures = [pool.submit(one, cell) for cell in cells]
        try:  # (waits with a timeout: a Ctrl-C inside Thread.join can lose the thread)
            while len(wait(futures, timeout=1.0).done) < len(futures):
                pass
        except KeyboardInterrupt:
            self.stop.set()
            self.say("interrupted: the running cells save a checkpoint and stop; run the "
                     "same command again to resume them")
            signal_all = signal.SIGINT
            for f in futures:
                f.cancel()
            while True:
                for proc in list(self.running):
                    if proc.poll() is None:
                        proc.send_signal(signal_all)
                try:
                    if len(wait(futures, timeout=60.0).done) == len(futures):
                        break
                except KeyboardInterrupt:  # twice: stop them now
                    signal_all = signal.SIGKILL
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)
        return results

    def run_cell(self, cell: Cell) -> str:
        now = state(cell)
        if now in ("done", "stale"):
            if now == "stale":
                self.say(f"stale  {cell.name}: finished with another spec; kept out of the "
                         f"tables (delete {cell.root} to rerun it)")
            return now
        info = read_json(cell.root / "cell.json")
        if cell.root.is_dir() and any(cell.root.iterdir()) and info is None:
            raise RuntimeError(f"{cell.root} exists and is not a sweep cell (no cell.json); "
                               f"move it away or choose another runs folder")
        same = info is not None and info.get("spec") == cell.spec()
        ckpt = last_checkpoint(cell.root) if same and not self.fresh else None
        if ckpt is None and cell.root.exists():
            shutil.rmtree(cell.root)  # a clean start: the run lands in version_0
        cell.root.mkdir(parents=True, exist_ok=True)
        attempts = list(info.get("attempts", [])) if ckpt and info else []
        (cell.root / "failed.json").unlink(missing_ok=True)
        cmd = cell.fit_args(ckpt)
        record = {"cell": cell.name, "labels": cell.labels, "spec": cell.spec(),
                  "command": shown(cell.fit_args(), cell.threads), "attempts": attempts}
        write_json(cell.root / "cell.json", record)
        self.say(f"start  {cell.name}" + (f" (resuming from {ckpt})" if ckpt else ""))
        env = env_for(cell)
        t0 = time.time()
        rc = self.launch(cmd, cell.root / "fit.log", env, self.running)
        attempts.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
                         "seconds": round(time.time() - t0, 1), "returncode": rc,
                         "resumed_from": str(ckpt) if ckpt else None})
        write_json(cell.root / "cell.json", record)
        if rc in INTERRUPTED:
            self.say(f"stopped {cell.name} (interrupted; resumes next time)")
            return "partial" if last_checkpoint(cell.root) else "new"
        if rc != 0:
            return self._failed(cell, "fit", rc, cell.root / "fit.log")
        if cell.test:
            run = run_folder(cell.root)
            best = run / "checkpoints" / f"{cell.test}.ckpt" if run else None
            if best is None or not best.is_file():
                return self._failed(cell, "test", None, cell.root / "fit.log",
                                    f"no {cell.test}.ckpt in {run} to test")
            shutil.rmtree(cell.root / "test", ignore_errors=True)
            t1 = time.time()
            test_cmd = cell.test_args(best)
            rc = self.launch(test_cmd, cell.root / "test.log", env, self.running)
            attempts[-1]["test_seconds"] = round(time.time() - t1, 1)
            record["test_command"] = shown(test_cmd, cell.threads)
            write_json(cell.root / "cell.json", record)
            if rc in INTERRUPTED:
                return "partial"
            if rc != 0:
                return self._failed(cell, "test", rc, cell.root / "test.log")
        seconds = sum(a["seconds"] + a.get("test_seconds", 0) for a in attempts)
        write_json(cell.root / "done.json", {**record, "seconds": round(seconds, 1)})
        self.say(f"done   {cell.name} ({seconds:.0f} s)")
        return "done"

    def _failed(self, cell: Cell, stage: str, rc: int | None, log: Path,
                why: str | None = None) -> str:
        tail = _tail(log)
        reason = why or failure_reason(tail)
        write_json(cell.root / "failed.json", {"cell": cell.name, "stage": stage,
                                               "returncode": rc, "reason": reason,
                                               "log_tail": tail})
        self.say(f"FAILED {cell.name} ({stage}, exit {rc}): {reason}  [{log}]")
        return "failed"
