# syntax=docker/dockerfile:1
# privtext: multi-stage build; the runtime image holds the virtual environment and the code,
# runs as an unprivileged user, and serves with gunicorn.
# (Docker cannot run on the development machines; this file is kept correct by reading.)

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md openapi.yaml ./
COPY service ./service
COPY mechanisms ./mechanisms
COPY models ./models
COPY corpus ./corpus
COPY util ./util
COPY jobs ./jobs
# service/openapi.yaml is a link to ../openapi.yaml in the repository; make it a file here.
# The [spark] extra is the Spark Connect client (PRIVTEXT_ENGINE_URL; docker-compose sets it).
# Note: torch==2.13.0 from the default index on x86_64 Linux is the CUDA build (several GB);
# for a CPU-only image, pre-install torch 2.13.0 from a CPU wheel index before this step.
RUN rm -f service/openapi.yaml && cp openapi.yaml service/openapi.yaml \
 && pip install --upgrade pip && pip install '.[spark]'

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system privtext && useradd --system --gid privtext --home-dir /var/lib/privtext \
      --create-home --shell /usr/sbin/nologin privtext
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PRIVTEXT_DATA_DIR=/var/lib/privtext \
    PRIVTEXT_BIND=0.0.0.0:8000 \
    PRIVTEXT_WORKERS=4
USER privtext
WORKDIR /var/lib/privtext
VOLUME ["/var/lib/privtext"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# The first start ingests the bundled demo corpus if no snapshot exists and makes sure an
# admin key exists (PRIVTEXT_ADMIN_KEY, or one printed once to the log).
# (The job worker runs as its own container: `privtext worker`, see docker-compose.yml.)
ENTRYPOINT ["/bin/sh", "-c", "privtext ingest --demo --if-missing && privtext ensure-admin && exec gunicorn --config python:service.gunicorn_conf service.wsgi:app"]
