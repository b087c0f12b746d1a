"""The state store: the SQLAlchemy engine (``db``), the tables (``tables``, ``ledger_tables``),
the ledger's SQL store (``ledger``), the audit log (``audit``), the rate limiter
(``ratelimit``), ledger retention (``retention``) and the commit helper (``writes``).

Stores lock, read, write and insert; the policy they serve (what may be charged, what is
admitted) lives in ``mechanisms.ledger`` and in the service's application layer.
"""
