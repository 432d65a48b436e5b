# The two commands (README): `make smoke` runs the smoke study on CPU; `make test` runs the tests.
# Both create or reuse .venv and install what they need (scripts/setup.sh).
VENV ?= .venv
STAMP := $(VENV)/.installed
# The embedded data by default (data/README.md); PRESET=smoke-hub reads the hub; WEB=path your own pages
PRESET ?= smoke
WEB ?=
RUN ?= smoke
LAB_ARGS ?=
SMOKE_ARGS := --preset $(PRESET) --run $(RUN) $(if $(WEB),--set ingest.path=$(WEB))

.PHONY: setup smoke test lab benchmarks clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

smoke: $(STAMP)
	$(VENV)/bin/study run $(SMOKE_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# JupyterLab at the project root (notebooks/ and the executed records in results/), this environment's
# kernel; extra arguments: make lab LAB_ARGS=--allow-root
lab: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e ".[notebooks]"
	$(VENV)/bin/jupyter lab $(LAB_ARGS)

# each prints ours next to a reference, measured in the same run
benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_tokenize.py
	$(VENV)/bin/python benchmarks/bench_classify.py
	$(VENV)/bin/python benchmarks/bench_train.py
	$(VENV)/bin/python benchmarks/bench_generate.py
	$(VENV)/bin/python benchmarks/bench_evaluate.py

clean-venv:
	rm -rf $(VENV)
