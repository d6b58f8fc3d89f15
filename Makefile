# stirgate: two-command set-up on a fresh Debian machine: `make run`, `make test`.
# Every target is idempotent: it installs only what is missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CONFIG ?= examples/loopback.yaml
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_RUN  := python3-venv openssl
APT_TEST := sip-tester secsipidx redis-server
APT_BENCH := kamailio kamailio-secsipid-modules sip-tester secsipidx

.PHONY: run test bench lint fuzz certs venv venv-test sysdeps-run sysdeps-test sysdeps-bench clean

# --- installation -------------------------------------------------------------------------------------------
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

sysdeps-run:
	$(call apt_install,$(APT_RUN))

sysdeps-test: sysdeps-run
	$(call apt_install,$(APT_TEST))

sysdeps-bench: sysdeps-run
	$(call apt_install,$(APT_BENCH))

$(VENV)/.stamp-run: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-run
	$(PIP) install -q -e '.[test]'
	@touch $@

venv: sysdeps-run $(VENV)/.stamp-run
venv-test: sysdeps-test $(VENV)/.stamp-test

# --- running ------------------------------------------------------------------------------------------------
certs: venv
	@[ -f demo-certs/sp.pem ] || $(VENV)/bin/stirgate certs init demo-certs

# The demo x5u server (https://127.0.0.1:8443/sp.pem) runs beside stirgate so the default config signs and
# verifies out of the box; it stops with stirgate.
run: venv certs
	@$(PY) -m proxy.stir.x5u_server --dir demo-certs --listen 127.0.0.1:8443 & x5u=$$!; \
	trap 'kill $$x5u 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/stirgate run -c $(CONFIG)

# --- checking -----------------------------------------------------------------------------------------------
# pytest exits 5 when it collects no test: that is a failure of the suite's wiring, reported as such.
test: venv-test
	$(VENV)/bin/pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: venv-test
	$(VENV)/bin/ruff check proxy policies tests
	$(VENV)/bin/mypy

bench: venv-test sysdeps-bench
	$(PY) -m bench $(BENCH_ARGS)

fuzz: venv-test
	$(PY) -m tests.fuzz $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo-certs var
