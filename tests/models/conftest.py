"""Fixtures for the language-model tests: a config that trains in seconds on a CPU (on the
tiny corpus of ``tests/fixtures/app.py``'s ``ingested``) and the model jobs' context; the
corpus fixtures and the ledger backends come from ``tests/fixtures/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.table import create_tables
from mechanisms.ledger_memory import InMemoryLedger
from models.job_bodies import ModelJobContext
from models.registry import base_model_path
from models.training import TrainingConfig
from service.store.db import make_engine
from tests.fixtures.app import (  # noqa: F401 - fixtures
    corpus_file,
    data_dir,
    ingested,
    ingested_template,
)
from tests.fixtures.ledger import (  # noqa: F401 - fixtures (any_ledger needs the PostgreSQL ones)
    any_ledger,
    make_analyst,
    pg_database_url,
    postgres_url,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_config() -> TrainingConfig:
    """2 steps, ~4 of 20 senders per batch (the corpus has 20, as declared), 4 messages of
    <= 16 tokens, top layer only."""
    return TrainingConfig(
        population_size=20,
        target_epsilon=8.0,
        steps=2,
        expected_senders_per_batch=4,
        max_messages_per_sender=4,
        max_seq_len=16,
        trainable_layers=1,
        seed=3,
    )


@pytest.fixture
def ctx(tmp_path: Path) -> ModelJobContext:
    """The model jobs' context: a state database with the job tables, a data directory (the
    ``data_dir`` fixture's, when a test also asks for ``ingested``), an in-memory ledger, the
    public base model for embeddings on the CPU, results kept 60 s, leases of 10 s."""
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    create_tables(engine)
    return ModelJobContext(
        engine=engine,
        data_dir=tmp_path / "data",
        lease_s=10.0,
        ledger=InMemoryLedger(),
        model_source=lambda: ("base", base_model_path()),
        encoder_options={"device": "cpu"},
        result_ttl_s=60,
    )
