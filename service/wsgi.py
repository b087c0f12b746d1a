"""WSGI entry point for gunicorn: ``service.wsgi:app`` (one app per worker process)."""

from service.app import create_app
from service.hardening import restrict_umask

restrict_umask()
app = create_app()
