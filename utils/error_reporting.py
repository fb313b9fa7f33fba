"""Error reporting to Sentry, when SENTRY_DSN is set (nothing is imported or sent otherwise).

The Flask integration reports requests that end in an unhandled error; the logging integration
reports every ERROR log record, which is how the app's one 500 handler (it logs the exception,
utils/middleware.py) and failed jobs (services/jobs.py) reach Sentry. RQ's integration is
enabled by the SDK itself in the worker. What could carry a secret stays home: request bodies,
local variables of stack frames, cookies and authorization headers are never sent.
"""
from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    dsn = app.config.get("SENTRY_DSN")
    if not dsn:
        return
    # sentry_sdk only when a DSN is set: most deployments never load it.
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    client = sentry_sdk.get_client()
    if client.is_active() and client.dsn == dsn:
        return  # one client per process; a second app (tests, tools) shares it
    sentry_sdk.init(
        dsn=dsn,
        environment=app.config.get("SENTRY_ENVIRONMENT") or app.config.get("CONFIG_NAME"),
        traces_sample_rate=app.config.get("SENTRY_TRACES_SAMPLE_RATE") or 0.0,
        integrations=[FlaskIntegration()],
        send_default_pii=False,  # no user addresses, cookies or Authorization headers
        max_request_body_size="never",  # bodies hold passwords, tokens, card references
        include_local_variables=False,  # so do the variables of the frames that handle them
    )
