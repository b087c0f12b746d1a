"""The federated model's weights as named numpy arrays: what a round exchanges.

Only the trainable parameters of :class:`models.mlm.MaskedLM` travel (the top
``trainable_layers`` encoder layers and the MLM head's dense, norm and bias); the embeddings
and the lower layers are the public base weights, the same in every silo. Loads torch.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.mlm import MaskedLM, load_base, save_sentence_transformer
from models.registry import base_model_path
from models.training_config import TrainingConfig

__all__ = ["initial_arrays", "load_arrays", "save_global", "trainable_arrays"]

CHECKPOINT_FORMAT = 1


def trainable_arrays(model: MaskedLM) -> dict[str, np.ndarray]:
    """The model's trainable parameters, by name, as float32 arrays (copies, on the CPU)."""
    return {
        name: p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_arrays(model: MaskedLM, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the model's trainable parameters. ValueError unless they are
    exactly those parameters, shape for shape (checked before anything is copied)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(arrays):
        raise ValueError("the arrays are not this model's trainable parameters")
    for name, p in params.items():
        if tuple(np.shape(arrays[name])) != tuple(p.shape):
            raise ValueError(f"array {name!r} has shape {np.shape(arrays[name])}, not {p.shape}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(arrays[name]), dtype=p.dtype, device=p.device))


def _model(config: TrainingConfig, seed: int | None) -> MaskedLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if seed is not None else secrets.randbits(62))  # the head's init
        model, _tokenizer = load_base(base_model_path())
    model.freeze(config.trainable_layers)
    return model


def initial_arrays(config: TrainingConfig) -> dict[str, np.ndarray]:
    """The first global model: the public base weights and a fresh head (seeded by
    ``config.seed``); public, nothing private is read."""
    return trainable_arrays(_model(config, config.seed))


def save_global(
    arrays: Mapping[str, np.ndarray], config: TrainingConfig, staging: Path, record: dict[str, Any]
) -> None:
    """Write the global model into a registry staging directory: ``model/`` (a
    sentence-transformers directory) and ``checkpoint.pt`` (weights, config and ``record``,
    the silo's federated accounting)."""
    model = _model(config, 0)
    load_arrays(model, arrays)
    base = base_model_path()
    save_sentence_transformer(model.bert, base, staging / "model")
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "config": config.to_dict(),
            "federation": record,
            "saved_at": datetime.now(UTC).isoformat(),
        },
        staging / "checkpoint.pt",
    )
