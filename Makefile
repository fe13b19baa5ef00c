# The README's two commands: `make run` and `make test`. Both create .venv when it is missing and
# (re)install when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
# MovieLens-100K for offline runs and tests: the RecBole wheel carries it (downloaded, not installed).
WHEELS := .cache/bertrec/wheels
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test clean stack stack-down

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@ls $(WHEELS)/recbole-1.2.1-*.whl >/dev/null 2>&1 || \
		$(BIN)/python -m pip download --quiet --disable-pip-version-check recbole==1.2.1 --no-deps -d $(WHEELS)
	@touch $(STAMP)

# The ray extra (compute.engine: ray): the suite tests the Ray paths on a local cluster; `make run` stays local.
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]'
	@touch $(RAY_STAMP)

# The pipeline is dvc.yaml's stages, run by the Prefect flow (local ephemeral Prefect, MLflow on
# sqlite:///mlflow.db, DVC with the local remote): stages whose inputs did not change are skipped.
run: $(STAMP)
	$(BIN)/python -m flows.training
	$(BIN)/bertrec recommend --user 1 --k 5

# Lint and format checks first (fast), then the suite on two workers (the test files sharing a costly
# fixture stay on one: tests/conftest.py).
test: $(RAY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2

stack: $(STAMP)
	$(BIN)/bertrec stack up

stack-down:
	$(BIN)/bertrec stack down

clean:
	rm -rf data/prepared data/splits metrics outputs
