"""A silo killed in the middle of a round, as real processes on loopback: the coordinator and
three silos as in ``test_processes.py``, one round with a round timeout of 45 s; silo 2's
SuperNode and every process under it are killed (SIGKILL) once its round has been charged
(its reservation is in its ledger) and before the round returns. The round goes on with the
two others after the timeout, their average is published in both, and the killed silo's charge
stays counted (reserved or committed, never refunded). About 2-3 minutes on 2 shared cores
(the timeout runs out twice: the round, and the publication the dead silo never answers):
``slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from corpus.ingest import ingest_file
from federation.silo import PRINCIPAL
from mechanisms.budget import Budget
from models.registry import ModelRegistry
from tests.factories import make_messages, write_jsonl
from tests.federation.test_processes import (
    POPULATION,
    TRAINING,
    _env,
    _free_port,
    _ledger,
    _privtext,
    _silo_of,
    _stop,
)
from tests.procs import children

pytest.importorskip("flwr")

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TIMEOUT_S = 45


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def _kill_when_charged(node: subprocess.Popen[bytes], data_dir: Path, deadline: float) -> bool:
    """SIGKILL ``node`` and everything under it (Flower detaches its SuperExec into a session
    of its own, so by pid) once the silo's ledger holds a reserved round; False if never."""
    ledger = _ledger(data_dir)
    while time.monotonic() < deadline and node.poll() is None:
        if any(e.status == "reserved" for e in ledger.live_entries(PRINCIPAL)):
            for pid in [*_descendants(node.pid), node.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            node.wait()
            return True
        time.sleep(0.05)
    return False


def test_a_silo_killed_mid_round_does_not_stall_the_round(tmp_path: Path) -> None:
    rows = make_messages()
    silos = [tmp_path / f"silo{i}" for i in range(3)]
    for i, silo in enumerate(silos):
        (silo / "data").mkdir(parents=True)
        mine = [r for r in rows if _silo_of(r["sender"]) == i]
        ingest_file(write_jsonl(silo / "corpus.jsonl", mine), silo / "data", workers=1)
        _ledger(silo / "data").set_corpus_cap(Budget(100.0, 1e-3))
    port, summary = _free_port(), tmp_path / "summary.json"
    logs: dict[str, Any] = {n: open(tmp_path / f"{n}.log", "wb") for n in ("serve", "0", "1", "2")}
    serve = subprocess.Popen(
        _privtext(tmp_path / "coordinator", "federation", "serve", "--insecure", "--port",
                  str(port), "--rounds", "1", "--min-silos", "3", "--min-results", "2",
                  "--round-timeout", str(TIMEOUT_S), "--summary", str(summary),
                  *[a for k, v in TRAINING.items() for a in (f"--{k.replace('_', '-')}", str(v))]),
        env=_env(), stdout=logs["serve"], stderr=subprocess.STDOUT, start_new_session=True,
    )
    nodes = [
        subprocess.Popen(
            _privtext(silo / "data", "federation", "join", "--insecure", "--superlink",
                      f"127.0.0.1:{port}", "--population-size", str(POPULATION),
                      "--port", str(_free_port())),
            env=_env(), stdout=logs[str(i)], stderr=subprocess.STDOUT, start_new_session=True,
        )
        for i, silo in enumerate(silos)
    ]
    try:
        killed = _kill_when_charged(nodes[2], silos[2] / "data", time.monotonic() + 300)
        rc = serve.wait(timeout=600)
    finally:
        for proc in (serve, *nodes):
            _stop(proc)
        for fh in logs.values():
            fh.close()
    assert killed, "silo 2 was never seen mid-round"
    assert rc == 0, (tmp_path / "serve.log").read_text()[-3000:]
    result = json.loads(summary.read_text())
    (only,) = result["rounds"]
    assert only["accepted"] == 2 and only["averaged"] is True
    assert len(only["silos"]) == 2  # the killed silo never answered
    published = sorted(result["published"].values(), key=lambda p: "error" in p)
    assert ["model_id" in p for p in published] == [True, True, False]
    assert "Node Unavailable" in published[2]["error"]  # Flower's word for the dead silo
    for silo in silos[:2]:
        assert len(ModelRegistry(silo / "data").list()) == 2
    assert len(ModelRegistry(silos[2] / "data").list()) == 1  # base only
    entries = [e for e in _ledger(silos[2] / "data").history(PRINCIPAL) if e.scope == "corpus"]
    assert [e.status for e in entries] in (["reserved"], ["committed"])  # still counted
