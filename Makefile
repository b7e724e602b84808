# One command to run the portal, one to test it; both set up what is missing.
SHELL := /bin/bash
PORT ?= 8000
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_IMAGE := build/demo.img
# The translations (locale/<language>/LC_MESSAGES/*.po) compile into the .mo files Django
# reads; they are made here rather than kept in git, so they never lag their .po.
PO_FILES := $(wildcard locale/*/LC_MESSAGES/*.po)
MO_FILES := $(PO_FILES:.po=.mo)
NODES ?= 2
CLUSTER_DIR ?= var-cluster
# What serving needs (make run): QEMU and qemu-img, NASM (the demo guest), mtools (visitors'
# files), QEMU's keymaps and X11's keysym names (the guests' keyboard layouts), gettext (msgfmt
# compiles the pages' translations), Ghostscript and DejaVu Sans Mono (prints); nodejs and npm
# (noVNC) are added when there is no npm.
APT_RUN := qemu-system-x86 qemu-system-data qemu-utils nasm mtools x11proto-dev gettext ghostscript fonts-dejavu-core ffmpeg
# What the tests, make cluster and make bench add: Chromium (browser tests), pdftotext (what a
# print says) and what a node runs on in production (PostgreSQL, Redis, nginx).
APT_TEST := chromium poppler-utils postgresql redis-server nginx
DEMO_RIGHTS := Free software, written for this portal; see its source in demo/.
DEMO_DESCRIPTION := A free stand-in for a Windows 3.1 desktop, written for this portal and built from its source. It boots from its hard disk like an installed Windows 3.1 PC. Click the icons, type in Notepad and save: your text stays on this visit's own disk, and the next visitor starts fresh.

.PHONY: setup setup-test apt-run apt-test run cluster test lint fuzz bench bench-density messages clean

# What serving needs; setup-test adds what the tests, make cluster and make bench need.
setup: apt-run $(VENV)/.installed node_modules/.package-lock.json $(DEMO_IMAGE) $(MO_FILES)
setup-test: setup apt-test

# Debian packages: installed only when missing (apt-get needs root or sudo).
apt_install = missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

apt-run:
	@$(call apt_install,$(APT_RUN) $$(command -v npm >/dev/null || echo nodejs npm))

apt-test:
	@$(call apt_install,$(APT_TEST))

$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

# Each translation compiled by msgfmt (what manage.py compilemessages runs), checked as it
# is compiled (placeholders and plural forms agree with the English).
$(MO_FILES): %.mo: %.po | apt-run
	msgfmt --check -o $@ $<

# The catalogues brought up to date with the code: every sentence marked in the templates,
# the page scripts and the Python code, in each language's .po (then fill in the new ones;
# docs/developers.md, "How to add a language"). The curators' admin scripts stay English.
MESSAGES_IGNORE := .venv node_modules build tests bench var var-cluster deploy demo \
	static/portal/upload.js static/portal/live-visits.js
LANGUAGES := $(notdir $(wildcard locale/*))

# Entries name their files, not lines: a change elsewhere in a file moves no entry.
messages: $(VENV)/.installed
	for domain in django djangojs; do \
	  $(PY) manage.py makemessages --domain $$domain --no-obsolete --add-location file $(LANGUAGES:%=--locale=%) \
	    $(MESSAGES_IGNORE:%=--ignore=%); \
	done

$(DEMO_IMAGE): demo/build.sh $(wildcard demo/*.asm)
	bash demo/build.sh $@

run: setup
	$(PY) manage.py migrate --no-input -v 0
	$(PY) manage.py add_exhibit $(DEMO_IMAGE) --slug demo --boot hdd --sound adlib --publish --visitors-may-record \
	  --title "Portal demo desktop" --year 1992 --publisher "This portal" --platform windows3 \
	  --rights "$(DEMO_RIGHTS)" --description "$(DEMO_DESCRIPTION)"
	$(PY) manage.py prepare_exhibit demo --wait-graphics --still 2 --if-needed
	$(PY) manage.py thumbnails
	@echo "Serving the portal on http://127.0.0.1:$(PORT)/"
	PORTAL_PUBLIC_URL="$${PORTAL_PUBLIC_URL:-http://127.0.0.1:$(PORT)}" \
	  $(PY) -m portal.server -b 127.0.0.1 -p $(PORT) portal.asgi:application

# PostgreSQL, Redis, $(NODES) nodes and nginx, privately under $(CLUSTER_DIR), on 127.0.0.1:$(PORT).
# One that dies is started again (2 s later; given up after 5 failures in a minute) while the
# rest serve on; Ctrl-C, SIGTERM or SIGHUP stops them all (make passes SIGTERM on).
cluster: setup-test
	$(PY) -m deploy.cluster --port $(PORT) --nodes $(NODES) --dir $(CLUSTER_DIR) \
	  --demo-image $(DEMO_IMAGE) --demo-description "$(DEMO_DESCRIPTION)" --demo-rights "$(DEMO_RIGHTS)"

# ruff, mypy --strict, the runtime's layers (import-linter's contracts in pyproject.toml),
# and no block of six or more lines repeated in sessions/ or portal/ (pylint's duplicate-code).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --score=n sessions portal

# Four workers on two cores: most of a test is waiting (for QEMU, a guest, a browser),
# so the waits overlap (about 8 minutes here; more workers are no faster); each worker's tests are
# installs of their own (data directory, ports, cgroups), so they do not meet.
TEST_WORKERS ?= 4

test: setup-test lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# Every fuzz target (tests/fuzz/: the RFB stream, the keys API, the media upload, the
# importer) for FUZZ_SECONDS each (10 minutes), one after another, then a table of cases,
# cases per second and findings; exits non-zero on a finding. Inputs that reached new code
# are merged into tests/fuzz/corpus/, findings kept in tests/fuzz/crashes/ (see docs/developers.md).
FUZZ_SECONDS ?= 600

fuzz: apt-run $(VENV)/.installed
	$(PY) -m tests.fuzz.campaign --seconds $(FUZZ_SECONDS) --keep-corpus

bench: setup-test
	$(PY) bench/run.py

# Only the density benchmark (the last of `make bench`): 100, 300 and 500 idle machines,
# KSM off and on; it loads a two-core host fully for minutes.
bench-density: setup
	$(PY) -m bench.density

clean:
	rm -rf $(VENV) node_modules build
