"""What every job runs with: the state database, the data directory, the lease length, and
the job's own directory and input file.

A job's input (e.g. the texts an app asked to embed) is the caller's data: it is written
once, mode 0600, to ``<data_dir>/jobs/<job_id>/input.json`` and deleted when the job ends,
however it ends: by the worker when it succeeds, fails or is cancelled while running, by
``jobs.states.cancel`` when it is cancelled while queued, by ``jobs.recovery`` when its
worker died or a process stopped between ending the job and deleting the file.

Kind-specific settings (the ledger a training is charged to, the model an embedding job
uses) are added by ``models.job_bodies.ModelJobContext``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from jobs.leases import DEFAULT_LEASE_S

INPUT_FILE = "input.json"


@dataclass
class JobContext:
    """``engine``: the state database holding the job tables; ``data_dir``: where the jobs'
    files live (under ``jobs/``); ``lease_s``: how long a worker's lease on a running job
    lasts without renewal (``jobs.leases``)."""

    engine: Engine
    data_dir: Path
    lease_s: float = DEFAULT_LEASE_S

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / INPUT_FILE

    def write_input(self, job_id: str, value: Any) -> Path:
        """Store a job's input as JSON (mode 0600) until the job ends; returns the file."""
        d = self.job_dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / INPUT_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
        return path

    def read_input(self, job_id: str) -> Any:
        return json.loads(self.input_path(job_id).read_text(encoding="utf-8"))

    def delete_input(self, job_id: str) -> None:
        self.input_path(job_id).unlink(missing_ok=True)
