# syncd developer entry points. On a fresh Debian machine, as root:
#   make demo   a throwaway Dovecot with sample mail, a config for it, and `syncd check`
#   make test   the whole test suite (ruff, then pytest against a private Dovecot and the
#               core of the server matrix: Cyrus, Courier, mailutils, pymap, Dovecot profiles)
#   make test-interop  the full server matrix (tests/interop)
# Both install what is missing first (system packages with apt-get, then .venv).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.NOTPARALLEL:
.DELETE_ON_ERROR:

# The system's Python where there is one: Debian's is built with PGO and LTO and runs syncd's
# start-up about 40% faster than one compiled without (pyenv's default build, first on PATH on
# some machines), and it is the one users install syncd with. Another: make PYTHON=python3.12.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.syncd-installed
DEMO_ARGS ?=
PYTEST_ARGS ?= -q

# Commands the tests and the demo use, and the Debian packages that provide them.
TOOLS        := dovecot doveadm openssl mbsync offlineimap neomutt tmux systemd-analyze
APT_PACKAGES := dovecot-imapd dovecot-pop3d openssl isync offlineimap3 neomutt tmux systemd

# dovecot and doveadm live in /usr/sbin, which is not on every user's PATH.
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

.PHONY: help deps system-deps venv venv-python oldest-deps test test-interop interop-deps soak lint demo clean distclean

help:
	@echo "make demo       start a throwaway Dovecot, write demo/config.yaml, run syncd check"
	@echo "make test       ruff + the whole pytest suite (PYTEST_ARGS='-q -x' ...)"
	@echo "make test-interop  the full server matrix (Dovecot profiles, Cyrus, Courier, mailutils, pymap)"
	@echo "make interop-deps  install the matrix's servers (apt-get; Cyrus/Courier unpacked in $(INTEROP))"
	@echo "make deps       install missing system packages (as root, apt-get) and build $(VENV)"
	@echo "make soak       the convergence soak for SOAK_MINUTES (default 10), SOAK_SEED"
	@echo "make lint       ruff check"
	@echo "make clean      remove demo/ and caches; make distclean also removes $(VENV)"

deps: system-deps venv

# Idempotent: does nothing when every tool is there. apt-get tries to start dovecot.service,
# which a container's policy-rc.d refuses; that error is harmless, so the result is judged by
# whether the tools exist afterwards.
system-deps:
	@missing=""; \
	for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	extra=""; \
	if [ ! -x $(PY) ] && ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  missing="$$missing python3-venv"; extra="python3 python3-venv"; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make: missing:$$missing. Run 'make deps' as root (apt-get install $(APT_PACKAGES) $$extra)." >&2; \
	  exit 1; \
	fi; \
	echo "make: installing system packages (missing:$$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update || exit 1; \
	apt-get install -y $(APT_PACKAGES) $$extra || \
	  echo "make: apt-get install reported an error (a refused service start is harmless); checking the tools" >&2; \
	still=""; \
	for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || still="$$still $$t"; done; \
	if [ -n "$$still" ]; then echo "make: still missing after apt-get:$$still" >&2; exit 1; fi

venv: venv-python $(STAMP)

# A .venv made with another interpreter than $(PYTHON) is made anew.
venv-python:
	@if [ -d $(VENV) ] && [ "$$(cat $(VENV)/.python 2>/dev/null)" != '$(PYTHON)' ]; then \
	  echo "make: $(VENV) was made with another Python; making it anew with $(PYTHON)"; \
	  rm -rf $(VENV); \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)
	@echo '$(PYTHON)' > $(VENV)/.python

# Re-installs when pyproject.toml (or how we install) changes. editable_mode=compat: a .pth
# entry instead of setuptools' import hook, which cost every `syncd` start ~25 ms. setuptools
# calls that mode transitional; where it is gone, the default editable install is used.
EDITABLE := --config-settings editable_mode=compat
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet -e '.[test,interop]' $(EDITABLE) 2>/dev/null \
	  || $(PY) -m pip install --quiet -e '.[test,interop]'
	@touch $@

# pytest exits 5 when it collects no tests; make treats that as a failure, as it should.
test: deps interop-deps oldest-deps
	$(VENV)/bin/ruff check syncd tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole server matrix (tests/interop), not only the core scenarios `make test` runs.
test-interop: deps interop-deps
	SYNCD_INTEROP_FULL=1 $(PY) -m pytest tests/interop $(PYTEST_ARGS)

# --- the server matrix's servers (tests/support/servers, /work/shared/notes/other-imap-servers.md)
# mailutils-imap4d and the libraries/tools of Cyrus and Courier come from apt. cyrus-imapd and
# courier-imap conflict with dovecot-imapd (all provide imap-server), so their packages are
# downloaded and unpacked (dpkg -x) into $(INTEROP_PREFIX), never installed. Idempotent and quick
# when done (a stamp names the packages unpacked). When something cannot be installed (no
# network, not root) this warns and goes on: the matrix then skips that server, naming what is
# missing. No ':' or ',' may appear in the prefix's path (Courier overlay-mounts it).
INTEROP        := .interop
INTEROP_PREFIX := $(INTEROP)/root
INTEROP_STAMP  := $(INTEROP)/.unpacked
INTEROP_APT    := mailutils-imap4d sasl2-bin libpcre3 libical3 libgamin0 gamin
INTEROP_DEBS   := cyrus-imapd cyrus-common courier-imap courier-base courier-authlib \
                  courier-authlib-userdb libcourier-unicode4

interop-deps:
	@missing=""; \
	for p in $(INTEROP_APT); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "make: WARNING: missing$$missing; run 'make interop-deps' as root. The server matrix skips what needs them." >&2; \
	  else \
	    echo "make: installing the server matrix's packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    policy=""; \
	    if [ ! -e /usr/sbin/policy-rc.d ]; then \
	      printf '#!/bin/sh\n# make interop-deps: no service starts while it installs\nexit 101\n' > /usr/sbin/policy-rc.d; \
	      chmod 755 /usr/sbin/policy-rc.d; policy=1; \
	    fi; \
	    { apt-get install -y --no-install-recommends $$missing || \
	      { apt-get update && apt-get install -y --no-install-recommends $$missing; }; } || \
	      echo "make: WARNING: apt-get could not install$$missing; the server matrix skips what needs them." >&2; \
	    [ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; \
	    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then \
	      systemctl disable --now mailutils-imap4d.service >/dev/null 2>&1 || true; \
	    fi; \
	  fi; \
	fi
	@if [ -f $(INTEROP_STAMP) ] && [ "$$(cat $(INTEROP_STAMP))" = "$(INTEROP_DEBS)" ] \
	   && [ -x $(INTEROP_PREFIX)/usr/lib/cyrus/bin/master ] && [ -x $(INTEROP_PREFIX)/usr/bin/imapd ]; then \
	  exit 0; \
	fi; \
	case "$(CURDIR)" in *:*|*,*) echo "make: WARNING: $(CURDIR) has ':' or ','; Courier cannot run from it" >&2;; esac; \
	mkdir -p $(INTEROP); \
	dl=$$(mktemp -d $(CURDIR)/$(INTEROP)/download.XXXXXX); new=$(CURDIR)/$(INTEROP)/root.new; \
	rm -rf "$$new"; mkdir -p "$$new"; \
	echo "make: unpacking $(INTEROP_DEBS) into $(INTEROP_PREFIX)"; \
	if ! ( cd "$$dl" && apt-get download $(INTEROP_DEBS) 2>&1 | grep -v 'Download is performed unsandboxed' ; \
	       [ $$(ls "$$dl"/*.deb 2>/dev/null | wc -l) -ge 7 ] ); then \
	  ( apt-get update >/dev/null 2>&1 && cd "$$dl" && apt-get download $(INTEROP_DEBS) >/dev/null 2>&1 ) || true; \
	fi; \
	if [ $$(ls "$$dl"/*.deb 2>/dev/null | wc -l) -lt 7 ]; then \
	  echo "make: WARNING: could not download $(INTEROP_DEBS) (apt-get download); the server matrix skips Cyrus and Courier." >&2; \
	  rm -rf "$$dl" "$$new"; exit 0; \
	fi; \
	for f in "$$dl"/*.deb; do dpkg -x "$$f" "$$new" || { echo "make: WARNING: dpkg -x $$f failed" >&2; rm -rf "$$dl" "$$new"; exit 0; }; done; \
	rm -rf "$$dl" $(INTEROP_PREFIX); mv "$$new" $(INTEROP_PREFIX); \
	if LD_LIBRARY_PATH=$(INTEROP_PREFIX)/usr/lib/x86_64-linux-gnu:$(INTEROP_PREFIX)/usr/lib \
	   ldd $(INTEROP_PREFIX)/usr/lib/cyrus/bin/master $(INTEROP_PREFIX)/usr/lib/cyrus/bin/imapd \
	       $(INTEROP_PREFIX)/usr/lib/cyrus/bin/idled $(INTEROP_PREFIX)/usr/bin/imapd \
	       $(INTEROP_PREFIX)/usr/lib/courier/courier/imaplogin 2>&1 | grep 'not found' >&2; then \
	  echo "make: WARNING: libraries missing for Cyrus/Courier (above); the matrix skips what fails to start." >&2; \
	fi; \
	echo "$(INTEROP_DEBS)" > $(INTEROP_STAMP)

# The oldest releases pyproject.toml allows (and a few known-bad ones), installed beside the
# venv for the tests that run against them (tests/support/oldest.py); once, then offline.
OLDEST_STAMP := $(VENV)/oldest/.installed
oldest-deps: venv $(OLDEST_STAMP)

$(OLDEST_STAMP): pyproject.toml tests/support/oldest.py | $(PY)
	$(PY) -m tests.support.oldest
	@touch $@

# The convergence soak (tests/system/test_daemon_soak.py) for SOAK_MINUTES of activity, with
# SOAK_SEED, through the fault proxy (SOAK_FAULTS=0: straight to Dovecot); `make test` runs both
# variants for a few seconds. Prints the operations, the faults, the time to converge and the
# daemon's RSS, threads and idle CPU; SOAK_REPORT=<file> also writes them as JSON.
SOAK_MINUTES ?= 10
SOAK_SEED ?= 16
SOAK_FAULTS ?= 1
SOAK_REPORT ?=
soak: deps
	SYNCD_SOAK_SECONDS=$$(( $(SOAK_MINUTES) * 60 )) SYNCD_SOAK_SEED=$(SOAK_SEED) \
	  SYNCD_SOAK_REPORT=$(SOAK_REPORT) \
	  $(PY) -m pytest -q -s --timeout=$$(( $(SOAK_MINUTES) * 60 + 600 )) \
	  tests/system/test_daemon_soak.py -k $(if $(filter 0,$(SOAK_FAULTS)),direct,faults)

lint: venv
	$(VENV)/bin/ruff check syncd tests bench

demo: deps
	$(PY) -m tests.support.demo $(DEMO_ARGS)

clean:
	rm -rf demo build .pytest_cache .ruff_cache .hypothesis bench/work
	rm -rf *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(INTEROP)

# --- benchmarks (bench/README.md) ---------------------------------------------------------------
#   make bench        the full comparison of issue 6 (20,000 messages; about 1.5 hours),
#                     results in bench/results/<date>-<host>.md and .png
#   make bench-quick  5,000 messages, syncd and mbsync, one run each (a few minutes): prints
#                     initial-sync msgs/s, no-change resync time and peak RSS
#   make bench-scale  issue 21: 20 accounts x 50,000 small messages (a million, about 2 GB) in
#                     one `syncd run`: first-sync peak RSS, then 30 minutes idle (up to an hour on
#                     2 cores); results in bench/results/<date>-scale.md. BENCH_SCALE_ARGS=--quick:
#                     4 x 2,000 messages, 2 minutes idle (about 3 minutes)
# BENCH_ARGS adds flags, e.g. make bench BENCH_ARGS='--messages 5000 --no-latency'.
BENCH_ARGS ?=
BENCH_SCALE_ARGS ?=
BENCH_TOOLS    := mbsync offlineimap fetchmail safecat msmtp
BENCH_PACKAGES := isync offlineimap3 fetchmail safecat msmtp
# getmail6 comes from PyPI with the bench extra (pyproject.toml): Debian's 6.18.11 is too old
BENCH_STAMP    := $(VENV)/.syncd-bench-installed

.PHONY: bench bench-quick bench-deps bench-window bench-scale

bench-deps: deps $(BENCH_STAMP)
	@missing=""; \
	for t in $(BENCH_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make: missing:$$missing. Run as root (apt-get install $(BENCH_PACKAGES))." >&2; \
	  exit 1; \
	fi; \
	echo "make: installing the benchmark peers (missing:$$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update || exit 1; \
	apt-get install -y $(BENCH_PACKAGES) || exit 1

$(BENCH_STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet -e '.[test,bench]' $(EDITABLE) 2>/dev/null \
	  || $(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

bench: bench-deps
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: bench-deps
	$(PY) -m bench.run --quick $(BENCH_ARGS)

# A partial mirror's cost (issue 18): max_age over ~10 % of the corpus against the full mirror.
bench-window: bench-deps
	$(PY) -m bench.window $(BENCH_ARGS)

# syncd and Dovecot only: no peers to install
bench-scale: deps
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)
