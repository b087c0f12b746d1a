"""What the service writes is private to its owner: files on disk and HTTP responses.

* Files: the data directory holds the state database and its WAL (the audit log keeps
  analysts' keywords and answers), corpus snapshots, job inputs and results and model weights.
  Every process that writes there (gunicorn's master and workers, the ``privtext`` command and
  its job worker) calls ``restrict_umask`` when it starts, so that what it creates is readable
  by its owner only, and ``private_dir`` makes the data directory itself 0700.
* Responses: every response carries ``Cache-Control: no-store`` (no proxy or browser keeps
  an answer, an audit export or a newly minted key) and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flask import Flask, Response

#: Files and directories created under it get no group or other permission bits.
UMASK = 0o077

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def restrict_umask() -> None:
    """Make every file this process creates from now on readable by its owner only."""
    os.umask(UMASK)


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) with mode 0700; an existing directory this process
    owns loses any group and other permission bits."""
    folder = Path(path)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        folder.chmod(stat.S_IMODE(st.st_mode) & 0o700)
    return folder


def init_app(app: Flask) -> None:
    """Add the security headers to every response, errors included."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response
