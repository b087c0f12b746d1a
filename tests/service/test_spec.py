"""openapi.yaml is the contract: every route is described, and the app conforms to it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from flask import Flask

SPEC = yaml.safe_load((Path(__file__).parents[2] / "openapi.yaml").read_text())
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _app_operations(app: Flask) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in IGNORED_METHODS:
                ops.add((method.lower(), path))
    return ops


def _spec_operations() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_every_route_is_in_the_spec(app: Flask) -> None:
    missing = _app_operations(app) - _spec_operations()
    assert not missing, f"routes the spec does not describe: {sorted(missing)}"


def test_every_spec_operation_exists(app: Flask) -> None:
    extra = _spec_operations() - _app_operations(app)
    assert not extra, f"spec operations with no route: {sorted(extra)}"


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for item in SPEC["paths"].values() for op in item.values()
           if isinstance(op, dict) and "operationId" in op]
    assert len(ids) == len(set(ids))
