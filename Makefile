# Two commands on a fresh clone: `make run` and `make test`. Needs Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/gpupaas
CELERY_BROKER_URL ?= redis://127.0.0.1:6379/15
# Test workers (pytest-xdist): most of the suite waits on real processes, not the CPU.
TEST_WORKERS ?= 2

.PHONY: run test lint bench record-contracts clean

# The venv is filled by uv (a dependency of the portal anyway: it builds the notebooks'
# environments), which installs the whole set in seconds where pip took minutes, and says
# what it does.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv

# The portal and its `gpupaas` command (cli/, a distribution of its own).
$(VENV)/.installed: pyproject.toml cli/pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -e . -e ./cli
	touch $@

$(VENV)/.installed-test: pyproject.toml cli/pyproject.toml | $(BIN)/python
	$(BIN)/uv pip install --python $(BIN)/python -e '.[test]' -e ./cli
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap
	$(BIN)/python manage.py runportal

test: $(VENV)/.installed-test
	@DATABASE_URL=$(DATABASE_URL) CELERY_BROKER_URL=$(CELERY_BROKER_URL) \
		$(BIN)/python -m tests.preflight
	DATABASE_URL=$(DATABASE_URL) CELERY_BROKER_URL=$(CELERY_BROKER_URL) \
		$(BIN)/pytest -n $(TEST_WORKERS) --durations=30

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

bench: $(VENV)/.installed-test
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench,$(DATABASE_URL)) $(BIN)/python bench/pages.py
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench_kube,$(DATABASE_URL)) \
		CELERY_BROKER_URL=$(CELERY_BROKER_URL) $(BIN)/python bench/kube.py
	$(BIN)/python bench/notebooks.py
	$(BIN)/python bench/services.py
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench_usage,$(DATABASE_URL)) $(BIN)/python bench/usage.py
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench_proxy,$(DATABASE_URL)) $(BIN)/python bench/proxy.py
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench_launch,$(DATABASE_URL)) \
		CELERY_BROKER_URL=$(CELERY_BROKER_URL) $(BIN)/python bench/launch.py
	DATABASE_URL=$(subst /gpupaas,/gpupaas_bench_scale,$(DATABASE_URL)) \
		CELERY_BROKER_URL=$(CELERY_BROKER_URL) $(BIN)/python bench/scale.py  # about 5 minutes
	$(BIN)/python bench/chaos.py  # its own PostgreSQL and Redis; 10 minutes of faults
	$(BIN)/python bench/peers.py  # JupyterHub beside us; needs npm and the package index
	$(BIN)/python bench/coldstart.py  # fresh clones; needs the package index

# Needs the envtest binaries and the upstream CRDs (Flux, Cluster API, CAAPH):
# KUBEBUILDER_ASSETS=/path/to/bin ENVTEST_CRDS=/path/to/crds make record-contracts
record-contracts: $(VENV)/.installed-test
	DJANGO_SETTINGS_MODULE=gpupaas.settings $(BIN)/python -m tests.kit.contracts

clean:
	rm -rf $(VENV) var
