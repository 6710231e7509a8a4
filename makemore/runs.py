"""The run store: a run is a folder, and a folder holding a run is never replaced silently.

A run folder holds `run.json` (the exact command, the backend, preset, spec, config, data file and
its sha256, the status), `checkpoint.safetensors` (resumable: parameters plus optimizer state,
step, batch-stream position and per-step losses so far), and when finished `metrics.json`,
`loss.png` and `samples.txt`. Every write is atomic (a temp file in the same folder, then
`os.replace`), so a kill at any moment leaves each file whole: the old one or the new one.

Status in run.json: "running" (being trained, or killed: resumable), "interrupted" (stopped by
Ctrl-C/SIGTERM after writing a checkpoint: resumable), "diverged", "finished".
Source: docs/design.md, "Runs, studies and the harness".
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import time
from pathlib import Path

from shared.checkpoint import atomic_file

RUN_JSON = "run.json"
CHECKPOINT = "checkpoint.safetensors"
RUN_FILES = (RUN_JSON, CHECKPOINT, "metrics.json", "loss.png", "samples.txt")
RESUMABLE = ("running", "interrupted")
# run settings (TrainConfig fields) added after run folders were first written, with the value a
# run recorded without them trained with: read_run, and the trainer for a checkpoint's config,
# fill them in, so an older run reads as it ran
ADDED_SETTINGS = {"ema": 0.0}


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (it holds a run, has none to resume, or its
    run does not match the command); the message names the folder and the choices."""


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_run(folder: str | os.PathLike) -> dict | None:
    """The folder's run.json as a dict, None if there is none; its settings with ADDED_SETTINGS
    filled in where it has none of them.

    Raises RunFolderError if run.json exists but is not valid JSON."""
    p = Path(folder) / RUN_JSON
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{p} is unreadable ({e}); move the folder aside or pass another --out") from e
    if isinstance(rec, dict) and isinstance(rec.get("settings"), dict):
        rec["settings"] = {**ADDED_SETTINGS, **rec["settings"]}
    return rec


def run_files(folder: str | os.PathLike) -> list[str]:
    """Names of the run files present in `folder` (run.json, checkpoint, metrics, plot, samples)."""
    folder = Path(folder)
    return [f for f in RUN_FILES if (folder / f).exists()]


def describe(folder: str | os.PathLike) -> str:
    """One phrase about what run the folder holds, e.g. 'a finished torch wavenet run (200000 steps)'."""
    rec = read_run(folder) or {}
    if not rec:
        return f"an earlier run ({', '.join(run_files(folder))})"
    cfg = rec.get("config", {})
    return (f"a {rec.get('status', 'unknown')} {rec.get('backend', '?')} {rec.get('preset', '?')} run "
            f"({cfg.get('steps', '?')} steps)")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    # (state, start time) of process `pid`: fields 3 and 22 of Linux's /proc/PID/stat (proc(5));
    # None where there is no such process or no /proc
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def proc_start(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of Linux's /proc/PID/stat, clock ticks since
    boot; proc(5)), which tells a live pid from a reused one; None without /proc."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def pid_space() -> str:
    """Where a pid means one process: this kernel boot and pid namespace (two containers, or two
    machines, can share a hostname but not both), plus the hostname for the reader."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
        return f"{socket.gethostname()}:{boot}:{ns}"
    except OSError:
        return socket.gethostname()


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` of this pid_space() still runs: it exists, is not a zombie (killed,
    not yet reaped by its parent) and, when `start` (proc_start when it began) is given, is the
    same process, not a new one given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)   # one read for the state and the start time
    if stat and stat[0] in ("Z", "X"):
        return False
    return start is None or stat is None or stat[1] == start


def _alive(rec: dict) -> bool:
    # the process run.json names still trains the run (records without pid_space: same hostname)
    pid = rec.get("pid")
    if not pid or pid == os.getpid():
        return False
    here = pid_space()
    if rec.get("pid_space", here) != here or rec.get("host") != socket.gethostname():
        return False
    return process_alive(pid, rec.get("pid_start"))


def prepare_new(folder: str | os.PathLike, overwrite: bool) -> None:
    """Make `folder` ready for a new run. A folder holding any run file is refused unless
    `overwrite`, in which case only the run files are removed (nothing else in the folder).

    Raises RunFolderError naming the choices (--resume, --overwrite, another --out); the
    folder is unchanged then."""
    folder = Path(folder)
    present = run_files(folder)
    if not present:
        return
    rec = read_run(folder) or {}
    if rec.get("status") == "running" and _alive(rec):
        raise RunFolderError(f"{folder} is being trained right now by process {rec['pid']}; "
                             "wait for it or choose another --out")
    if not overwrite:
        hint = f"--resume {folder} to continue it, " if rec.get("status") in RESUMABLE else ""
        raise RunFolderError(f"{folder} holds {describe(folder)}; nothing was changed. Use {hint}"
                             "--overwrite to replace it, or another --out")
    for f in present:
        (folder / f).unlink()


def start(folder: str | os.PathLike, record: dict) -> dict:
    """Write run.json for a run that starts (or resumes) now: `record` plus status 'running',
    pid, host and the time; returns what was written."""
    rec = dict(record, status="running", pid=os.getpid(), host=socket.gethostname(),
               pid_space=pid_space(), pid_start=proc_start(os.getpid()),
               updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_atomic(Path(folder) / RUN_JSON, json.dumps(rec, indent=1, sort_keys=True))
    return rec


def mark(folder: str | os.PathLike, status: str, **extra) -> dict:
    """Update run.json's status (and any extra fields) atomically; returns the record."""
    rec = read_run(folder) or {}
    rec.update(extra, status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if status != "running":
        for k in ("pid", "pid_space", "pid_start"):
            rec.pop(k, None)
    write_atomic(Path(folder) / RUN_JSON, json.dumps(rec, indent=1, sort_keys=True))
    return rec


def open_for_resume(folder: str | os.PathLike) -> dict:
    """The record of a run that can be resumed in `folder`.

    Raises RunFolderError: no run there, the run finished or diverged, or another process is
    training it now."""
    folder = Path(folder)
    rec = read_run(folder)
    if rec is None:
        what = f"no run.json ({', '.join(run_files(folder))} only)" if run_files(folder) else "no run"
        raise RunFolderError(f"--resume {folder}: the folder holds {what}; start a run there with "
                             f"makemore train --out {folder}")
    status = rec.get("status")
    if status == "finished":
        raise RunFolderError(f"--resume {folder}: the run finished ({rec['config']['steps']} steps); "
                             "nothing to resume. Use --overwrite to train it again, or another --out")
    if status not in RESUMABLE:
        raise RunFolderError(f"--resume {folder}: the run {status}; it cannot be resumed. Use "
                             "--overwrite to start it again with other settings")
    if status == "running" and _alive(rec):
        raise RunFolderError(f"--resume {folder}: process {rec['pid']} is training it right now")
    return rec


def differences(recorded: dict, given: dict) -> list[str]:
    """'name: run has A, command gives B' for every key of `given` whose value differs."""
    return [f"{k}: the run has {recorded.get(k)!r}, the command gives {v!r}"
            for k, v in given.items() if recorded.get(k) != v]


def command_line(argv: list[str]) -> str:
    """The shell command that ran (`makemore` plus its arguments), quoted for a shell."""
    return shlex.join(["makemore", *argv])
