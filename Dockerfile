FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    APP_ENV=production

WORKDIR /app

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.txt .
# argon2-cffi-bindings is compiled (requirements.txt says why): a compiler for the install only.
# On x86-64 for x86-64-v3 (AVX2: every x86-64 server CPU since about 2015), whose vector code
# halves a password check against plain SSE2; for an older CPU build with
# `--build-arg ARGON2_CFLAGS=-O3`. Other machines (arm64) build for their baseline.
ARG ARGON2_CFLAGS=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && flags="$ARGON2_CFLAGS" \
    && if [ -z "$flags" ]; then \
         case "$(uname -m)" in x86_64) flags="-O3 -march=x86-64-v3" ;; *) flags="-O3" ;; esac; \
       fi \
    && CFLAGS="$flags" pip install -r requirements.txt \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# .dockerignore keeps secrets (.env), local state (instance/, uploads, .venv), .git, tests and
# the deployment files out of the image.
COPY . .
RUN mkdir -p static/uploads/thumbnails static/uploads/resources static/uploads/profiles \
        static/uploads/certificates instance \
    && useradd --system --uid 10001 lms \
    && chown -R lms:lms static/uploads instance

USER lms
# 5000: the API (reached through the proxy only); 9101: metrics (METRICS_PORT, not published).
EXPOSE 5000 9101

# Serve; gunicorn.conf.py holds the worker settings. Migrations are a step of their own, run
# once before the web and worker processes start: the compose `migrate` service, Render's
# preDeployCommand, Heroku's release phase (README, Production).
CMD ["gunicorn", "app:app"]
