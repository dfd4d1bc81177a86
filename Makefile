# Every target creates .venv when missing and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test files run two at a time (pytest-xdist): `make test TEST_WORKERS=1` runs them one by one.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint detect-report clean venv schema deb

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -m demo

test: $(STAMP)
	@$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy

bench: $(STAMP)
	@$(BIN)/python -m bench

detect-report: $(STAMP)
	@$(BIN)/python -m bench.detect_report

schema: $(STAMP)
	@$(BIN)/python -m endpoint_agent.policy.schema > policies/schema.json

# Debian package (dpkg-deb): a venv under /opt/endpoint-agent, the unit, the default config; see packaging/README.md.
DEB_DIR ?= dist
deb: $(STAMP)
	@PIP="$${PIP:-$(BIN)/pip}" bash packaging/deb/build.sh $(DEB_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
