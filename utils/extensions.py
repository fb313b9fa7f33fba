"""The Flask extension objects, created once, here, and wired to an app by `create_app()` in
app.py (`init_app`). This module imports nothing of ours, so every floor may take them: routes
put per-route limits on `limiter`, the e-mail provider sends through `mail`."""
from __future__ import annotations

from flask import request
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_mail import Mail
from flask_migrate import Migrate

migrate = Migrate()
mail = Mail()
cors = CORS()
# The limiter's keys begin with it (utils/pipeline/round_trip.py names them ahead of it).
RATE_LIMIT_KEY_PREFIX = "lms"
limiter = Limiter(
    get_remote_address,
    # With Redis briefly unreachable, limits fall back to memory instead of failing requests.
    in_memory_fallback_enabled=True,
    key_prefix=RATE_LIMIT_KEY_PREFIX,
)

# Set in the WSGI environ by a layer before Flask that has already counted this request against
# every limit of its endpoint, in the limiter's own storage and keys, and found room
# (utils/pipeline/catalog_fast_path.py): Flask-Limiter must not count it a second time.
COUNTED = "lms.limits_counted"


@limiter.request_filter
def _counted_before_flask() -> bool:
    return request.environ.get(COUNTED, False)
