"""``GET /openapi.yaml``: the OpenAPI 3.1 contract of this service (public).

``tests/service/test_spec.py`` checks that every route is described and that the app conforms.
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

from service.auth import public

bp = Blueprint("spec", __name__)


def spec_text() -> str:
    return resources.files("service").joinpath("openapi.yaml").read_text(encoding="utf-8")


@bp.get("/openapi.yaml")
@public
def openapi() -> Response:
    """The OpenAPI 3.1 contract of this service."""
    return Response(spec_text(), mimetype="application/yaml")
