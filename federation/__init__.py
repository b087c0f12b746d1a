"""Federated training across silos (issue 13): Flower's deployment engine, privtext's privacy.

Each silo is a privtext instance (its own data directory, snapshot, ledger and corpus-wide
cap). Every round, a silo prices its local DP-SGD round from public inputs, charges it to its
own cap through :class:`models.charge.TrainingCharge` before it reads any text (declining the
round when the cap cannot afford it), trains with the same per-sender DP-SGD engine as central
training (:class:`models.trainer.Trainer`) and returns only the trained weights. The
coordinator averages the accepted updates (FedAvg) and, after the last round, each silo
publishes the global model into its own registry with its own privacy statement.

* :mod:`federation.config`: the run's settings, as Flower's flat run config carries them;
* :mod:`federation.updates`: checks on the updates a coordinator receives (no flwr, no torch);
* :mod:`federation.silo`: a silo's round and its publication (torch loaded lazily);
* :mod:`federation.apps`: the Flower ``ClientApp`` and ``ServerApp`` (imports ``flwr``).
"""
