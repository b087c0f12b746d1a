"""Request schemas of the embedding, job and model routes (marshmallow; unknown fields rejected).

Privacy parameters of a training job are validated here and again by
``models.training.TrainingConfig.validate`` and ``plan_training`` where they are used.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.schemas.fields import FiniteFloat, StrictBoolean, StrictInteger

MAX_TEXT_CHARS = 2000
MAX_SYNC_TEXTS = 64
MAX_JOB_TEXTS = 20_000


class _Strict(Schema):
    class Meta:
        unknown = "raise"


def _texts(max_items: int) -> fields.List:
    return fields.List(
        fields.String(validate=validate.Length(max=MAX_TEXT_CHARS)),
        required=True,
        validate=validate.Length(min=1, max=max_items),
    )


class EmbeddingsRequest(_Strict):
    """``POST /v1/embeddings``: 1..64 texts of at most 2,000 characters each."""

    texts = _texts(MAX_SYNC_TEXTS)


class EmbeddingJobRequest(_Strict):
    """``POST /v1/embedding-jobs``: 1..20,000 texts of at most 2,000 characters each."""

    texts = _texts(MAX_JOB_TEXTS)


class TrainingJobRequest(_Strict):
    """``POST /v1/admin/training-jobs``: a sender-level DP fine-tuning of the encoder.

    ``target_epsilon`` in (0, 100]; ``population_size`` (required): the public number of
    senders the administrator declares for the corpus, in [1, 10**9]; each sender is sampled
    with probability ``expected_senders_per_batch / population_size`` (so the batch must be at
    most the population), and the corpus is never counted; ``delta`` in (0, 1) (and
    < 1 / population_size, checked when planned; default 1 / (10 population_size) rounded
    down to a power of ten).
    """

    population_size = StrictInteger(
        required=True, validate=validate.Range(min=1, max=1_000_000_000)
    )

    target_epsilon = FiniteFloat(
        required=True, validate=validate.Range(min=0, max=100, min_inclusive=False)
    )
    delta = FiniteFloat(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False),
    )
    steps = StrictInteger(
        load_default=200, validate=validate.Range(min=1, max=100_000)
    )
    expected_senders_per_batch = StrictInteger(
        load_default=256, validate=validate.Range(min=1, max=100_000)
    )
    max_messages_per_sender = StrictInteger(
        load_default=16, validate=validate.Range(min=1, max=1000)
    )
    max_seq_len = StrictInteger(
        load_default=64, validate=validate.Range(min=4, max=256)
    )
    max_grad_norm = FiniteFloat(
        load_default=1.0, validate=validate.Range(min=0, max=1000, min_inclusive=False)
    )
    learning_rate = FiniteFloat(
        load_default=5e-5, validate=validate.Range(min=0, max=1, min_inclusive=False)
    )
    trainable_layers = StrictInteger(
        load_default=2, validate=validate.Range(min=0, max=6)
    )
    seed = StrictInteger(load_default=None, allow_none=True,
                          validate=validate.Range(min=0, max=2**62))
    snapshot_id = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(min=1, max=100))
    activate = StrictBoolean(load_default=False)

    @validates_schema
    def _batch_within_population(self, data: dict[str, Any], **_kwargs: Any) -> None:
        batch, population = data.get("expected_senders_per_batch"), data.get("population_size")
        if isinstance(batch, int) and isinstance(population, int) and batch > population:
            raise ValidationError(
                "must be at most population_size: each sender is sampled with probability "
                "expected_senders_per_batch / population_size",
                "expected_senders_per_batch",
            )

    CONFIG_FIELDS = (
        "population_size", "target_epsilon", "delta", "steps", "expected_senders_per_batch",
        "max_messages_per_sender", "max_seq_len", "max_grad_norm", "learning_rate",
        "trainable_layers", "seed",
    )

    @classmethod
    def config_of(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {k: data[k] for k in cls.CONFIG_FIELDS}
