# Two commands set everything up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
export FLASK_APP = app.py

.PHONY: run test bench bench-scale install js-deps migrate seed clean help nginx certs

help:
	@echo "make run    serve the API on http://127.0.0.1:5000/api/v1 (SQLite, no setup needed)"
	@echo "make test   install and run the whole test suite"
	@echo "make js-deps  the pinned node packages of tests/js/* (make install runs it)"
	@echo "make bench  the API under load against a bare-Flask baseline (PostgreSQL, Redis, wrk)"
	@echo "make bench-scale  the same reads at 1x and 10x data, and capacity figures (SCALE=1 make bench: both)"
	@echo "make nginx  nginx, envsubst and openssl from Debian's packages (the proxy tests need them)"
	@echo "make certs  a self-signed certificate in deploy/certs, to try docker compose out"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $(STAMP)

# argon2-cffi-bindings is compiled (requirements.txt), then compiled again once per venv for the
# CPU it runs on, whose vector code (AVX2 on x86-64) halves a password check against the
# portable SSE2 build; without pip's wheel cache, which would hand back the first build. A venv
# is not moved between machines; the Dockerfile builds for a named CPU level instead.
ARGON2_CFLAGS ?= -O3 -march=native
ARGON2_STAMP   = $(VENV)/.argon2-native
$(ARGON2_STAMP): $(STAMP)
	CFLAGS="$(ARGON2_CFLAGS)" $(BIN)/pip install --disable-pip-version-check -q --no-cache-dir \
	    --force-reinstall --no-deps --no-binary argon2-cffi-bindings \
	    "$$(grep -m1 '^argon2-cffi-bindings==' requirements.txt)"
	@touch $@

# Node packages the tests use (tests/js/<dir>/, each pinned by its own package-lock.json: the
# credential verifier, the OpenAPI contract tools): installed with `npm ci` where npm exists,
# again only when a lock file changes. Without npm the tests that need them skip (and fail
# under CI=true). They come with the Python packages, so .ci/run's one `make install` before
# its passes run side by side installs them once (never several npm ci at once).
JS_DIRS   := $(patsubst %/package-lock.json,%,$(wildcard tests/js/*/package-lock.json))
JS_STAMPS := $(addsuffix /node_modules/.installed,$(JS_DIRS))

tests/js/%/node_modules/.installed: tests/js/%/package-lock.json tests/js/%/package.json
	@if command -v npm >/dev/null 2>&1; then \
	    npm ci --prefix tests/js/$* --no-audit --no-fund && touch $@; \
	else echo "npm not found: the tests that use tests/js/$* skip"; fi

js-deps: $(JS_STAMPS)

install: $(STAMP) $(ARGON2_STAMP) js-deps

migrate: install
	$(BIN)/flask db upgrade

seed: migrate
	$(BIN)/flask seed-demo --if-empty

run: seed
	@echo ""
	@echo "API:  http://127.0.0.1:5000/api/v1   docs: http://127.0.0.1:5000/api/v1/docs"
	@echo "Log in: POST /api/v1/auth/login with a demo account printed above when first seeded,"
	@echo "or create an admin with: $(BIN)/flask create-admin"
	@echo ""
	$(BIN)/flask run --host 127.0.0.1 --port 5000

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmark: a large dataset on a scratch PostgreSQL database, gunicorn as in production,
# wrk on 127.0.0.1 (installed from Debian's packages when missing). See bench/run.py.
bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py
	@if [ -n "$(SCALE)" ]; then $(MAKE) --no-print-directory bench-scale; fi

# Cost flat with data: every list, the dashboards and the analytics at today's bench dataset and
# at ten times the learners (two scratch databases, seeded in SQL in a few minutes), then CPU per
# request, worker memory and the database's write rate for the README's capacity table. See
# bench/scale.py. Never part of the test suite.
bench-scale: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/scale.py

# tests/test_proxy.py runs the compose proxy's configuration (deploy/nginx) with nginx from
# Debian's packages; installed when missing, as `make bench` does for wrk. A package install
# that started the system's own nginx (no policy-rc.d to stop it) is stopped again.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || ( \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx \
	    && (test ! -f /run/nginx.pid || /usr/sbin/nginx -s quit || true))
	@command -v envsubst >/dev/null || apt-get install -y -qq --no-install-recommends gettext-base
	@command -v openssl >/dev/null || apt-get install -y -qq --no-install-recommends openssl

# For trying `docker compose up` out: a self-signed certificate where the proxy looks for one
# (TLS_CERT_DIR, default deploy/certs). Production mounts the certificate its CA issued.
certs:
	@test -f deploy/certs/fullchain.pem || deploy/nginx/self-signed-cert.sh deploy/certs localhost

clean:
	rm -rf $(VENV) instance/dev.db .pytest_cache $(addsuffix /node_modules,$(JS_DIRS))
