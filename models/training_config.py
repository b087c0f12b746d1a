"""What a training is asked to do and what it reports: :class:`TrainingConfig`,
:class:`TrainingRun`, :class:`TrainingCancelled` and the privacy statement of a trained model.

Shared by :mod:`models.training` (planning, charging and the ``train`` entry point, which
re-exports these names) and :mod:`models.trainer` (the DP-SGD loop), so that neither imports
the other's module for them. No torch here: the service validates and plans a training
without loading it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mechanisms.errors import InvalidParameterError, check_delta, check_positive

__all__ = [
    "ENGINES",
    "OBJECTIVES",
    "PRIVACY_STATEMENT",
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingRun",
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
    "loss distributions (dp-accounting, Poisson-subsampled Gaussian). Each sender is in a step's "
    "batch independently with probability expected_senders_per_batch / population_size, where "
    "population_size is the public number of senders the administrator declared (it also sets "
    "the default delta); the accounting depends on that rate only, and the true number of "
    "senders is neither used in it nor released. Noise is floating-point "
    "Gaussian from torch's generator, and batches are drawn by torch's generator, both seeded "
    "from the OS CSPRNG (never from the config's seed); torch's generators are not "
    "cryptographic and floating-point noise is not hardened against precision attacks "
    "(Opacus secure_mode/torchcsprng is unavailable). Embeddings computed later from private "
    "text are not covered."
)


class TrainingCancelled(RuntimeError):
    """``should_stop`` asked the training to stop; nothing was published."""


def _check_integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class TrainingRun:
    """What a training reports to whoever charged it, whether it returns or raises.

    ``corpus_read``: None until :func:`models.training.train` starts (unknown: a ``train``
    that never says is taken to have read the corpus, and charged), False while only public
    inputs have been used (config, plan, base model), True from the moment the first read of
    the corpus begins.
    ``steps_started``: DP-SGD steps begun (a step counts from its first sender on, so a step
    cut short by a cancel counts). The charge (:mod:`models.charge`) is settled from both.
    """

    corpus_read: bool | None = None
    steps_started: int = 0


@dataclass
class TrainingConfig:
    """Training settings. Valid ranges are checked by :meth:`validate` (InvalidParameterError).

    ``target_epsilon`` > 0; ``delta`` in (0, 1 / population_size) or None for
    :func:`models.training.default_delta`; ``population_size``: the declared, public number of
    senders (an integer >= 1; required for a private training, see :mod:`models.training`);
    ``expected_senders_per_batch`` in [1, population_size] (Poisson rate
    :attr:`sampling_rate` = it / population_size); ``private=False`` trains without clipping
    or noise (benchmarks and baselines only; the API never sets it). ``seed`` fixes the
    head's initialisation and the masking; for a private training the batch sampling and the
    noise are seeded from the OS CSPRNG regardless.

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
    population_size: int | None = None

    def validate(self) -> TrainingConfig:
        check_positive("target_epsilon", self.target_epsilon)
        if self.delta is not None:
            check_delta("delta", self.delta, allow_zero=False)
        self._check_sizes()
        self._check_population()
        self._check_optimiser()
        self._check_objective()
        return self

    def _check_sizes(self) -> None:
        for name in (
            "max_messages_per_sender",
            "max_seq_len",
            "steps",
            "expected_senders_per_batch",
            "senders_per_chunk",
        ):
            _check_integer(name, getattr(self, name), 1)
        if self.max_seq_len < 4:
            raise InvalidParameterError("max_seq_len must be >= 4")

    def _check_population(self) -> None:
        n = self.population_size
        if n is not None:
            _check_integer("population_size", n, 1)
            if self.expected_senders_per_batch > n:
                raise InvalidParameterError(
                    "expected_senders_per_batch must be at most population_size "
                    f"({self.expected_senders_per_batch} > {n}): each sender is sampled with "
                    "probability expected_senders_per_batch / population_size"
                )

    def _check_optimiser(self) -> None:
        check_positive("max_grad_norm", self.max_grad_norm)
        check_positive("learning_rate", self.learning_rate)
        if not 0 < self.mlm_probability < 1:
            raise InvalidParameterError("mlm_probability must be in (0, 1)")
        if not 0 <= self.trainable_layers <= 6:
            raise InvalidParameterError("trainable_layers must be in [0, 6]")
        if self.engine not in ENGINES:
            raise InvalidParameterError(f"engine must be one of {ENGINES}")

    def _check_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidParameterError(
                f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
            )
        check_positive("temperature", self.temperature)
        _check_integer("public_negatives", self.public_negatives, 0)
        if self.objective == "contrastive":
            if self.trainable_layers < 1:
                raise InvalidParameterError("the contrastive objective needs trainable_layers >= 1")
            if self.max_messages_per_sender < 2:
                raise InvalidParameterError(
                    "the contrastive objective needs max_messages_per_sender >= 2 (one pair)"
                )

    @property
    def sampling_rate(self) -> float:
        """q = expected_senders_per_batch / population_size: public, whatever the corpus holds.
        Raises InvalidParameterError when no population size was declared."""
        if self.population_size is None:
            raise InvalidParameterError(
                "population_size is required: the public number of senders that sets the "
                "sampling rate (it is never counted from the corpus)"
            )
        return min(1.0, self.expected_senders_per_batch / self.population_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidParameterError(f"unknown training config fields {sorted(unknown)}")
        return cls(**data).validate()
