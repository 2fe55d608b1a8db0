# `make demo` and `make test` set everything up on a fresh machine and are quick when already set up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
DEMO   ?= demo-output

.PHONY: setup test demo clean redis browser

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

# The whole pipeline on a built-in synthetic log: generate, prepare, train (GPU when present),
# compare with the popularity and V-SKNN baselines, then serve on localhost (DEMO_SERVE=0: stop before).
GRU4REC    := $(VENV)/bin/gru4rec
DEMO_PORT  ?= 8000
DEMO_SERVE ?= 1

demo: setup
	$(GRU4REC) synth --events 300000 --items 5000 --seed 7 --format yoochoose --out $(DEMO)/clicks.dat
	$(GRU4REC) prepare $(DEMO)/clicks.dat --format yoochoose --out $(DEMO)/prepared
	$(GRU4REC) train $(DEMO)/prepared/train_full.tsv --params rsc15-xe --set n_epochs=3 --device auto --out $(DEMO)/model
	$(GRU4REC) compare $(DEMO)/prepared/test.tsv --model gru4rec=$(DEMO)/model --baseline pop vsknn \
		--train $(DEMO)/prepared/train_full.tsv --cutoffs 1 5 10 20 --out $(DEMO)/comparison
	@echo
	@echo "Comparison table: $(DEMO)/comparison/comparison.md, plot: $(DEMO)/comparison/comparison.png"
	@item=$$(sed -n 2p $(DEMO)/prepared/test.tsv | cut -f2); \
	echo "Serving on http://127.0.0.1:$(DEMO_PORT) (open it in a browser for the demo page); from another terminal try:"; \
	echo "  curl -s -X POST http://127.0.0.1:$(DEMO_PORT)/v1/recommend -H 'Content-Type: application/json' -d '{\"items\": [\"$$item\"], \"k\": 5}'"
	@if [ "$(DEMO_SERVE)" = 1 ]; then $(GRU4REC) serve $(DEMO)/model --host 127.0.0.1 --port $(DEMO_PORT); fi

clean:
	rm -rf $(DEMO) build *.egg-info
