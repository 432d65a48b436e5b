# The two commands (README): `make smoke` runs the smoke study on CPU; `make test` runs the tests.
# Both create or reuse .venv and install what they need (scripts/setup.sh).
VENV ?= .venv
STAMP := $(VENV)/.installed
# Offline (no hub access): make smoke WEB=../shared/data/web/web_sample.jsonl.gz
WEB ?=
RUN ?= smoke
SMOKE_ARGS := --preset smoke --run $(RUN) $(if $(WEB),--set ingest.path=$(WEB))

.PHONY: setup smoke test lab benchmarks clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

smoke: $(STAMP)
	$(VENV)/bin/study run $(SMOKE_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# JupyterLab on the same notebooks, with this environment's kernel
lab: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e ".[notebooks]"
	cd notebooks && $(abspath $(VENV))/bin/jupyter lab

# each prints ours next to a reference, measured in the same run
benchmarks: $(STAMP)
	$(VENV)/bin/python benchmarks/tokenize.py
	$(VENV)/bin/python benchmarks/classify.py
	$(VENV)/bin/python benchmarks/train.py
	$(VENV)/bin/python benchmarks/generate.py
	$(VENV)/bin/python benchmarks/evaluate.py

clean-venv:
	rm -rf $(VENV)
