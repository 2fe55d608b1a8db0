# `make demo` and `make test` set everything up on a fresh machine and are quick when already set up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
DEMO   ?= demo-output

.PHONY: setup test demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/gru4rec synth --events 300000 --items 5000 --seed 7 --format yoochoose --out $(DEMO)/clicks.dat
	$(VENV)/bin/gru4rec prepare $(DEMO)/clicks.dat --format yoochoose --out $(DEMO)/prepared
	$(VENV)/bin/gru4rec train $(DEMO)/prepared/train_full.tsv --params rsc15-xe --set n_epochs=3 --out $(DEMO)/model
	$(VENV)/bin/gru4rec evaluate $(DEMO)/model $(DEMO)/prepared/test.tsv --cutoffs 1 5 10 20 --json $(DEMO)/evaluation.json

clean:
	rm -rf $(DEMO) build *.egg-info
