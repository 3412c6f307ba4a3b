# ia-atendimento-bot: `make run` starts everything, `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Running needs only the runtime dependencies; the dev extra (tests, linters, Playwright, the
# Kubernetes schemas) is for test, lint, typecheck and bench. A dev install satisfies both.
RUNTIME_STAMP := $(VENV)/.runtime-stamp

.PHONY: install install-runtime services run first-hour test test-ha lint typecheck pytest bench bench-llm soak eval image-test clean

$(RUNTIME_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUNTIME_STAMP)

install: $(STAMP)  ## create .venv and install the project with its dev tools

install-runtime: $(RUNTIME_STAMP)  ## create .venv with what running needs only

services:  ## make sure Redis and RabbitMQ answer (start or install them locally if needed)
	@scripts/ensure-services.sh

run: install-runtime services  ## run gateway, one worker and monitor in the foreground (reads .env when present)
	@scripts/run-all.sh

# The clone installs its own .venv and starts Redis and RabbitMQ itself (its `make run`); this
# checkout's .venv only runs the walk-through and the stand-ins (tests/support: runtime imports only).
first-hour: install-runtime  ## the README's first-hour guides, done in a fresh clone of HEAD against local stand-ins (a few minutes)
	$(PY) -m scripts.first_hour

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

# Tests spend most of their time waiting on the services they start, so two processes halve the
# suite's time on two cores; a module's tests stay in one process (they share module fixtures).
PYTEST_WORKERS ?= 2

# Bytecode caches (gitignored) are written even where the environment says not to
# (PYTHONDONTWRITEBYTECODE): the suite starts some 330 service processes, and without them each
# one compiles the project's modules again, and each test process rewrites every test's asserts.
pytest: install services
	@scripts/ensure-test-tools.sh
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

test: install services lint typecheck pytest  ## everything CI runs

test-ha: install services  ## only the failover tests: a private 3-node RabbitMQ cluster and Redis Sentinel, a server lost under load
	$(VENV)/bin/pytest -m ha -s $(PYTEST_ARGS)

bench: install services  ## throughput and latency against a bare aiohttp+RabbitMQ round trip
	$(PY) -m bench $(BENCH_ARGS)

bench-llm: install services  ## N conversations at once against a slow OpenAI-compatible stand-in, 1 and 2 workers
	$(PY) -m bench.llm $(BENCH_LLM_ARGS)

image-test: install services  ## build the Dockerfile with podman and run gateway, worker and monitor from it, read-only, no capabilities
	PY=$(PY) scripts/image-test.sh

soak: install services  ## messages while workers, then gateways, are SIGKILLed and Redis restarts: lost/doubled/reordered
	$(PY) -m bench.soak $(SOAK_ARGS)

eval: install  ## answer quality of every bundled set (tuned-on vs held-out); one base: make eval KB=... QUESTIONS=...
	$(PY) -m eval $(if $(KB),--kb $(KB) $(if $(QUESTIONS),--questions $(QUESTIONS)),--all) $(EVAL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
