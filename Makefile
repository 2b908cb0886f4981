# The README's two commands. Both create `.venv/` on first use and keep it up to date.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# schemas and the pure reward core: type-checked with mypy --strict
PURE := schemas processors/money.py processors/invoice_link.py processors/referral.py \
	processors/referrer.py processors/engine.py processors/alignment.py processors/stages.py

.PHONY: demo test install lint clean

$(BIN)/refstream: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

install: $(BIN)/refstream

# Broker, ingest and worker on 127.0.0.1, then the demo; Ctrl-C stops everything.
demo: install
	$(BIN)/python -m refstream.devstack

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy --strict $(PURE)

# Everything CI runs. The test session starts its own Kafka broker.
test: lint
	@$(BIN)/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) .cache .data
