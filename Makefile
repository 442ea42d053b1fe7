# Hounsfield: `make demo` runs the end-to-end demo, `make test` the test suite.
# Both install what is missing first: Debian packages and the .venv with the project.

VENV          := .venv
PYTHON        ?= python3
STAMP         := $(VENV)/.installed
APT_PACKAGES  := redis-server orthanc orthanc-dicomweb dcmtk dicom3tools libpixelmed-java default-jre-headless \
                 postgresql podman runc catatonit mmdebstrap chromium prometheus e2fsprogs
SUDO          := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test soak setup system-deps lint images base-image lock clean

demo: setup
	$(VENV)/bin/hounsfield demo

test: setup
	$(VENV)/bin/pytest
	# Second pass: every test's database on PostgreSQL (a scratch database each). Tests that have their
	# own SQLite and PostgreSQL variants ran both above; the operators' tests touch no database.
	TEST_DATABASE=postgresql $(VENV)/bin/pytest -k "not sqlite and not postgresql" tests/services tests/e2e

# A soak and chaos run (benchmarks/soak): MINUTES of load from 8 simulated modalities while workers, the
# listener, Redis, PostgreSQL and Orthanc are killed or restarted and the data volume hits its floor; then a
# reconciliation (nothing lost) and the report in docs/soak.md with its plots. Loopback only.
MINUTES       ?= 10
soak: setup
	$(VENV)/bin/python -m benchmarks.soak --minutes $(MINUTES)

setup: system-deps $(STAMP)

system-deps:
	@if ! command -v redis-server >/dev/null || ! [ -x /usr/sbin/Orthanc ] || ! [ -x /usr/bin/storescu ] \
	    || ! command -v dciodvfy >/dev/null || ! [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	    || ! [ -f /usr/share/java/pixelmed.jar ] || ! command -v java >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v catatonit >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v promtool >/dev/null || ! command -v mkfs.ext4 >/dev/null; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# The CPU build of PyTorch; any other spec pulls a multi-GB CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

# Container images (deploy/Dockerfile, built by deploy/images.py with podman, or docker): hounsfield and
# hounsfield-worker tagged with the version, SBOMs in build/sbom/, sizes in build/images.json.
IMAGE_PREFIX  ?=
images: setup
	$(VENV)/bin/python deploy/images.py images --prefix '$(IMAGE_PREFIX)'

# The Debian base image made with mmdebstrap from apt's own mirrors, for hosts that cannot pull one.
base-image: system-deps
	$(VENV)/bin/python deploy/images.py base-image

# deploy/locks/*.txt, resolved (with hashes) by the images' own Python in the base image.
lock: setup
	$(VENV)/bin/python deploy/images.py lock

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	# mypy finds packages by folder name: .typecheck/ maps the import names to the folders (services/ is
	# installed as hounsfield, operators/ as hounsfield_operators); its messages name the repository's paths.
	@mkdir -p .typecheck && ln -sfn ../services .typecheck/hounsfield && ln -sfn ../operators .typecheck/hounsfield_operators
	@out=$$($(VENV)/bin/mypy -p hounsfield -p hounsfield_operators 2>&1); status=$$?; \
	  printf '%s\n' "$$out" | sed -e 's#^\.typecheck/hounsfield_operators/#operators/#' -e 's#^\.typecheck/hounsfield/#services/#'; \
	  exit $$status

clean:
	rm -rf $(VENV) .hounsfield .pytest_cache .typecheck build
