"""Fixtures for the federation tests: the app and its data directory with the tiny ingested
corpus (``tests/fixtures/app.py``)."""

from __future__ import annotations

import os

from tests.fixtures.app import (  # noqa: F401 - fixtures
    admin_token,
    app,
    client,
    corpus_file,
    data_dir,
    ingested,
    ingested_template,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
