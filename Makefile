# make setup | demo | test | bench   (see README.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all bench clean browser

setup: $(VENV)/.installed

# constraints.txt pins every package to the versions this project is tested with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: setup
	$(BIN)/curate run configs/demo.yaml --out runs/demo

test: setup browser
	$(BIN)/python -m pytest -m "not slow" -q

test-all: setup browser
	$(BIN)/python -m pytest -q

# The report test opens report.html in Debian's chromium (never a downloaded browser build). Installed when
# missing if we are root (CI is); otherwise say how, and the test skips (it fails under CI=true).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver; \
	else echo "chromium is missing: run 'sudo apt-get install chromium chromium-driver' for the report's browser test"; fi

bench: setup
	mkdir -p benchmarks/results
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --out benchmarks/results || exit 1; done

clean:
	rm -rf runs .pytest_cache
