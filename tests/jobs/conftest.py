"""Fixtures for the jobs package's tests: a state database with the job tables and a job
context over a temporary data directory (a lease of 10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from jobs.context import JobContext
from jobs.table import create_tables
from service.store.db import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    create_tables(eng)
    create_tables(eng)  # idempotent
    return eng


@pytest.fixture
def ctx(engine: Engine, tmp_path: Path) -> JobContext:
    return JobContext(engine=engine, data_dir=tmp_path / "data", lease_s=10.0)
