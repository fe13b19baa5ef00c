# The README's two commands: `make run` and `make test`. Both create .venv when it is missing and
# (re)install when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MovieLens-100K for offline runs and tests: the RecBole wheel carries it (downloaded, not installed).
WHEELS := .cache/bertrec/wheels
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@ls $(WHEELS)/recbole-1.2.1-*.whl >/dev/null 2>&1 || \
		$(BIN)/python -m pip download --quiet --disable-pip-version-check recbole==1.2.1 --no-deps -d $(WHEELS)
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/bertrec prepare
	$(BIN)/bertrec split
	$(BIN)/bertrec baselines
	$(BIN)/bertrec train
	$(BIN)/bertrec embed
	$(BIN)/bertrec index
	$(BIN)/bertrec evaluate
	$(BIN)/bertrec register
	$(BIN)/bertrec recommend --user 1 --k 5

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf data/prepared data/splits metrics outputs
