"""What a set of privacy events has spent, as an additive summary, and the one admission rule.

A :class:`Spend` is what the ledger stores per principal (and for the corpus-wide cap): the
sum of the events' Renyi DP curves at :data:`~mechanisms.rdp.ORDERS`, the sum of the pure
epsilons, and the (epsilon, delta) sums of the ``approx_dp`` events. It adds and subtracts in
O(len(ORDERS)), so admission can run inside one short database transaction.

:meth:`Spend.epsilon` is the admission bound, and :func:`within` is the one admission rule:
every ledger backend (``affordable`` in :mod:`mechanisms.ledger`), every quote, and
``Accountant.can_afford`` decide with it. The bound, at the budget's delta:

- the ``approx_dp`` events take their deltas off the top and add their epsilons (basic
  composition);
- the rest costs ``min(basic composition of the pure epsilons, RDP conversion of the summed
  curves)``, the first term only when every remaining event is pure (Laplace). Both terms are
  sound upper bounds, so their minimum is.

Why each term is sound: a Laplace event's curve is that of randomized response (a bound on
every pure epsilon-DP mechanism, Kairouz, Oh, Viswanath 2015); a Gaussian event's curve is
rho-zCDP with rho = 1 / (2 noise_multiplier**2), proven for the discrete Gaussian with any
integer shift within the L2 sensitivity (Canonne, Kamath, Steinke 2020); RDP and basic
composition both hold for adaptive composition; the conversion is dp-accounting's (Canonne,
Kamath, Steinke 2020 / Asoodeh et al. 2020). A tempting extra term, ``pure epsilons + RDP of
the rest``, is never smaller than the RDP conversion of the whole (each order of a Laplace
curve is at most its epsilon), so it is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mechanisms.errors import InvalidParameterError
from mechanisms.events import PrivacyEvent
from mechanisms.rdp import epsilon_from_rdp, rdp_vector

__all__ = ["Spend", "within", "EPSILON_TOLERANCE"]

#: Absolute slack on the epsilon comparison so that float rounding in a sum of many small
#: charges (0.1 + 0.2 + ...) cannot refuse the last query that exactly fits.
EPSILON_TOLERANCE = 1e-9

_CURVE_KINDS = ("laplace", "gaussian", "subsampled_gaussian")
_FIELDS = ("pure_epsilon", "curve_count", "approx_epsilon", "approx_delta")


def _rdp_entry(x: float, y: float, sign: int) -> float:
    """One order of ``x + sign * y``. A refund (sign -1) clamps at zero, so float residue
    never goes negative; but where either side is infinite (dp-accounting gives ``inf`` at
    orders where its series does not converge), the sum of the other events at that order is
    unknown: ``inf - inf`` would be NaN, which the clamp turned into 0, an order at which
    everything looked free (epsilon 0). Such an order keeps ``x``: conservative, never low."""
    if sign < 0 and (math.isinf(x) or math.isinf(y)):
        return x
    return max(0.0, x + sign * y)


@dataclass(frozen=True)
class Spend:
    """Additive summary of a set of privacy events (what the ledger stores per principal).

    ``rdp``: sum of the RDP curves (``rdp_vector``) of the events that have one;
    ``pure_epsilon``: sum of the Laplace events' epsilons (basic composition);
    ``curve_count``: how many events are not pure (Gaussian, subsampled Gaussian);
    ``approx_epsilon``/``approx_delta``: sums over ``approx_dp`` events, which have no curve
    and are added on top by basic composition; ``count``: number of events.
    """

    rdp: tuple[float, ...] = ()
    pure_epsilon: float = 0.0
    curve_count: int = 0
    approx_epsilon: float = 0.0
    approx_delta: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, event: PrivacyEvent) -> Spend:
        if event.kind == "approx_dp":
            return cls(
                approx_epsilon=float(event.epsilon or 0.0),
                approx_delta=float(event.delta or 0.0),
                count=1,
            )
        if event.kind not in _CURVE_KINDS:
            raise InvalidParameterError(f"the ledger cannot price a {event.kind!r} event")
        pure = event.kind == "laplace"
        return cls(
            rdp=tuple(float(x) for x in rdp_vector(event)),
            pure_epsilon=float(event.epsilon or 0.0) if pure else 0.0,
            curve_count=0 if pure else 1,
            count=1,
        )

    def _combine(self, other: Spend, sign: int) -> Spend:
        a, b = list(self.rdp), list(other.rdp)
        n = max(len(a), len(b))
        a += [0.0] * (n - len(a))
        b += [0.0] * (n - len(b))
        rdp = tuple(_rdp_entry(x, y, sign) for x, y in zip(a, b, strict=True))
        sums = {f: max(0, getattr(self, f) + sign * getattr(other, f)) for f in _FIELDS}
        return Spend(rdp=rdp, count=max(0, self.count + sign * other.count), **sums)

    def __add__(self, other: Spend) -> Spend:
        return self._combine(other, +1)

    def __sub__(self, other: Spend) -> Spend:
        result = self._combine(other, -1)
        return Spend() if result.count == 0 else result

    def epsilon(self, delta: float) -> float:
        """A sound epsilon for everything in this spend at ``delta`` (0.0 when empty).

        The approx_dp events take ``approx_delta`` of ``delta`` and add ``approx_epsilon``;
        the rest is the smaller of basic composition (when all are pure) and the RDP
        conversion at the delta left. ``inf`` when ``delta`` cannot cover it.
        """
        if self.count == 0:
            return 0.0
        rest = delta - self.approx_delta
        if rest < 0:
            return math.inf
        curve = 0.0
        if self.curve_count or self.pure_epsilon:
            pure = self.pure_epsilon if self.curve_count == 0 else math.inf
            rdp = float(epsilon_from_rdp(list(self.rdp), rest)) if rest > 0 else math.inf
            curve = min(pure, rdp)
        return curve + self.approx_epsilon

    def to_dict(self) -> dict[str, Any]:
        return {
            "rdp": list(self.rdp),
            "count": self.count,
            **{f: getattr(self, f) for f in _FIELDS},
        }

    @classmethod
    def total(cls, events: Iterable[PrivacyEvent]) -> Spend:
        """The spend of all ``events`` (raises InvalidParameterError for one it cannot price)."""
        result = cls()
        for event in events:
            result = result + cls.of(event)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Spend:
        if not data:
            return cls()
        return cls(
            rdp=tuple(float(x) for x in data.get("rdp", ())),
            pure_epsilon=float(data.get("pure_epsilon", 0.0)),
            curve_count=int(data.get("curve_count", 0)),
            approx_epsilon=float(data.get("approx_epsilon", 0.0)),
            approx_delta=float(data.get("approx_delta", 0.0)),
            count=int(data.get("count", 0)),
        )


def within(spend: Spend, epsilon: float, delta: float) -> bool:
    """The admission rule: whether ``spend`` fits an (``epsilon``, ``delta``) budget.

    True when :meth:`Spend.epsilon` at ``delta`` is at most ``epsilon`` (plus
    :data:`EPSILON_TOLERANCE`). Callers validate the budget (``epsilon`` > 0, ``delta`` in
    [0, 1)); an empty spend always fits.
    """
    return spend.epsilon(delta) <= epsilon + EPSILON_TOLERANCE
