"""Development entry point: `python main.py` serves the API on http://127.0.0.1:5000/api/v1.

Production runs `gunicorn app:app` (see gunicorn.conf.py) instead."""
import os

from app import create_app

app = create_app()

if __name__ == "__main__":
    app.run(
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "5000")),
        debug=app.config.get("DEBUG", False),
    )
