"""Transitional: the job queue and the job context are ``service/job_queue.py``, the job views
``service/api/jobs.py``. This module only keeps ``from service.jobs import ...`` working for
tests that their owner is reworking (test_embeddings, test_job_crash, test_jobs_api); it is
deleted once they import from ``service.job_queue``."""

from service.job_queue import encoder_options, job_context, make_queue

__all__ = ["encoder_options", "job_context", "make_queue"]
