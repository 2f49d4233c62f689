# mix_perception without a system ROS: everything lives in one virtual environment.
#
#   make demo    set up, build, run the main job (mixer + safety monitor + demo camera, 30 s)
#   make test    set up, build, lint, run the tests
#
#   make venv    create $(VENV) (Python 3.11) and install the pinned requirements/venv.txt
#   make build   generate the messages and install messages + Python package into $(VENV)
#   make lint    ruff
#   make wheel   the no-ROS wheel of setup.py (core library + CLI + data) in build/wheel/
#   make clean   remove build/ (keeps $(VENV));  make distclean  also removes $(VENV)
#
# Every target is idempotent: a second `make venv build` only checks stamps and lets CMake find
# nothing to do (seconds). Variables: VENV (default .venv), PYTHON (the interpreter that creates
# the venv, default python3.11), BUILD_DIR (default build/cmake), JOBS (default 2).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
PYTHON ?= python3.11
BUILD_DIR ?= build/cmake
JOBS ?= 2

VENV_ABS := $(abspath $(VENV))
VENV_PY := $(VENV_ABS)/bin/python
VENV_STAMP := $(VENV)/.mix_perception-venv.stamp
REQUIREMENTS := $(wildcard requirements/*.txt)
CONFIGURE_STAMP := $(BUILD_DIR)/.mix_perception-configure.stamp

.PHONY: help venv build test lint demo wheel clean distclean

help:
	@sed -n '1,14p' Makefile | sed 's/^# \{0,1\}//'

# --- virtual environment -----------------------------------------------------------------------
venv: $(VENV_STAMP)

# Re-run when a requirements file or the path fixer changes. pip skips what is already installed.
$(VENV_STAMP): $(REQUIREMENTS) tools/fix_ros_wheel_paths.py
	@command -v $(PYTHON) >/dev/null || { echo "make venv: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 1; }
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet -r requirements/bootstrap.txt
	$(VENV_PY) -m pip install --quiet -r requirements/venv.txt
	$(VENV_PY) tools/fix_ros_wheel_paths.py $(VENV_ABS)
	touch $@

# --- build: messages + Python package, installed into the venv prefix -------------------------
# AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH point at the venv, where the ROS wheels put share/ and
# lib/; the install prefix is the venv itself, so nothing is needed in the environment at run time.
$(CONFIGURE_STAMP): $(VENV_STAMP)
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake -S . -B $(BUILD_DIR) -G "Unix Makefiles" \
		-DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_INSTALL_PREFIX=$(VENV_ABS) \
		-DCMAKE_PREFIX_PATH=$(VENV_ABS) \
		-DPython3_EXECUTABLE=$(VENV_PY) \
		-DBUILD_TESTING=OFF \
		--log-level=WARNING
	touch $@

# CMake tracks sources itself (re-globs mix_perception/ on every build), so this always asks it.
# Files the previous install put into the venv that this install no longer has (a deleted or
# renamed module) are removed, so the installed package mirrors the source tree.
build: $(CONFIGURE_STAMP)
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake --build $(BUILD_DIR) -j $(JOBS)
	touch $(BUILD_DIR)/install_manifest.txt && cp $(BUILD_DIR)/install_manifest.txt $(BUILD_DIR)/install_manifest.prev
	cmake --install $(BUILD_DIR) | { grep -v -e '^-- Up-to-date:' -e '^-- Installing:' -e '^-- Set runtime path' -e '^Listing' -e '^Compiling' || true; }
	comm -23 <(sort $(BUILD_DIR)/install_manifest.prev) <(sort $(BUILD_DIR)/install_manifest.txt) \
		| while read -r stale; do echo "removing stale $$stale"; rm -f "$$stale"; done

# --- checks --------------------------------------------------------------------------------------
lint: $(VENV_STAMP)
	$(VENV_ABS)/bin/ruff check .

# pytest imports the INSTALLED package: `-P` keeps the current folder (with the source
# ./mix_perception, which has no generated msg/) off sys.path; pyproject.toml sets importlib mode.
# Exit status 5 (no tests collected) counts as a failure.
test: build lint
	$(VENV_PY) -P -m pytest -q test

demo: build
	$(VENV_ABS)/bin/mix-perception run --demo --duration 30

# The no-ROS wheel of setup.py (core library + CLI + data), for ML users: build/wheel/*.whl
wheel: $(VENV_STAMP)
	$(VENV_PY) -m pip wheel --no-deps --quiet -w build/wheel .

clean:
	rm -rf build *.egg-info

distclean: clean
	rm -rf $(VENV)
