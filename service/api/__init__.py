"""The HTTP API: one blueprint module per resource, registered by ``service.app.create_app``.

Each module reads a request (``service/body.py``, the schemas), calls the layer that does the
work (``service/accounts.py``, ``service/charging.py``, the ledger, the job queue) and writes
the response; the app's resources come from ``service.services.services()``.
"""
