"""The baseline: a bare Flask JSON endpoint, served by the same gunicorn configuration as the
API, so the benchmark's ratios say what the API's own work costs."""
from flask import Flask

app = Flask(__name__)


@app.get("/bare")
def bare():
    return {"status": "ok", "items": [1, 2, 3]}
