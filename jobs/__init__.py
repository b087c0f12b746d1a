"""Background jobs, whatever they do: the job table, its states, the queue, the leases.

* :mod:`jobs.table`: the ``jobs`` and ``job_leases`` tables (SQLAlchemy) and the ``Job`` row;
* :mod:`jobs.states`: the state machine (``queued -> running -> succeeded | failed``, and
  cancelling), one conditional UPDATE per transition;
* :mod:`jobs.context`: what every job runs with, and its input file (mode 0600, deleted
  however the job ends);
* :mod:`jobs.queue`: huey on SQLite or Redis (or in memory, for tests), with one task per kind
  registered by the caller;
* :mod:`jobs.leases` and :mod:`jobs.recovery`: a running job's lease, and failing the jobs
  whose worker died.

What a training or an embedding job does is in ``models.job_bodies``. Layers point one way:
this package uses ``mechanisms`` and ``corpus`` at most, and is used by ``models`` and
``service``; it imports neither (the queue is given the job bodies by its caller).
"""
