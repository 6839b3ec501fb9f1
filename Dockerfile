# Production image: the same image runs web, worker, beat and the release step.
#   web:     docker run IMAGE   (gunicorn with uvicorn workers, ASGI, on :8000; gpupaas/gunicorn.py)
#   worker:  docker run IMAGE celery -A gpupaas worker --loglevel INFO
#   beat:    docker run IMAGE celery -A gpupaas beat --loglevel INFO --schedule /tmp/celerybeat-schedule
#   release: docker run IMAGE sh -c "python manage.py migrate --noinput && python manage.py bootstrap"
# deploy/kubernetes/ runs it on Kubernetes (non-root uid 10001, read-only root filesystem,
# /tmp a writable emptyDir).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VAR_DIR=/var/lib/gpupaas \
    LOG_FORMAT=json HOME=/tmp WEB_CONCURRENCY=4
WORKDIR /app
RUN groupadd --system --gid 10001 portal \
    && useradd --system --uid 10001 --gid 10001 --home /app portal \
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
COPY cli ./cli
RUN pip install --no-cache-dir . ./cli
COPY manage.py ./
COPY templates ./templates
COPY static ./static
# collectstatic needs a key to import settings; the real one comes from the environment. The
# collected files stay in the image (VAR_DIR/static), which runs with a read-only root.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput

USER 10001:10001
EXPOSE 8000 9808
# ASGI: pages and the streaming Kubernetes proxy (/k8s/) in one server. Workers:
# WEB_CONCURRENCY (4 here); each request is logged once, by the portal, with its id.
CMD ["gunicorn", "-c", "python:gpupaas.gunicorn", "gpupaas.asgi:application"]
