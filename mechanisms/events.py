"""Privacy events: what one release cost, in the terms the accountant composes.

Kinds and their fields (all validated; every float finite):

- ``"laplace"``: ``epsilon`` > 0. Any pure epsilon-DP release (discrete Laplace included).
- ``"gaussian"``: ``noise_multiplier`` = sigma / L2 sensitivity > 0. A discrete Gaussian
  release; rho = 1 / (2 noise_multiplier**2) zero-concentrated DP.
- ``"subsampled_gaussian"``: ``noise_multiplier`` > 0, ``sampling_rate`` in (0, 1],
  ``steps`` >= 1. DP-SGD with Poisson sampling of privacy units.
- ``"approx_dp"``: ``epsilon`` >= 0 and ``delta`` in (0, 1). A release known only by an
  (epsilon, delta) guarantee (partition selection's threshold). It has no RDP curve and is
  composed by basic composition on top of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameterError, check_delta, check_finite, check_positive

KINDS = ("laplace", "gaussian", "subsampled_gaussian", "approx_dp")
_FIELDS = ("epsilon", "delta", "noise_multiplier", "sampling_rate", "steps")
_NEEDED = {
    "laplace": {"epsilon"},
    "gaussian": {"noise_multiplier"},
    "subsampled_gaussian": {"noise_multiplier", "sampling_rate", "steps"},
    "approx_dp": {"epsilon", "delta"},
}


@dataclass(frozen=True)
class PrivacyEvent:
    """One release's privacy cost. Frozen and hashable; build with the classmethods.

    Raises:
        InvalidParameterError: unknown kind, missing or out-of-range fields.
    """

    kind: str
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sampling_rate: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        self._check_fields()
        self._check_epsilon_delta()
        self._check_gaussian()

    def _check_fields(self) -> None:
        """A known kind, with exactly the fields it takes."""
        if self.kind not in KINDS:
            raise InvalidParameterError(f"unknown privacy event kind {self.kind!r}; use {KINDS}")
        needed = _NEEDED[self.kind]
        for name in _FIELDS:
            value = getattr(self, name)
            if (value is None) == (name in needed):
                state = "needs" if value is None else "does not take"
                raise InvalidParameterError(f"a {self.kind} event {state} {name}")

    def _check_epsilon_delta(self) -> None:
        """epsilon > 0; for approx_dp, epsilon >= 0 and delta in (0, 1). Stored normalised."""
        if self.kind == "approx_dp":
            eps = check_finite("epsilon", self.epsilon)
            if eps < 0:
                raise InvalidParameterError(f"epsilon must be >= 0, got {eps}")
            object.__setattr__(self, "epsilon", eps)
            object.__setattr__(self, "delta", check_delta("delta", self.delta, allow_zero=False))
        elif self.epsilon is not None:
            object.__setattr__(self, "epsilon", check_positive("epsilon", self.epsilon))

    def _check_gaussian(self) -> None:
        """noise_multiplier > 0, sampling_rate in (0, 1], steps an integer >= 1."""
        if self.noise_multiplier is not None:
            nm = check_positive("noise_multiplier", self.noise_multiplier)
            object.__setattr__(self, "noise_multiplier", nm)
        if self.sampling_rate is not None:
            q = check_positive("sampling_rate", self.sampling_rate)
            if q > 1:
                raise InvalidParameterError(f"sampling_rate must be in (0, 1], got {q}")
            object.__setattr__(self, "sampling_rate", q)
        if self.steps is not None:
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise InvalidParameterError(f"steps must be an integer >= 1, got {self.steps!r}")

    @classmethod
    def laplace(cls, epsilon: float) -> PrivacyEvent:
        """A pure epsilon-DP release; epsilon in (0, inf)."""
        return cls("laplace", epsilon=epsilon)

    @classmethod
    def gaussian(cls, noise_multiplier: float) -> PrivacyEvent:
        """A discrete Gaussian release with sigma / L2 sensitivity = noise_multiplier > 0."""
        return cls("gaussian", noise_multiplier=noise_multiplier)

    @classmethod
    def subsampled_gaussian(
        cls, *, noise_multiplier: float, sampling_rate: float, steps: int
    ) -> PrivacyEvent:
        """``steps`` Poisson-subsampled Gaussian steps (DP-SGD)."""
        return cls(
            "subsampled_gaussian",
            noise_multiplier=noise_multiplier,
            sampling_rate=sampling_rate,
            steps=steps,
        )

    @classmethod
    def approx_dp(cls, epsilon: float, delta: float) -> PrivacyEvent:
        """A release with an (epsilon, delta) guarantee only; epsilon >= 0, delta in (0, 1)."""
        return cls("approx_dp", epsilon=epsilon, delta=delta)

    @property
    def rho(self) -> float | None:
        """Zero-concentrated DP cost, or None for kinds without one."""
        if self.kind == "laplace":
            assert self.epsilon is not None
            return self.epsilon**2 / 2
        if self.kind == "gaussian":
            assert self.noise_multiplier is not None
            return 1.0 / (2.0 * self.noise_multiplier**2)
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``kind`` and only the fields this kind uses."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("epsilon", "delta", "noise_multiplier", "sampling_rate", "steps"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyEvent:
        """Inverse of :meth:`to_dict`; raises InvalidParameterError on unknown keys or values."""
        if not isinstance(data, dict) or "kind" not in data:
            raise InvalidParameterError("a privacy event dict needs a 'kind'")
        allowed = {"kind", "epsilon", "delta", "noise_multiplier", "sampling_rate", "steps"}
        unknown = set(data) - allowed
        if unknown:
            raise InvalidParameterError(f"unknown privacy event fields {sorted(unknown)}")
        return cls(**data)
