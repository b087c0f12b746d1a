"""Processes of the tests' own servers (gunicorn, PostgreSQL): started here, read from /proc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def start_gunicorn(
    env: dict[str, str], port: int, workers: int, log: Path
) -> subprocess.Popen[bytes]:
    """gunicorn with the service's config on 127.0.0.1:``port``, ``workers`` workers, logging
    warnings to ``log``; the caller waits until it answers."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "wb") as err:  # gunicorn has its own descriptor
        return subprocess.Popen(
            [str(gunicorn), "--config", "python:service.gunicorn_conf"]
            + ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
            + ["--log-level", "warning", "service.wsgi:app"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (gunicorn's workers, a postmaster's backends)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # field 4 of /proc/PID/stat, after the command in parentheses, is the parent pid
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids
