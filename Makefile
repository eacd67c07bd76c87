# Berth developer commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The machine keeps the CPU build of torch 2.13.0 here; elsewhere pip uses the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install bytecode demo test lint format clean bench bench-demo bench-peers bench-batch bench-stream bench-restart bench-decode bench-cli bench-upload bench-backup bench-deep bench-console soak wrk prometheus nginx azurite chromium console-shots cluster-demo grpc-tools grpc-code kserve-client bench-grpc h2load mlserver bentoml bench-serve

install: $(STAMP)

# torch==2.13.0 is the CPU build the machine provides; the extras pin it (and Ray Serve).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(FIND_LINKS) -e ".[dev,onnx,torch,ray]"
	$(MAKE) --no-print-directory bytecode
	touch $(STAMP)

# Berth's modules compiled, as `pip install` does for a wheel: an editable install leaves them
# to be compiled at every start when PYTHONDONTWRITEBYTECODE is set (0.3 s of `berth serve`).
bytecode:
	$(BIN)/python -m compileall -q berth

demo: install
	$(BIN)/berth demo

# Three pytest-xdist workers on two cores: most tests wait on servers, databases, browsers and
# subprocesses, so a third worker fills the waits (a clean-clone CI run: 21 min 51 s of pytest
# with three, 23 min 27 s with two).
TEST_WORKERS ?= 3
test: install prometheus nginx azurite chromium grpc-tools kserve-client
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

# promtool and prometheus (Debian's package) for tests/test_alerts.py and the end-to-end test.
# Installed only when missing and apt-get can run (as root, or with sudo without a password);
# otherwise those tests skip with the reason, or fail under BERTH_REQUIRE_SERVICES=1.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
prometheus:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && $(SUDO) true 2>/dev/null; then \
		echo "installing Debian's prometheus package (promtool) ..."; \
		log=$$(mktemp); \
		if ! { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends prometheus; } >$$log 2>&1; then \
			cat $$log; echo "could not install Debian's prometheus package: its tests will skip"; \
		fi; \
		rm -f $$log; \
	else \
		echo "promtool/prometheus not found and apt-get unavailable: their tests will skip"; \
	fi

# nginx (Debian's package) for the multi-replica test and `make cluster-demo`; RUNLEVEL=1 keeps
# the package from starting its own server on port 80.
nginx:
	@if command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && $(SUDO) true 2>/dev/null; then \
		echo "installing Debian's nginx package ..."; \
		log=$$(mktemp); \
		if ! { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
				apt-get install -y -qq --no-install-recommends nginx; } >$$log 2>&1; then \
			cat $$log; echo "could not install Debian's nginx package: the cluster test will skip"; \
		fi; \
		rm -f $$log; \
	else \
		echo "nginx not found and apt-get unavailable: the cluster test will skip"; \
	fi

# Chromium and its WebDriver (Debian's chromium and chromium-driver packages) for the console's
# browser test (tests/test_console_browser.py, Selenium kept offline: SE_OFFLINE=true).
# Installed only when missing and apt-get can run; otherwise that test skips with the reason,
# or fails under BERTH_REQUIRE_SERVICES=1.
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && $(SUDO) true 2>/dev/null; then \
		echo "installing Debian's chromium and chromium-driver packages ..."; \
		log=$$(mktemp); \
		if ! { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >$$log 2>&1; then \
			cat $$log; echo "could not install Debian's chromium packages: the browser test will skip"; \
		fi; \
		rm -f $$log; \
	else \
		echo "chromium/chromedriver not found and apt-get unavailable: the browser test will skip"; \
	fi

# Screenshots of every console page the browser test visits, into docs/console (the README
# shows overview.png and rollout.png from there).
console-shots: install chromium
	BERTH_CONSOLE_SHOTS=docs/console SE_OFFLINE=true $(BIN)/pytest -q -n 0 tests/test_console_browser.py

# Azurite (the npm package, pinned) for the Azure Blob backup tests, into .tools/azurite; needs
# node and npm (Debian's nodejs and npm packages, installed when missing and apt-get can run).
# Without them the Azure tests skip with the reason, or fail under BERTH_REQUIRE_SERVICES=1.
AZURITE_VERSION := 3.37.0
AZURITE_DIR := .tools/azurite
azurite: $(AZURITE_DIR)/.installed-$(AZURITE_VERSION)

$(AZURITE_DIR)/.installed-$(AZURITE_VERSION):
	@if ! command -v npm >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && $(SUDO) true 2>/dev/null; then \
			echo "installing Debian's nodejs and npm packages ..."; \
			log=$$(mktemp); \
			{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends nodejs npm; } >$$log 2>&1 || cat $$log; \
			rm -f $$log; \
		fi; \
	fi
	@if command -v npm >/dev/null 2>&1; then \
		echo "installing azurite $(AZURITE_VERSION) into $(AZURITE_DIR) ..."; \
		mkdir -p $(AZURITE_DIR) && \
		npm install --prefix $(AZURITE_DIR) --no-audit --no-fund --loglevel=error \
			azurite@$(AZURITE_VERSION) && touch $@; \
	else \
		echo "npm not found and apt-get unavailable: the Azure Blob backup tests will skip"; \
	fi

# Three Berth replicas behind nginx on this machine, sharing PostgreSQL, Redis and one artifact
# store (berth/deploy/cluster_demo.py); needs the PostgreSQL and Redis the README names.
cluster-demo: install nginx
	$(BIN)/python -m berth.deploy.cluster_demo $(ARGS)

# The pipeline `berth ci init` writes, run on this machine by `berth ci run` against a real
# server for three candidates: promoted, stopped by the gates, rolled back by the canary
# (berth/ci/demo.py); ARGS="--provider gitlab" runs the GitLab file.
cicd-demo: install
	$(BIN)/python -m berth.ci.demo $(ARGS)

lint: install
	$(BIN)/ruff check berth tests benchmarks
	$(BIN)/ruff format --check berth tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix berth tests benchmarks
	$(BIN)/ruff format berth tests benchmarks

# Berth and its peers (MLServer, BentoML, bare FastAPI) with the same two models in one run, and
# the speed targets with PASS/FAIL (benchmarks/speed.py, about 10 minutes; run nothing else
# meanwhile). ARGS=--write-readme rewrites README.md's speed table from the run.
bench: install wrk mlserver bentoml bytecode
	$(BIN)/python benchmarks/speed.py $(ARGS)

# Berth alone with the peer benchmark's models at 1, 16 and 64 connections, v1 and v2, in every
# form (benchmarks/serve_bench.py).
bench-serve: install wrk bytecode
	$(BIN)/python benchmarks/serve_bench.py

# The demo churn model on v1 and v2 (benchmarks/wrk_demo.sh).
bench-demo: install wrk
	bash benchmarks/wrk_demo.sh

# The CPU one request costs in make bench's main server (workers, wrk, the rest), on the
# constant route and iris v1 (benchmarks/cpu_per_request.py; ARGS=ROUNDS, default 2).
bench-cpu: install wrk bytecode
	$(BIN)/python benchmarks/cpu_per_request.py $(ARGS)

# A 1M-row Parquet to Parquet batch job against in-process predict (benchmarks/batch_throughput.py).
bench-batch: install
	$(BIN)/python benchmarks/batch_throughput.py

# Stream consumers on iris: events/s and p99 end-to-end latency at 500 events/s through Kafka
# (Tansu), Redis Streams and NATS JetStream in one run (benchmarks/stream.py); ARGS="--events 300
# --rate 100 --seconds 2" for a quick check.
bench-stream: install
	$(BIN)/python benchmarks/stream.py $(ARGS)

# How fast `berth serve --workers 2` replaces a worker killed with SIGKILL (benchmarks/worker_restart.py).
bench-restart: install bytecode
	$(BIN)/python benchmarks/worker_restart.py

# Small predictions while the same worker decodes 15 MB bodies (benchmarks/loop_stall.py);
# SOURCE_BEFORE=DIR adds a run of an earlier checkout.
bench-decode: install
	$(BIN)/python benchmarks/loop_stall.py

# Start-up of `berth --help`, `--version` and `models list`, 20 runs each (benchmarks/cli_startup.py);
# ARGS="main=../main ." measures two checkouts side by side.
bench-cli: install
	$(BIN)/python benchmarks/cli_startup.py $(ARGS)

# Registering a 200 MB ONNX model by upload in remote mode: MB/s and server RSS (benchmarks/upload.py).
bench-upload: install
	$(BIN)/python benchmarks/upload.py

# Backup and restore of a registry with 1 GB of artifacts to a folder and to SeaweedFS (S3):
# first and second run, bytes copied (benchmarks/backup.py); BERTH_BENCH_BACKUP_MB sets the size.
bench-backup: install
	$(BIN)/python benchmarks/backup.py

# An MLP and a CNN trained on generated data, in every optimized form (ONNX, int8, pruned,
# TorchScript): size, p50 latency at batch 1 and 64, answer difference, accuracy (benchmarks/deep.py).
bench-deep: install
	$(BIN)/python benchmarks/deep.py

# Server time of each console page with 100 models and 20 endpoints, against the 200 ms target
# (benchmarks/console_pages.py); ARGS="--models 10 --runs 3" for a quick check.
bench-console: install
	$(BIN)/python benchmarks/console_pages.py $(ARGS)

# Berth's gRPC against its REST v2 and MLServer 1.7's gRPC: iris, 64 requests in flight, wrk and
# h2load (benchmarks/grpc_bench.py); MLServer goes into .tools/mlserver. Then the ceiling of
# Python's gRPC servers answering a constant (benchmarks/grpc_transport.py).
bench-grpc: install wrk h2load mlserver bytecode
	$(BIN)/python benchmarks/grpc_bench.py
	$(BIN)/python benchmarks/grpc_transport.py

h2load:
	@command -v h2load >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nghttp2-client; }

MLSERVER_DIR := .tools/mlserver
mlserver: $(MLSERVER_DIR)/.installed-1.7.1

$(MLSERVER_DIR)/.installed-1.7.1:
	$(PYTHON) -m venv $(MLSERVER_DIR)
	$(MLSERVER_DIR)/bin/pip install --quiet "mlserver==1.7.1" "mlserver-sklearn==1.7.1" scikit-learn numpy "uvloop<0.22"
	touch $@

BENTOML_DIR := .tools/bentoml
bentoml: $(BENTOML_DIR)/.installed-1.4.39

$(BENTOML_DIR)/.installed-1.4.39:
	$(PYTHON) -m venv $(BENTOML_DIR)
	$(BENTOML_DIR)/bin/pip install --quiet "bentoml==1.4.39" scikit-learn numpy
	touch $@

# Five minutes at 32 connections against two workers: errors and memory (benchmarks/soak.py).
soak: install
	$(BIN)/python benchmarks/soak.py

# MLServer, BentoML and bare FastAPI with the same models, when the peer benchmark is present.
PEERS ?= ../shared/bench/peers
bench-peers: wrk
	@test -d $(PEERS) || { echo "no peer benchmark at $(PEERS); set PEERS=DIR"; exit 1; }
	bash $(PEERS)/setup.sh
	bash /tmp/peerbench/run_all.sh

# The gRPC code generator, pinned (its output names the protobuf release it came from), in an
# environment of its own: grpcio-tools 1.78 wants protobuf 6, the dev tools protobuf 7.
GRPC_TOOLS := .tools/grpc-tools
GRPC_TOOLS_VERSION := 1.78.2
grpc-tools: $(GRPC_TOOLS)/.installed-$(GRPC_TOOLS_VERSION)

$(GRPC_TOOLS)/.installed-$(GRPC_TOOLS_VERSION):
	$(PYTHON) -m venv $(GRPC_TOOLS)
	$(GRPC_TOOLS)/bin/pip install --quiet "grpcio-tools==$(GRPC_TOOLS_VERSION)"
	touch $@

# berth/grpc/generated/ from berth/grpc/proto/ (tests/test_grpc_code.py checks it is current).
grpc-code: grpc-tools
	$(GRPC_TOOLS)/bin/python berth/grpc/codegen.py

# KServe's Python SDK (its InferenceGRPCClient) for tests/test_grpc_clients.py, in an
# environment of its own: it pins protobuf below 7 and its own FastAPI.
KSERVE_CLIENT := .tools/kserve
KSERVE_VERSION := 0.21.0
kserve-client: $(KSERVE_CLIENT)/.installed-$(KSERVE_VERSION)

$(KSERVE_CLIENT)/.installed-$(KSERVE_VERSION):
	$(PYTHON) -m venv $(KSERVE_CLIENT)
	$(KSERVE_CLIENT)/bin/pip install --quiet "kserve==$(KSERVE_VERSION)"
	touch $@

wrk:
	@command -v wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }

clean:
	rm -rf $(VENV) .berth .pytest_cache .mypy_cache .ruff_cache .tools
