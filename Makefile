# stirgate: two-command set-up on a fresh Debian machine: `make run`, `make test`.
# Every target is idempotent: it installs only what is missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CONFIG ?= examples/loopback.yaml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUN  := python3-venv python3-dev gcc openssl
APT_TEST := sip-tester secsipidx redis-server postgresql systemd kamailio kamailio-utils-modules kamailio-extra-modules sngrep
APT_BENCH := kamailio kamailio-secsipid-modules kamailio-tls-modules sip-tester secsipidx postgresql wrk

.PHONY: run cluster test test-pure pure-tree bench lint fuzz certs venv venv-test sysdeps-run sysdeps-test sysdeps-bench compile pure clean

# --- installation -------------------------------------------------------------------------------------------
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get -o DPkg::Lock::Timeout=900 update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=900 install -y -qq $$missing >/dev/null; \
	fi
endef

sysdeps-run:
	$(call apt_install,$(APT_RUN))

sysdeps-test: sysdeps-run
	$(call apt_install,$(APT_TEST))

sysdeps-bench: sysdeps-run
	$(call apt_install,$(APT_BENCH))

# The editable install compiles nothing (fast); `make compile` needs what a wheel build asks pip for
# (build_backend/stirgate_build.py: mypy, stubs, the dependencies) plus setuptools, so it gets the same list.
$(VENV)/.stamp-run: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null
	$(PIP) install -q 'setuptools>=77'
	$(PIP) install -q -e . $$($(PY) build_backend/stirgate_build.py compile-requires)
	@touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-run
	$(PIP) install -q -e '.[test]'
	@touch $@

venv: sysdeps-run $(VENV)/.stamp-run compile
venv-test: sysdeps-test $(VENV)/.stamp-test compile

# The hot path compiled with mypyc (proxy/compiled.py lists the modules), rebuilt when a source changes; when
# it cannot be built stirgate runs the same code as Python (slower). STIRGATE_PURE=1 skips it.
SOURCES := $(wildcard proxy/*.py proxy/sip/*.py proxy/stir/*.py policies/*.py)
compile: $(VENV)/.stamp-run
	@if [ -n "$(STIRGATE_PURE)" ]; then $(PY) -m proxy.compiled remove; \
	else $(MAKE) --no-print-directory build/.stamp-compiled; fi

build/.stamp-compiled: $(SOURCES)
	@mkdir -p build
	@echo "compiling the hot path with mypyc (proxy/compiled.py)"
	@if $(PY) -m proxy.compiled build >build/mypyc.log 2>&1; then touch $@; \
	else $(PY) -m proxy.compiled remove; echo "mypyc build failed (build/mypyc.log): running pure Python"; fi

pure:
	$(PY) -m proxy.compiled remove
	rm -f build/.stamp-compiled

# --- running ------------------------------------------------------------------------------------------------
certs: venv
	@[ -f demo-certs/sp.pem ] || $(VENV)/bin/stirgate certs init demo-certs

# The demo x5u server (https://127.0.0.1:8443/sp.pem) runs beside stirgate so the default config signs and
# verifies out of the box; it stops with stirgate.
run: venv certs
	@$(PY) -m proxy.stir.x5u_server --dir demo-certs --listen 127.0.0.1:8443 & x5u=$$!; \
	trap 'kill $$x5u 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/stirgate run -c $(CONFIG)

# The cluster demo (examples/cluster/README.md): PostgreSQL, Redis, the x5u server, two stirgate nodes
# (--workers 2 each) and Kamailio's dispatcher in front, all on loopback, until Ctrl-C. It reuses the test
# services' launchers (tests/services.py), hence venv-test. CLUSTER_ARGS="--workers 1" for one worker a node.
cluster: venv-test certs
	$(PY) examples/cluster/run.py $(CLUSTER_ARGS)

# --- checking -----------------------------------------------------------------------------------------------
# pytest exits 5 when it collects no test: that is a failure of the suite's wiring, reported as such.
test: venv-test lint
	$(VENV)/bin/pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi
	@$(MAKE) --no-print-directory test-pure

# A copy of the tree without the compiled modules, beside ../shared like the tree itself: the Python sources
# as a machine without a C compiler runs them.
pure-tree:
	@rm -rf build/pure && mkdir -p build/pure/main
	@tar -cf - --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./bench-results --exclude='*.so' \
	  --exclude=__pycache__ --exclude=./tests/fuzz/corpus . | tar -xf - -C build/pure/main
	@[ ! -d ../shared ] || ln -s "$$(cd ../shared && pwd)" build/pure/shared

# The unit tests once more on the Python sources, so that fallback stays tested.
test-pure: venv-test pure-tree
	cd build/pure/main && STIRGATE_EXPECT_PURE=1 $(abspath $(VENV))/bin/pytest -q -p no:cacheprovider tests/unit; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Style, types, and the one-way layers (pyproject.toml [tool.importlinter]; docs/ARCHITECTURE.md).
lint: venv-test
	$(VENV)/bin/ruff check proxy policies tests bench build_backend setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	@# every test module imports (a helper renamed in one test file and still imported by another fails here)
	@out=$$($(VENV)/bin/pytest --collect-only -q -p no:cacheprovider tests 2>&1) || { echo "$$out" | tail -40; exit 1; }

bench: venv-test sysdeps-bench
	$(PY) -m bench $(BENCH_ARGS)

# On the Python sources: atheris measures coverage on bytecode, which compiled modules do not have. The corpus
# and saved crashes stay in this tree's tests/fuzz/.
fuzz: venv-test pure-tree
	cd build/pure/main && $(abspath $(PY)) -m tests.fuzz --corpus $(CURDIR)/tests/fuzz/corpus \
	  --crashes $(CURDIR)/tests/fuzz/crashes $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo-certs var
	find proxy -name '*.so' -delete
