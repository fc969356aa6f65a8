# Two commands do everything on a fresh machine with Python >= 3.11 and pip:
#   make demo   - set up .venv and run the Bookinfo demo mesh
#   make test   - set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENGINE ?=
MEMBERS := kernel $(wildcard plugins/*)
# The in-house plugin example is installed too: its tests and the kernel's
# `knotwork plugins` / `knotwork check` tests use it as a user's plugin.
EXAMPLE_PLUGINS := examples/inhouse-plugin
STAMP := $(VENV)/.installed
PYPROJECTS := pyproject.toml $(foreach m,$(MEMBERS) $(EXAMPLE_PLUGINS),$(m)/pyproject.toml)

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): $(PYPROJECTS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip hatchling editables
	$(BIN)/python -m pip install --quiet --no-build-isolation \
		$(foreach m,$(MEMBERS) $(EXAMPLE_PLUGINS),-e $(m)) -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/knotwork up examples/bookinfo $(if $(ENGINE),--engine $(ENGINE)) $(if $(PORT),--ingress-port $(PORT))

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/lint-imports

# `make bench` (not part of `make test`): direct vs native and Envoy-engine sidecars,
# route scale (100 VirtualServices x 10 routes vs one route) and push-to-serving,
# see bench/README.md. BENCH_ARGS="--duration 3 --rounds 1" for a quick run,
# BENCH_ARGS="--cases routes" for one case.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
		echo "make bench: wrk is not installed; install it with: apt-get install wrk" >&2; exit 2; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
