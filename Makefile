# Two commands do all set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
VENDOR := src/vitalcast/static/vendor
PORT ?= 8000
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-x tests/ingest"` (.ci/run adds a report).
PYTEST_ARGS ?=
# pytest-xdist workers of `make test`. Most of the suite's time is spent waiting (subprocesses
# starting, workers recovering, browsers drawing), so more workers than the 2 cores of CI pay off;
# `--dist loadgroup` keeps each `xdist_group` on one worker (tests/conftest.py assigns them). A
# crashed worker (a test's timeout ends its process) ends the run, as without xdist; xdist 3.8's
# group scheduler cannot take a replacement worker (KeyError, INTERNALERROR) anyway.
PYTEST_WORKERS ?= 4

.PHONY: run test lint bench bench-smoke screenshot install uv assets clean

uv:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

# --compile-bytecode: every `vitalcast` command and every process a test spawns imports
# SQLAlchemy, pydantic and friends; compiled once here, they are not compiled again at each start
# (which is what happens where PYTHONDONTWRITEBYTECODE is set).
install: uv assets
	@$(UV) sync --frozen --quiet --compile-bytecode

# uPlot, socket.io-client and Swagger UI come from npm at set-up; nothing is vendored into git.
# --ignore-scripts: no package needs an install script (swagger-ui-dist's only dependency has
# an analytics one).
assets: $(VENDOR)/.stamp
$(VENDOR)/.stamp: package.json package-lock.json
	npm ci --no-audit --no-fund --silent --ignore-scripts
	mkdir -p $(VENDOR)
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(VENDOR)/
	cp node_modules/socket.io-client/dist/socket.io.min.js $(VENDOR)/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css $(VENDOR)/
	touch $@

run: install
	$(UV) run vitalcast db upgrade
	$(UV) run vitalcast serve --demo --port $(PORT)

lint: install
	$(UV) run ruff check src tests bench scripts
	$(UV) run ruff format --check src tests bench scripts
	$(UV) run mypy
	$(UV) run lint-imports --no-cache

test: lint
	$(UV) run pytest -n $(PYTEST_WORKERS) --dist loadgroup --max-worker-restart 0 $(PYTEST_ARGS)

bench: install
	$(UV) run python -m bench.run_all
	$(UV) run python -m scripts.readme

# Every bench script at toy sizes (minutes, not seconds: each starts its servers and databases),
# so that a script broken by a change fails CI; results go to a temporary folder, never over
# bench/results/. .ci/run runs it after `make test`.
bench-smoke: install
	$(UV) run python -m bench.smoke

# Re-take the README's screenshot from the browser test (the page exactly as the test saw it).
screenshot: install
	VITALCAST_UPDATE_SCREENSHOT=1 $(UV) run pytest tests/dashboard -q -k past_session

clean:
	rm -rf .venv node_modules $(VENDOR) .pytest_cache .ruff_cache
