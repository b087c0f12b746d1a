"""What every query kind is: one class that knows its request fields, its noisy parts, what it
reads from the scan engine and how it turns noisy parts into an answer.

A kind is a frozen dataclass whose fields are its own resolved parameters (the count's ``of``,
a mean's feature and grid...); the generic code around it (``schemas``, ``plan``, ``pricing``,
``answer`` and the view) asks it, and never tests a kind's name:

- **request**: ``request_fields`` (its marshmallow fields, and what to say when another kind
  gets one), ``check_field`` (its own checks, run in the schema's order), ``from_request`` (defaults
  resolved, public checks that need no data), ``check`` (checks on the whole plan);
- **parts**: ``parts(plan, cap)``, each part's name, sensitivity for a per-sender cap of
  ``cap`` and share of the cost; pricing turns them into mechanisms and one privacy event;
- **release**: ``release(r)`` reads exact aggregates through ``r.engine`` (a
  :class:`corpus.engine.Engine`), noises them with ``r.noisy`` and returns the answer's
  ``result`` (or ``groups``), its intervals and bias notes;
- **record**: ``record()``, its part of the normalised query the audit log and replay key on.

Adding a kind: a module in this package with its class, its name in ``kinds/__init__.py``, and
its fields and answer in ``openapi.yaml``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from marshmallow import ValidationError, fields

from corpus.engine import Engine, Grid, Groups, Measure
from service.queries.parts import Part, half_width, noisy

DEFAULT_TOP_K = 10
DEFAULT_TERMS_PER_SENDER = 10


class PlanFacts(Protocol):
    """What a kind reads of the plan it belongs to (``plan.Plan``)."""

    @property
    def mechanism(self) -> str: ...  # "laplace" or "gaussian"

    @property
    def groups(self) -> Groups | None: ...

    @property
    def model_id(self) -> str | None: ...  # the model whose embeddings are read


@dataclass(frozen=True)
class KindField:
    """A request field a kind owns: its marshmallow field, and the error another kind gets
    for it (``{kind}`` is that kind's name; None: not checked by the schema)."""

    field: fields.Field
    elsewhere: str | None

    def given(self, data: dict[str, Any], name: str) -> bool:
        """Whether the request sets the field (to something else than its default)."""
        return name in data and data[name] != self.field.load_default


def record_defaults() -> dict[str, Any]:
    """The audit record's kind fields, as every kind writes them: these are the fields of the
    flat plan that came before kinds were classes, so that every recorded query and its hash
    stay what they were. A kind sets its own; a new kind adds only its own keys."""
    return {
        "of": "messages",
        "feature": None,
        "bounds": None,
        "quantiles": [],
        "bins": [],
        "k": DEFAULT_TOP_K,
        "terms": [],
        "bigrams": False,
        "max_terms_per_sender": DEFAULT_TERMS_PER_SENDER,
    }


class QueryKind(ABC):
    """One kind of query (see the module docstring). Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    #: The request fields this kind owns, in the order the request schema lists them.
    request_fields: ClassVar[dict[str, KindField]] = {}
    #: True if the kind takes a ``group_by``. A kind that refuses it names the field after
    #: which the schema checks that (the order in which errors have always been reported).
    takes_group_by: ClassVar[bool] = True
    group_by_checked_after: ClassVar[str] = "bigrams"
    #: Whether ``privacy.accuracy`` may replace epsilon (single-release kinds).
    takes_accuracy: ClassVar[bool] = False
    #: Whether the kind reads message embeddings (prepared before the charge; 409 if absent).
    reads_embeddings: ClassVar[bool] = False

    # -- the request ---------------------------------------------------------------------------
    @classmethod
    def check_field(cls, name: str, data: dict[str, Any]) -> None:
        """The kind's own checks on its field ``name`` (may set a default in ``data``).

        Raises ValidationError."""
        return None  # none by default

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> QueryKind:
        """The kind with its parameters resolved from a validated request. Raises APIError
        (422) for what the schema cannot decide; reads no data."""
        return cls()

    def check(self, plan: PlanFacts) -> None:
        """Checks on the whole plan, after the generic ones. Raises APIError (422)."""
        return None  # none by default

    # -- facts the generic plan, pricing and answer use ----------------------------------------
    @property
    def grid(self) -> Grid | None:
        """The clamping range and grid of the values read (None: counts only)."""
        return None

    @property
    def uses_cap(self) -> bool:
        """Whether the per-sender message cap matters to the answer."""
        return True

    @property
    def discovers_keys(self) -> tuple[str, int] | None:
        """(part, most keys one sender adds to) when the kind releases keys found in the
        data (partition selection, with a threshold that spends delta); else None."""
        return None

    @property
    def selection_is_answer(self) -> bool:
        """Whether, over undeclared group keys, the selection's noisy distinct-sender counts
        are the answer itself (no value parts)."""
        return False

    @property
    def accuracy_unit(self) -> float:
        """The unit of an accuracy target's half-width, in the part's grid units."""
        return 1.0

    def measure(self) -> Measure:
        """What the scan engine aggregates for this kind."""
        return Measure()

    def record(self) -> dict[str, Any]:
        """The kind's part of the normalised query (audit log, replay)."""
        return record_defaults()

    def value_notes(self) -> list[str]:
        """Bias notes on the values read, after the cap's."""
        return []

    # -- cost and answer -----------------------------------------------------------------------
    @abstractmethod
    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        """The noisy releases of the value (not of a key selection), with their L1 (Laplace)
        or L2 (Gaussian, ``plan.mechanism``) sensitivities for a per-sender cap ``cap``, in
        grid units, and their shares of the cost (summing to at most 1)."""

    @abstractmethod
    def release(self, r: Release) -> dict[str, Any]:
        """Read, noise and shape the answer: ``{"result": ...}`` or ``{"groups": [...]}``,
        with any extra answer keys. Runs after the charge; must not fail on any data."""


@dataclass
class Release:
    """Everything a kind's ``release`` works with, after the charge: the plan, its parts
    priced and rebuilt for the cap in use, the engine to read from, the cap, the group keys
    (None without a group-by) and, for keys found by selection, their noisy distinct-sender
    counts and threshold. ``bias`` collects the answer's notes."""

    plan: PlanFacts
    parts: dict[str, Part]
    engine: Engine
    cap: int
    keys: list[Any] | None
    selection: dict[Any, float]
    threshold: float | None
    bias: list[str]
    level: float

    def noisy(self, part: str, values: Any) -> np.ndarray:
        """Part ``part``'s noise added to exact integer ``values`` (see ``parts.noisy``)."""
        return noisy(self.parts[part], values)

    def half_width(self, part: str) -> float:
        """Part ``part``'s noise half-width at the answer's confidence level."""
        return half_width(self.parts[part], self.level)

    def keyed(self, values: dict[Any, Any], default: Any) -> list[tuple[Any, Any]]:
        """``(key, value)`` per group key in answer order (``default`` where a group has no
        row), or the one ungrouped value."""
        if self.keys is None:
            return [(None, values.get(None, default))]
        return [(k, values.get(k, default)) for k in self.keys]

    def pack(self, rows: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        """``{"result": row}`` without a group-by, else ``{"groups": [{"key", ...}]}``."""
        if self.keys is None:
            return {"result": rows[0][1]}
        return {"groups": [{"key": k, **v} for k, v in rows]}


def refuse(field: str, message: str) -> ValidationError:
    """The schema's error for ``field``."""
    return ValidationError(message, field)
