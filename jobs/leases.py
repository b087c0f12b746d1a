"""Leases on running jobs: how a worker on any host tells a job whose worker died from a job
that is still running.

A job is ``running`` from the moment a worker takes it (``jobs.states.mark_running``) until
that worker marks it finished. A worker killed in between (SIGKILL, out of memory, a lost
host) never does: the job would stay ``running`` for ever and its input texts on disk. With
the default SQLite queue there is one consumer per data directory, so a worker that starts
knows that every running job was its predecessor's. With Redis, consumers on many hosts share
the queue and a running job may belong to a live worker elsewhere, whose process no other
host can see.

So a running job holds a lease: one row (job id, holder, expiry in epoch seconds) written in
the same transaction that marks the job running, renewed every ``lease_s / 4`` seconds by a
:class:`Heartbeat` thread of the process that runs the job, and deleted when the job has
ended. A job whose lease has expired (its holder missed four renewals in a row) is orphaned,
and ``jobs.recovery`` fails it. The heartbeat is a thread rather than the job's own
progress calls, so that one long step (a training step, loading a model) keeps the lease.
A process that is alive but frozen (SIGSTOP, a stalled host) for longer than ``lease_s``
loses it: its job is failed, and what the process does when it resumes (a late success, a
settlement) can no longer move the job.

Expiry compares wall clocks: hosts must agree to well within ``lease_s`` (NTP).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from sqlalchemy import ColumnElement, Connection, Engine, delete, exists, insert, update

from jobs.table import job_leases

log = logging.getLogger("privtext.jobs")

#: How long a lease lasts without renewal unless configured (``PRIVTEXT_JOB_LEASE_S``).
DEFAULT_LEASE_S = 60.0


def new_holder() -> str:
    """A name for one run of one job: host and process (for the operator) and a token."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def take(
    conn: Connection, job_id: str, holder: str, lease_s: float, *, now: float | None = None
) -> None:
    """Give ``job_id``'s lease to ``holder`` for ``lease_s`` seconds, in the caller's
    transaction (the one that marks the job running)."""
    t = time.time() if now is None else now
    conn.execute(delete(job_leases).where(job_leases.c.job_id == job_id))
    conn.execute(insert(job_leases).values(job_id=job_id, holder=holder, expires_at=t + lease_s))


def renew(
    engine: Engine, job_id: str, holder: str, lease_s: float, *, now: float | None = None
) -> bool:
    """Extend the lease by ``lease_s`` from now; False when ``holder`` no longer holds it."""
    t = time.time() if now is None else now
    with engine.begin() as conn:
        res = conn.execute(
            update(job_leases)
            .where(job_leases.c.job_id == job_id, job_leases.c.holder == holder)
            .values(expires_at=t + lease_s)
        )
    return res.rowcount == 1


def release(engine: Engine, job_id: str, holder: str | None = None) -> None:
    """Delete the job's lease (only ``holder``'s, when given)."""
    cond = [job_leases.c.job_id == job_id]
    if holder is not None:
        cond.append(job_leases.c.holder == holder)
    with engine.begin() as conn:
        conn.execute(delete(job_leases).where(*cond))


def live(job_id: ColumnElement[str] | str, now: float) -> ColumnElement[bool]:
    """SQL: the job holds a lease that has not expired at ``now``."""
    return exists().where(job_leases.c.job_id == job_id, job_leases.c.expires_at >= now)


class Heartbeat:
    """Renews one job's lease every ``lease_s / 4`` seconds in a daemon thread, from
    :meth:`start` to :meth:`stop` (which also releases the lease). Also a context manager.

    A renewal that fails (the database busy or briefly down) is logged and retried at the
    next beat; a lease found taken away (the job was failed as orphaned) stops the beats.
    """

    def __init__(self, engine: Engine, job_id: str, holder: str, lease_s: float) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.engine = engine
        self.job_id = job_id
        self.holder = holder
        self.lease_s = float(lease_s)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{job_id}", daemon=True
        )

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            release(self.engine, self.job_id, self.holder)
        except Exception:  # noqa: BLE001 - an expired lease of a finished job is harmless
            log.warning("could not release the lease", extra={"job_id": self.job_id})

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                held = renew(self.engine, self.job_id, self.holder, self.lease_s)
            except Exception:  # noqa: BLE001 - retried at the next beat
                log.warning("could not renew the lease", extra={"job_id": self.job_id})
                continue
            if not held:
                self.lost = True
                log.warning(
                    "the job's lease was taken away: it was failed as orphaned",
                    extra={"job_id": self.job_id},
                )
                return
