"""privtext's Python client: ``Client(url, key)`` asks the service's questions and returns
pandas DataFrames (see :mod:`privtext.client.client`, :mod:`privtext.client.results`).

Installable on its own (``pip install ./client``): it needs requests and pandas, and
matplotlib only for ``Result.plot()``; nothing of the server, and no torch."""

from privtext.client.client import Client, Quote
from privtext.client.errors import (
    AuthenticationError,
    BudgetExhausted,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PrivtextError,
    QueryFailed,
    RateLimited,
    ServerError,
)
from privtext.client.results import Result

__all__ = [
    "AuthenticationError",
    "BudgetExhausted",
    "Client",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "PrivtextError",
    "QueryFailed",
    "Quote",
    "RateLimited",
    "Result",
    "ServerError",
]
