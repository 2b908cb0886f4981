# The README's two commands. Both create `.venv/` on first use and keep it up to date.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# schemas and the pure reward core: type-checked with mypy --strict
PURE := schemas processors/rules processors/alignment.py processors/stages.py

.PHONY: demo test install lint clean chromium

$(BIN)/refstream: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

# The pure core compiled with mypyc (docs/performance.md#compiled-core), rebuilt when a
# source changes; if compiling fails, refstream runs interpreted: same results, slower.
CORE := $(shell grep -o '"[a-z_]*/[a-z_/]*\.py"' schemas/_compiled.py | tr -d '"')
.cache/compiled/manifest.json: $(CORE) | $(BIN)/refstream
	@$(BIN)/python -m schemas.compile_core build || \
		echo "refstream: compiling the core failed (see above): it runs interpreted, with the same results"

install: $(BIN)/refstream .cache/compiled/manifest.json

# Broker, ingest and worker on 127.0.0.1, then the demo; Ctrl-C stops everything.
demo: install
	$(BIN)/python -m refstream.devstack

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy --strict $(PURE)

# The console's browser tests drive Debian's chromium (docs/console.md#the-browser-tests);
# Playwright's own browser download is not used.
CHROMIUM := $(or $(REFSTREAM_CHROMIUM),/usr/bin/chromium)
chromium:
	@test -x "$(CHROMIUM)" || { echo "make test: $(CHROMIUM) is missing. The console's browser tests drive Debian's" \
		"chromium: install it with \`sudo apt-get install -y chromium\` (or set REFSTREAM_CHROMIUM to a Chromium binary)."; exit 1; }

# Everything CI runs. The test session starts its own Kafka broker. Two processes share the
# tests (pytest-xdist): most broker tests wait on Kafka or a worker (docs/testing.md).
TEST_JOBS ?= 2
test: lint chromium
	@$(BIN)/pytest -q -n $(TEST_JOBS) --dist loadgroup --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) .cache .data
