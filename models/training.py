"""Sender-level DP fine-tuning of the public MiniLM encoder.

Two objectives (``TrainingConfig.objective``): ``"mlm"``, masked-token prediction (described
below), and ``"contrastive"``, a sender-local InfoNCE loss between a sender's own consecutive
messages with negatives only from that sender and from fixed public word embeddings; see
:mod:`models.contrastive` for why its loss, too, depends on one sender's data only, so the
clipping, sampling, noise and accounting below are unchanged.

Privacy unit: the sender. One training example = one sender's bounded sample of messages
(:mod:`models.data`); its loss is the mean masked-token cross-entropy over that sender's masked
tokens, so its gradient is clipped to ``max_grad_norm`` as one unit. Batches are Poisson
samples of senders (Opacus' ``UniformWithReplacementSampler``: each sender of the corpus is in
a step's batch independently with probability q); each step adds
N(0, (noise_multiplier * max_grad_norm)^2) to the sum of clipped per-sender gradients and
divides by the expected batch (DP-SGD, Abadi et al. 2016, at the user level as in McMahan et
al. 2018). The accountant from :mod:`mechanisms` composes the
steps as one Poisson-subsampled Gaussian event (PLD, tight; see ``mechanisms.accountant``).

The sampling rate is public and fixed before anything is read: q = expected_senders_per_batch /
population_size, where ``population_size`` is the number of senders the administrator declares
for the corpus (a public figure, never counted here). Poisson sampling's guarantee depends on q
alone, not on how many senders there are, so the accounting is exact whatever the corpus
really holds: the true number of senders only changes how many are sampled (a declared figure
too small gives larger batches, too large smaller ones), and it is never computed, used in
the accounting, or released. The default delta comes from the declared figure too.

Charging (:mod:`models.charge`): ``train`` fills a :class:`TrainingRun` as it goes, whether it
returns or raises: whether the corpus has been read yet, and how many steps have begun. Before
the first read (config, plan, base model) a failure or a cancel is refunded; from the first
read on, a failure of any kind is charged in full and a cancel is charged for the steps begun.
``should_stop`` is asked before the read, before each step and, at most every
``models.trainer.STOP_POLL_S`` seconds, between the senders (or chunks of senders) of a step,
so a cancel is honoured within seconds even in a step with many senders.

Two ways to get the per-sender gradients, equal up to float rounding (tested):

* ``"microbatch"``: one backward per sampled sender. No extra memory, and on CPU the cheapest
  (a CPU gains little from larger batches); slow on a GPU.
* ``"opacus"``: Opacus ``GradSampleModule`` hooks give per-sample gradients for a chunk of
  senders in one backward. The chunk is packed one row per sender
  (:func:`models.mlm.encode_packed`: each message still encoded alone), so each grad sample
  is a sender's gradient, clipped as is. Memory grows with senders x trainable parameters,
  hence ``senders_per_chunk``. The GPU default.

The noise and the Poisson sampling come from torch's generators (Philox on CUDA, Mersenne Twister
on CPU) seeded from ``secrets`` for every private training, whatever ``seed`` says (``seed`` fixes
only the head's initialisation and the masking): not a CSPRNG, and floating-point noise
(Opacus' secure_mode needs torchcsprng, which has no build for this torch). The manifest says so.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

from corpus.store import SnapshotStore
from mechanisms.accountant import Accountant
from mechanisms.errors import InvalidParameterError
from mechanisms.events import PrivacyEvent
from models.registry import ModelRegistry, base_model_path
from models.training_config import (  # re-exported: callers import them from here
    PRIVACY_STATEMENT,
    TrainingCancelled,
    TrainingConfig,
    TrainingRun,
)

__all__ = [
    "TrainingConfig",
    "TrainingCancelled",
    "TrainingRun",
    "plan_training",
    "default_delta",
    "noise_multiplier_for",
    "train",
    "PRIVACY_STATEMENT",
]

def default_delta(population_size: int) -> float:
    """1 / (10 n) rounded down to a power of ten (so always < 1 / n), n the declared
    ``population_size``."""
    if population_size < 1:
        raise InvalidParameterError("population_size must be >= 1")
    return 10.0 ** math.floor(math.log10(1.0 / (10 * population_size)))


def _epsilon(sigma: float, q: float, steps: int, delta: float, method: str) -> float:
    event = PrivacyEvent.subsampled_gaussian(noise_multiplier=sigma, sampling_rate=q, steps=steps)
    absl = logging.getLogger("absl")  # dp-accounting logs each RDP order it drops
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return Accountant([event]).epsilon(delta, method=method)
    finally:
        absl.setLevel(level)


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(
    target_epsilon: float, delta: float, sampling_rate: float, steps: int
) -> float:
    """The smallest noise multiplier (within 0.5%) whose PLD epsilon is <= target_epsilon.

    Brackets with the (looser, fast) RDP bound, then bisects on the PLD figure; returns the
    upper end, so the accountant's epsilon never exceeds the target.
    """
    hi = 0.5
    while _epsilon(hi, sampling_rate, steps, delta, "rdp") > target_epsilon:
        hi *= 1.5
        if hi > 1e4:
            raise InvalidParameterError("no noise multiplier reaches that epsilon")
    lo = hi / 4
    if _epsilon(lo, sampling_rate, steps, delta, "pld") <= target_epsilon:
        lo = 1e-3
    while hi / lo > 1.005:
        mid = math.sqrt(lo * hi)
        if _epsilon(mid, sampling_rate, steps, delta, "pld") <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def plan_training(config: TrainingConfig) -> PrivacyEvent:
    """The subsampled-Gaussian event that training ``config`` costs, from public inputs only.

    The sampling rate is ``config.sampling_rate`` (expected batch / declared population size);
    nothing is read from the corpus, so the caller can charge it before any text is read.
    Raises InvalidParameterError for a bad config, a non-private config, no declared
    population size, or delta >= 1 / population_size.
    """
    config.validate()
    if not config.private:
        raise InvalidParameterError("a non-private training has no privacy event")
    q = config.sampling_rate
    n = config.population_size
    assert n is not None  # sampling_rate raised otherwise
    delta = planned_delta(config)
    if delta >= 1.0 / n:
        raise InvalidParameterError(f"delta must be < 1/population_size = {1.0 / n:.3g}")
    sigma = noise_multiplier_for(float(config.target_epsilon), delta, q, config.steps)
    return PrivacyEvent.subsampled_gaussian(
        noise_multiplier=sigma, sampling_rate=q, steps=config.steps
    )


def planned_delta(config: TrainingConfig) -> float:
    """The delta the model is reported at: the config's, or :func:`default_delta` of the
    declared population size."""
    if config.delta is not None:
        return config.delta
    if config.population_size is None:
        raise InvalidParameterError("population_size is required for the default delta")
    return default_delta(config.population_size)


def read_examples(
    config: TrainingConfig,
    data_dir: Any,
    tokenizer: Any,
    snapshot_id: str,
    run: TrainingRun,
) -> Any:
    """The examples of ``config``'s objective from snapshot ``snapshot_id`` (the loaders of
    ``models.data``), marking ``run`` first: from here on, whatever happens is charged."""
    from models.data import load_sender_examples, load_sender_pair_examples  # lazy: torch

    contrastive = config.objective == "contrastive"
    loader = load_sender_pair_examples if contrastive else load_sender_examples
    run.corpus_read = True
    return loader(
        data_dir,
        tokenizer,
        snapshot_id=snapshot_id,
        max_messages_per_sender=config.max_messages_per_sender,
        max_seq_len=config.max_seq_len,
    )


def train(
    config: TrainingConfig,
    *,
    data_dir: Any,
    snapshot_id: str | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    event: PrivacyEvent | None = None,
    activate: bool = True,
    run: TrainingRun | None = None,
) -> Any:
    """Train on a snapshot (the live one by default) and publish a finished model version.

    ``event``, when given, is the event the caller charged: training refuses
    (InvalidParameterError) unless the plan of ``config`` equals it. ``progress`` gets the
    fraction done after each step; ``should_stop()`` returning True cancels
    (TrainingCancelled): it is asked before the corpus is read, before each step and within
    steps (see the module docstring). ``run`` is filled in as the training goes (whether the
    corpus has been read, steps begun) for the caller's charging, also when this raises. On
    any failure the staging directory is removed and nothing is published. Returns the
    :class:`~models.registry.ModelVersion`.
    """
    # torch is loaded only here, by a training: planning and validating need none of it
    from models.trainer import Trainer, save_version  # lazy: torch, opacus

    run = run if run is not None else TrainingRun()
    run.corpus_read = False
    config.validate()
    store = SnapshotStore(data_dir)
    info = store.get(snapshot_id) if snapshot_id else store.live()
    if info is None:
        raise InvalidParameterError("no corpus snapshot to train on")
    planned = plan_training(config) if config.private else None
    if event is not None and planned != event:
        raise InvalidParameterError("the charged event does not match this training's plan")
    registry = ModelRegistry(data_dir)
    with registry.staging() as staging:
        seed = config.seed if config.seed is not None else secrets.randbits(62)
        trainer = Trainer(config, base_model_path(), seed=seed, event=planned)
        if should_stop is not None and should_stop():
            raise TrainingCancelled("training cancelled before the corpus was read")
        data = read_examples(config, data_dir, trainer.tokenizer, info.id, run)
        trainer.fit(data.examples, progress=progress, should_stop=should_stop, run=run)
        delta = planned_delta(config) if config.private else None
        manifest = save_version(trainer, staging, snapshot_id=info.id, event=planned, delta=delta)
        return registry.publish(staging, manifest, activate=activate)


__all__ += ["planned_delta", "PrivacyEvent"]
