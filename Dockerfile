# asgiserve container image.
#
#   docker build -t asgiserve .
#   docker run --rm -p 8000:8000 asgiserve                      # built-in demo app
#   docker run --rm -p 8000:8000 -v "$PWD:/app:ro" -e APP=main:app asgiserve
#
# Your own image, in two lines (see docs/deployment.md):
#
#   FROM asgiserve
#   COPY . /app
#
# and either `CMD ["main:app"]` in that Dockerfile or `-e APP=main:app` at run time.
#
# Build arguments:
#   PYTHON_VERSION  CPython of the official python:<version>-slim base (default 3.13)
#   EXTRAS          extras of the package to install (default "standard": uvloop,
#                   httptools, websockets, watchfiles; use "standard,http2" for h2)
#   ASGISERVE_COMPILE  1 (default): the compiled build (hot modules compiled with mypyc),
#                   the build fails if it cannot be made; 0: pure Python
#
# `docker run --rm asgiserve asgiserve --version` says which build the image runs.

ARG PYTHON_VERSION=3.13

# ---------------------------------------------------------------------------
# Stage 1: build the wheels of asgiserve (compiled) and its dependencies, and
# install them into a virtual environment that the runtime stage copies as a
# whole. Network access, the C compiler and mypy stay in this stage, never in
# the runtime stage.
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build

ARG EXTRAS=standard
ARG ASGISERVE_COMPILE=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    ASGISERVE_COMPILE=${ASGISERVE_COMPILE}

# The C compiler for the compiled build. The official python image has the
# Python headers; a distribution's own Python needs its -dev package for them.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends gcc libc6-dev \
 && if [ ! -f "$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then \
        apt-get install -y -q --no-install-recommends python3-dev; \
    fi \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the wheel is built from (the globs tolerate a missing README/LICENSE),
# so edits elsewhere keep this stage cached.
COPY pyproject.toml setup.py MANIFEST.in README.md* LICENSE* ./
COPY build_backend ./build_backend
COPY asgiserve ./asgiserve

# The pip cache mount keeps downloads between builds where the builder supports
# it (BuildKit); it is never part of an image layer. The build of asgiserve
# fetches the pinned mypy itself (build_backend/asgiserve_build.py); with
# ASGISERVE_COMPILE=1 it fails rather than fall back to pure Python, and the
# last line checks that the installed server runs the compiled modules.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels ".[${EXTRAS}]" \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels "asgiserve[${EXTRAS}]" \
 && /opt/venv/bin/asgiserve --version \
 && { [ "$ASGISERVE_COMPILE" != 1 ] || /opt/venv/bin/asgiserve --version | grep -q "compiled with mypyc"; }

# ---------------------------------------------------------------------------
# Stage 2: the runtime. Same base (so the venv's interpreter path matches), no
# build tools, no wheels, no sources; an unprivileged user owns nothing it runs.
# ---------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

LABEL org.opencontainers.image.title="asgiserve" \
      org.opencontainers.image.description="asgiserve ASGI server; put your application in /app and set APP=module:attr" \
      org.opencontainers.image.licenses="BSD-3-Clause"

# PYTHONPATH=/app: the application is importable whatever the working directory.
# ASGISERVE_HOST/PORT: inside a container the server must listen on all
# interfaces (--host 0.0.0.0); a --host/--port on the command line still wins.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    ASGISERVE_HOST=0.0.0.0 \
    ASGISERVE_PORT=8000 \
    HEALTHCHECK_PATH=/healthz

RUN groupadd --gid 10001 asgiserve \
 && useradd --uid 10001 --gid asgiserve --no-create-home --no-log-init \
        --home-dir /nonexistent --shell /usr/sbin/nologin asgiserve

COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/entrypoint.py /usr/local/lib/asgiserve/entrypoint.py

WORKDIR /app
# The built-in demo app (200 on / and /healthz); your `COPY . /app` replaces or
# sits beside it. Files stay owned by root: the server can read, not modify, them.
COPY deploy/docker/app.py /app/app.py

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000

# The server drains on SIGTERM (stops accepting, finishes in-flight requests
# within --timeout-graceful-shutdown, exits 0). Give `docker stop -t` /
# terminationGracePeriodSeconds more than that timeout.
STOPSIGNAL SIGTERM

# No curl in the image: ask with Python's http.client. Healthy = the server
# answers HTTP on $HEALTHCHECK_PATH with a status below 500 (an app without that
# route still proves the server is alive; set HEALTHCHECK_PATH to a route of
# yours for a stricter check). Serving on --uds or --fd? Use HEALTHCHECK NONE.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client as h,os,sys;c=h.HTTPConnection('127.0.0.1',int(os.environ.get('ASGISERVE_PORT') or 8000),timeout=4);c.request('GET',os.environ.get('HEALTHCHECK_PATH') or '/healthz');sys.exit(c.getresponse().status>=500)"]

# Exec form, no shell: the entrypoint os.execvp()s asgiserve, which therefore
# runs as PID 1 and receives SIGTERM itself. Arguments: an import string
# ("main:app ..."), options only ("--log-level debug", the app then comes from
# $APP), or another program ("python", "asgiserve --version").
ENTRYPOINT ["python", "/usr/local/lib/asgiserve/entrypoint.py"]
CMD []
