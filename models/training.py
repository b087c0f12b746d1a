"""Sender-level DP fine-tuning of the public MiniLM encoder.

Two objectives (``TrainingConfig.objective``): ``"mlm"``, masked-token prediction (described
below), and ``"contrastive"``, a sender-local InfoNCE loss between a sender's own consecutive
messages with negatives only from that sender and from fixed public word embeddings; see
:mod:`models.contrastive` for why its loss, too, depends on one sender's data only, so the
clipping, sampling, noise and accounting below are unchanged.

Privacy unit: the sender. One training example = one sender's bounded sample of messages
(:mod:`models.data`); its loss is the mean masked-token cross-entropy over that sender's masked
tokens, so its gradient is clipped to ``max_grad_norm`` as one unit. Batches are Poisson
samples of senders (Opacus' ``UniformWithReplacementSampler``, rate q = expected batch /
number of senders); each step adds N(0, (noise_multiplier * max_grad_norm)^2) to the sum of
clipped per-sender gradients and divides by the expected batch (DP-SGD, Abadi et al. 2016, at
the user level as in McMahan et al. 2018). The accountant from :mod:`mechanisms` composes the
steps as one Poisson-subsampled Gaussian event (PLD, tight; see ``mechanisms.accountant``).

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
from dataclasses import asdict, dataclass, fields
from typing import Any

from mechanisms.accountant import Accountant
from mechanisms.errors import InvalidParameterError, check_delta, check_positive
from mechanisms.events import PrivacyEvent

__all__ = [
    "TrainingConfig",
    "TrainingCancelled",
    "plan_training",
    "default_delta",
    "noise_multiplier_for",
    "train",
    "PRIVACY_STATEMENT",
]

ENGINES = ("auto", "microbatch", "opacus")
OBJECTIVES = ("mlm", "contrastive")
PRIVACY_STATEMENT = (
    "Sender-level (epsilon, delta)-DP for the fine-tuned weights: two corpora are neighbours when "
    "they differ in all messages of one sender. DP-SGD with Poisson sampling of senders, each "
    "sender's bounded sample (objective 'mlm': messages with msg_rank < max_messages_per_sender; "
    "objective 'contrastive': up to max_messages_per_sender // 2 pairs of the sender's own "
    "consecutive messages in one conversation, the anchors of lowest msg_rank, with negatives "
    "only from the same sender's pairs and from fixed public word embeddings; each message "
    "truncated to max_seq_len tokens) clipped as one unit to max_grad_norm; epsilon by privacy "
    "loss distributions (dp-accounting, Poisson-subsampled Gaussian). The number of senders sets "
    "the sampling rate and the default delta and is treated as public. Noise is floating-point "
    "Gaussian from torch's generator, and batches are drawn by torch's generator, both seeded "
    "from the OS CSPRNG (never from the config's seed); torch's generators are not "
    "cryptographic and floating-point noise is not hardened against precision attacks "
    "(Opacus secure_mode/torchcsprng is unavailable). Embeddings computed later from private "
    "text are not covered."
)


class TrainingCancelled(RuntimeError):
    """``should_stop`` asked the training to stop; nothing was published."""


@dataclass
class TrainingConfig:
    """Training settings. Valid ranges are checked by :meth:`validate` (InvalidParameterError).

    ``target_epsilon`` > 0; ``delta`` in (0, 1 / n_senders) or None for
    :func:`default_delta`; ``expected_senders_per_batch`` >= 1 (Poisson rate = it / n_senders);
    ``private=False`` trains without clipping or noise (benchmarks and baselines only; the API
    never sets it). ``seed`` fixes the head's initialisation and the masking; for a private
    training the batch sampling and the noise are seeded from the OS CSPRNG regardless.

    ``objective``: ``"mlm"`` (masked-token prediction over the sender's messages) or
    ``"contrastive"`` (sender-local InfoNCE between the sender's own consecutive messages, see
    :mod:`models.contrastive`; needs ``trainable_layers`` >= 1). ``temperature`` and
    ``public_negatives`` (how many public vocabulary words serve as fixed negatives) apply to
    the contrastive objective only.
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_messages_per_sender: int = 16
    max_seq_len: int = 64
    steps: int = 200
    expected_senders_per_batch: int = 256
    max_grad_norm: float = 1.0
    learning_rate: float = 5e-5
    mlm_probability: float = 0.15
    trainable_layers: int = 2
    engine: str = "auto"
    senders_per_chunk: int = 32
    amp: bool = True
    private: bool = True
    seed: int | None = None
    objective: str = "mlm"
    temperature: float = 0.05
    public_negatives: int = 256

    def validate(self) -> TrainingConfig:
        check_positive("target_epsilon", self.target_epsilon)
        if self.delta is not None:
            check_delta("delta", self.delta, allow_zero=False)
        for name in (
            "max_messages_per_sender",
            "max_seq_len",
            "steps",
            "expected_senders_per_batch",
            "senders_per_chunk",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_seq_len < 4:
            raise InvalidParameterError("max_seq_len must be >= 4")
        check_positive("max_grad_norm", self.max_grad_norm)
        check_positive("learning_rate", self.learning_rate)
        if not 0 < self.mlm_probability < 1:
            raise InvalidParameterError("mlm_probability must be in (0, 1)")
        if not 0 <= self.trainable_layers <= 6:
            raise InvalidParameterError("trainable_layers must be in [0, 6]")
        if self.engine not in ENGINES:
            raise InvalidParameterError(f"engine must be one of {ENGINES}")
        if self.objective not in OBJECTIVES:
            raise InvalidParameterError(
                f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
            )
        check_positive("temperature", self.temperature)
        pn = self.public_negatives
        if isinstance(pn, bool) or not isinstance(pn, int) or pn < 0:
            raise InvalidParameterError(f"public_negatives must be an integer >= 0, got {pn!r}")
        if self.objective == "contrastive":
            if self.trainable_layers < 1:
                raise InvalidParameterError("the contrastive objective needs trainable_layers >= 1")
            if self.max_messages_per_sender < 2:
                raise InvalidParameterError(
                    "the contrastive objective needs max_messages_per_sender >= 2 (one pair)"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidParameterError(f"unknown training config fields {sorted(unknown)}")
        return cls(**data).validate()


def default_delta(n_senders: int) -> float:
    """1 / (10 n_senders) rounded down to a power of ten (so always < 1 / n_senders)."""
    if n_senders < 1:
        raise InvalidParameterError("n_senders must be >= 1")
    return 10.0 ** math.floor(math.log10(1.0 / (10 * n_senders)))


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


def plan_training(config: TrainingConfig, *, n_senders: int) -> PrivacyEvent:
    """The subsampled-Gaussian event that training ``config`` on ``n_senders`` senders costs.

    Computed before any text is read, so the caller can charge it. Raises
    InvalidParameterError for a bad config, a non-private config, or delta >= 1 / n_senders.
    """
    config.validate()
    if not config.private:
        raise InvalidParameterError("a non-private training has no privacy event")
    if isinstance(n_senders, bool) or not isinstance(n_senders, int) or n_senders < 1:
        raise InvalidParameterError(f"n_senders must be an integer >= 1, got {n_senders!r}")
    delta = config.delta if config.delta is not None else default_delta(n_senders)
    if delta >= 1.0 / n_senders:
        raise InvalidParameterError(f"delta must be < 1/n_senders = {1.0 / n_senders:.3g}")
    q = min(1.0, config.expected_senders_per_batch / n_senders)
    sigma = noise_multiplier_for(float(config.target_epsilon), delta, q, config.steps)
    return PrivacyEvent.subsampled_gaussian(
        noise_multiplier=sigma, sampling_rate=q, steps=config.steps
    )


def planned_delta(config: TrainingConfig, n_senders: int) -> float:
    return config.delta if config.delta is not None else default_delta(n_senders)


def train(
    config: TrainingConfig,
    *,
    data_dir: Any,
    snapshot_id: str | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    event: PrivacyEvent | None = None,
    activate: bool = True,
) -> Any:
    """Train on a snapshot (the live one by default) and publish a finished model version.

    ``event``, when given, is the event the caller charged: training refuses
    (InvalidParameterError) unless the plan for this snapshot equals it. ``progress`` gets the
    fraction done after each step; ``should_stop()`` returning True cancels
    (TrainingCancelled). On any failure the staging directory is removed and nothing is
    published. Returns the :class:`~models.registry.ModelVersion`.
    """
    from models.data import count_senders, load_sender_examples, load_sender_pair_examples
    from models.registry import ModelRegistry, base_model_path
    from models.trainer import Trainer, save_version
    from service.corpus.store import SnapshotStore

    config.validate()
    store = SnapshotStore(data_dir)
    info = store.get(snapshot_id) if snapshot_id else store.live()
    if info is None:
        raise InvalidParameterError("no corpus snapshot to train on")
    n_senders = count_senders(data_dir, info.id)
    planned = plan_training(config, n_senders=n_senders) if config.private else None
    if event is not None and planned != event:
        raise InvalidParameterError("the charged event does not match this training's plan")
    registry = ModelRegistry(data_dir)
    staging = registry.new_staging_dir()
    try:
        seed = config.seed if config.seed is not None else secrets.randbits(62)
        trainer = Trainer(config, base_model_path(), seed=seed, event=planned)
        loader = (
            load_sender_pair_examples if config.objective == "contrastive" else load_sender_examples
        )
        data = loader(
            data_dir,
            trainer.tokenizer,
            snapshot_id=info.id,
            max_messages_per_sender=config.max_messages_per_sender,
            max_seq_len=config.max_seq_len,
        )
        trainer.fit(data.examples, progress=progress, should_stop=should_stop)
        delta = planned_delta(config, n_senders) if config.private else None
        manifest = save_version(trainer, staging, snapshot_id=info.id, event=planned, delta=delta)
    except BaseException:
        registry.discard_staging_dir(staging)
        raise
    return registry.publish(staging, manifest, activate=activate)


__all__ += ["planned_delta", "PrivacyEvent"]
