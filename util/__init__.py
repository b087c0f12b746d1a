"""Small helpers that every layer may import (``mechanisms``, ``corpus``, ``models``,
``service``). This package imports nothing from the project."""
