"""Request schemas (marshmallow; unknown fields are refused): the query (``query``, assembled
from the registered kinds, and the fields every kind shares, ``query_fields``), the admin API
(``admin``), the embedding, job and model routes (``jobs``) and the strict JSON fields they
all use (``fields``). ``openapi.yaml`` describes the same fields; ``tests/service/test_spec.py``
checks that they agree in both directions.
"""
