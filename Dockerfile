# Production image: the same image runs web, worker and beat.
#   web:    docker run IMAGE   (gunicorn with uvicorn workers, ASGI, on :8000)
#   worker: docker run IMAGE celery -A gpupaas worker --loglevel INFO
#   beat:   docker run IMAGE celery -A gpupaas beat --loglevel INFO --schedule /tmp/celerybeat-schedule
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VAR_DIR=/var/lib/gpupaas
WORKDIR /app
RUN useradd --system --uid 10001 --home /app portal \
    && mkdir -p /var/lib/gpupaas && chown portal /var/lib/gpupaas

COPY pyproject.toml ./
COPY gpupaas ./gpupaas
COPY portal ./portal
COPY workspaces ./workspaces
COPY clusters ./clusters
COPY instances ./instances
COPY notebooks ./notebooks
COPY access ./access
COPY api ./api
COPY gpupaas_cli ./gpupaas_cli
RUN pip install --no-cache-dir .
COPY manage.py ./
COPY templates ./templates
COPY static ./static
# collectstatic needs a key to import settings; the real one comes from the environment.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput

USER portal
EXPOSE 8000
# ASGI: pages and the streaming Kubernetes proxy (/k8s/) in one server.
CMD ["gunicorn", "gpupaas.asgi:application", "--worker-class", "uvicorn_worker.UvicornWorker", \
     "--bind", "0.0.0.0:8000", "--workers", "4", "--access-logfile", "-"]
