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
RUN pip install -r requirements.txt

COPY . .
RUN mkdir -p static/uploads/thumbnails static/uploads/resources static/uploads/profiles \
        static/uploads/certificates instance \
    && useradd --system --uid 10001 lms \
    && chown -R lms:lms static/uploads instance

USER lms
EXPOSE 5000

# Apply migrations, then serve; gunicorn.conf.py holds the worker settings.
CMD ["sh", "-c", "flask --app app db upgrade && exec gunicorn app:app"]
