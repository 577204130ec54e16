# One local gate, identical to CI: `make test`.
# Every target works on a fresh machine that has only python3: the venv is
# created and the project installed on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: all venv ser2net demo test lint typecheck contracts pytest spec vectors bench campaign campaign-properties campaign-figures clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## venv: the virtualenv with the project installed, and ser2net for the lab test
venv: $(STAMP) ser2net

# ser2net (Debian's package) serves a pty as RFC 2217 for tests/test_conformance_lab.py: installed
# here when running as root, else what to do is printed (the test skips without it; CI fails on skips).
ser2net:
	@command -v ser2net >/dev/null 2>&1 || [ -x /usr/sbin/ser2net ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing ser2net (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ser2net >/dev/null; \
	  else \
	    echo "make: ser2net is missing: tests/test_conformance_lab.py will be skipped"; \
	    echo "      (a failure under PUMPRIG_STRICT_SKIPS=1). Install it: sudo apt-get install ser2net"; \
	  fi; }

## demo: the protocol (a session's frames, annotated), a pump's whole life simulated, then the rig: the virtual pump served on a
## pty, a clinician's session over it (interrogate, refill, program, bolus), and the full
## conformance suite against it (summary, build/demo/junit.xml, build/demo/report.html)
demo: $(STAMP)
	$(BIN)/pumprig demo
	$(BIN)/pumprig simulate --config examples/flex13.toml
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/rig_demo.sh build/demo

## lint: ruff (lint and format check), mypy --strict, import-linter layer contracts
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: everything CI runs: lint, then the test suite (CI-sized hypothesis profile)
test: lint ser2net
	$(BIN)/python -m pytest -q

## spec: regenerate SPEC.md, the golden vectors and the state diagram from the definitions
spec: $(STAMP)
	$(BIN)/python -m protocol_spec.specgen --write
	$(BIN)/python -m protocol_spec.vectorgen --write
	$(BIN)/python -m firmware_model.machine --write

## bench: codec benchmarks, written afresh to bench/results.json
bench: $(STAMP)
	$(BIN)/python -m bench.run --out bench/results.json

## campaign: the long runs: the property tests at the campaign profile (campaign-properties),
## then every reliability and security campaign at full size (campaign-figures: at most BUDGET
## each, a campaign stops early and says how far it got), figures to bench/campaign.json and
## the README's table
BUDGET ?= 1h
campaign: campaign-properties campaign-figures

campaign-properties: $(STAMP)
	HYPOTHESIS_PROFILE=campaign $(BIN)/python -m pytest -q

campaign-figures: $(STAMP)
	$(BIN)/pumprig campaign --size full --budget $(BUDGET) --out bench/campaign.json --readme README.md

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
