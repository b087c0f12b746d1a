"""Fixtures for the language-model tests: a tiny ingested corpus and a config that trains in
seconds on a CPU."""

from __future__ import annotations

import os

import pytest

from models.training import TrainingConfig

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
