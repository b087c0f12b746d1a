"""WSGI entry point for gunicorn: ``service.wsgi:app`` (one app per worker process)."""

from service.app import create_app

app = create_app()
