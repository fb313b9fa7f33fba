"""The Flask extension objects, created once, here, and wired to an app by `create_app()` in
app.py (`init_app`). This module imports nothing of ours, so every floor may take them: routes
put per-route limits on `limiter`, the e-mail provider sends through `mail`."""
from __future__ import annotations

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
