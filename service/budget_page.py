"""Transitional: the budget page is ``service/api/budget_page.py``. This module only keeps
``from service.budget_page import COOKIE`` working for tests/service/test_budget_page.py, which
its owner is reworking; it is deleted once that test imports from the new path."""

from service.api.budget_page import COOKIE

__all__ = ["COOKIE"]
