"""A silo's round in process, with the training replaced by a recorder (no torch): the round
is charged to the silo's cap before the corpus is read, exactly once; a cap that cannot afford
it declines the round with nothing read and nothing charged; a failure after the read is
charged in full and raised. The accountant's noise calibration makes these take about a second
(``seconds``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import federation.silo as silo_module
from federation.config import training_config_for_silo
from federation.silo import PRINCIPAL, LocalResult, Silo
from mechanisms.budget import Budget
from mechanisms.ledger_memory import InMemoryLedger
from mechanisms.spend import Spend
from models.training import TrainingRun, plan_training

pytestmark = pytest.mark.seconds

TRAINING = {"steps": 2, "expected_senders_per_batch": 3, "target_epsilon": 2.0,
            "max_seq_len": 8, "max_messages_per_sender": 2, "trainable_layers": 1}
POPULATION = 10
ARRAYS = {"w": np.zeros(2, np.float32)}


class Recorder:
    """Stands for ``federation.silo.local_train``: notes what the ledger held when the round
    would have read the corpus."""

    def __init__(self, ledger: InMemoryLedger, fail: bool = False) -> None:
        self.ledger = ledger
        self.fail = fail
        self.reads: list[list[str]] = []

    def __call__(self, config: Any, *, data_dir: Any, global_arrays: Any, event: Any,
                 run: TrainingRun) -> LocalResult:
        run.corpus_read = True
        self.reads.append([e.status for e in self.ledger.live_entries(PRINCIPAL)])
        if self.fail:
            raise RuntimeError("a failure after the read")
        return LocalResult({"w": np.ones(2, np.float32)}, "snap")


def _silo(tmp_path: Path, cap_rounds: float, monkeypatch: pytest.MonkeyPatch,
          fail: bool = False) -> tuple[Silo, InMemoryLedger, Recorder]:
    ledger = InMemoryLedger()
    event = plan_training(training_config_for_silo(TRAINING, population_size=POPULATION))
    if cap_rounds:
        epsilon = Spend.total([event] * int(cap_rounds)).epsilon(1e-3) * 1.001
        ledger.set_corpus_cap(Budget(epsilon, 1e-3))
    recorder = Recorder(ledger, fail)
    monkeypatch.setattr(silo_module, "local_train", recorder)
    return Silo(tmp_path, ledger, POPULATION), ledger, recorder


def test_each_round_is_charged_once_before_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silo, ledger, recorder = _silo(tmp_path, 2, monkeypatch)
    first = silo.local_round("1", 1, TRAINING, ARRAYS)
    second = silo.local_round("1", 2, TRAINING, ARRAYS)
    # at each read, that round's reservation was already there, and the earlier one committed
    assert recorder.reads == [["reserved"], ["committed", "reserved"]]
    assert [e.status for e in ledger.live_entries(PRINCIPAL)] == ["committed", "committed"]
    assert first.declined is None and first.rounds_trained == 1
    assert second.rounds_trained == 2 and second.epsilon > first.epsilon > 0
    assert second.arrays is not None and second.arrays["w"].tolist() == [1.0, 1.0]


def test_a_cap_that_cannot_afford_the_round_declines_it_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silo, ledger, recorder = _silo(tmp_path, 1, monkeypatch)
    assert silo.local_round("1", 1, TRAINING, ARRAYS).declined is None
    declined = silo.local_round("1", 2, TRAINING, ARRAYS)
    assert declined.declined and declined.arrays is None
    assert declined.rounds_trained == 1  # its figures are those of the round it trained
    assert len(recorder.reads) == 1  # the second round never read
    assert [e.status for e in ledger.live_entries(PRINCIPAL)] == ["committed"]


def test_no_cap_declines_every_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    silo, ledger, recorder = _silo(tmp_path, 0, monkeypatch)
    assert silo.local_round("1", 1, TRAINING, ARRAYS).declined
    assert recorder.reads == [] and ledger.live_entries(PRINCIPAL) == []


def test_a_failure_after_the_read_is_charged_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silo, ledger, recorder = _silo(tmp_path, 2, monkeypatch, fail=True)
    with pytest.raises(RuntimeError):
        silo.local_round("1", 1, TRAINING, ARRAYS)
    assert [e.status for e in ledger.live_entries(PRINCIPAL)] == ["committed"]
