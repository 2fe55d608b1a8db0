# `make demo` and `make test` set everything up on a fresh machine and are quick when already set up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
DEMO   ?= demo-output

.PHONY: setup test demo pipeline clean redis browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# A real redis-server for the service tests (they fail, not skip, without one).
redis:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
		elif command -v sudo >/dev/null 2>&1; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
		else echo "redis-server is not installed and neither root nor sudo is available to install it" >&2; exit 1; fi; \
	fi
	@redis-cli -p 6379 ping >/dev/null 2>&1 || redis-server --port 6379 --daemonize yes --save '' --appendonly no
	@for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 0.5; done; \
		echo "redis-server did not start on port 6379" >&2; exit 1

# Headless Chromium and its driver for the demo page's browser test (it fails, not skips, without them).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
		elif command -v sudo >/dev/null 2>&1; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
		else echo "chromium/chromedriver are not installed and neither root nor sudo is available to install them" >&2; exit 1; fi; \
	fi

test: setup redis browser
	$(PY) -m pytest -q

# The whole pipeline on a log: prepare, train (GPU when present), compare with the popularity and
# V-SKNN baselines, then serve on localhost (SERVE=0: stop before serving).
#   make pipeline LOG=yoochoose-clicks.dat FORMAT=yoochoose OUT=rsc15-output
GRU4REC  := $(VENV)/bin/gru4rec
LOG      ?=
FORMAT   ?= auto
OUT      ?= pipeline-output
PARAMS   ?= rsc15-xe
EPOCHS   ?=
PORT     ?= 8000
SERVE    ?= 1

pipeline: setup
	@test -n "$(LOG)" || { echo "usage: make pipeline LOG=path/to/clicks [FORMAT=yoochoose|csv|tsv|parquet|diginetica|otto] [OUT=dir] [PARAMS=rsc15-xe] [EPOCHS=n] [SERVE=0]" >&2; exit 2; }
	$(GRU4REC) prepare $(LOG) --format $(FORMAT) --out $(OUT)/prepared
	$(GRU4REC) train $(OUT)/prepared/train_full.tsv --params $(PARAMS) $(if $(EPOCHS),--set n_epochs=$(EPOCHS)) --device auto --out $(OUT)/model
	$(GRU4REC) compare $(OUT)/prepared/test.tsv --model gru4rec=$(OUT)/model --baseline pop vsknn \
		--train $(OUT)/prepared/train_full.tsv --cutoffs 1 5 10 20 --out $(OUT)/comparison
	@echo
	@echo "Comparison table: $(OUT)/comparison/comparison.md, plot: $(OUT)/comparison/comparison.png"
	@item=$$(sed -n 2p $(OUT)/prepared/test.tsv | cut -f2); \
	if [ "$(SERVE)" = 1 ]; then echo "Serving on http://127.0.0.1:$(PORT) (open it in a browser for the demo page); from another terminal try:"; \
	else echo "Not serving (SERVE=0); serve with: $(GRU4REC) serve $(OUT)/model --port $(PORT), then try:"; fi; \
	echo "  curl -s -X POST http://127.0.0.1:$(PORT)/v1/recommend -H 'Content-Type: application/json' -d '{\"items\": [\"$$item\"], \"k\": 5}'"
	@if [ "$(SERVE)" = 1 ]; then $(GRU4REC) serve $(OUT)/model --host 127.0.0.1 --port $(PORT); fi

# The same pipeline on the built-in synthetic log (a few minutes on a 2-core CPU).
demo: setup
	$(GRU4REC) synth --events 300000 --items 5000 --seed 7 --format yoochoose --out $(DEMO)/clicks.dat
	$(MAKE) --no-print-directory pipeline LOG=$(DEMO)/clicks.dat FORMAT=yoochoose OUT=$(DEMO) EPOCHS=3

clean:
	rm -rf $(DEMO) build *.egg-info
