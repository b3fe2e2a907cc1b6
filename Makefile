# Set-up and everyday commands. `make test` and `make demo` work on a fresh clone:
# they create .venv, install the pinned requirements and build the extension.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# CUDA sources are compiled wherever a toolkit exists (so a broken kernel cannot land);
# torch would otherwise guess CUDA_HOME=/usr/local and fail to link.
ifeq ($(origin CUDA_HOME), undefined)
  ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
    export CUDA_HOME := /usr/local/cuda
  endif
endif
export MAX_JOBS ?= 2

SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)

.PHONY: all install build test lint docs docs-build bench demo clean
all: test

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	$(PY) -c "import adam_ext, json; print(json.dumps(adam_ext.build_info()))"
	touch $@

install build: $(VENV)/.built

test: $(VENV)/.built
	$(PY) -m pytest -q tests
	$(MAKE) lint docs-build

# ruff (lint and format) and the import layers are part of `make test`.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check adam_ext tests python benchmarks
	$(VENV)/bin/ruff format --check adam_ext tests python benchmarks

# The documentation site: `make docs` serves it on http://127.0.0.1:8000; `make test` builds it with
# --strict, so a broken link or a missing symbol fails the tests.
docs-build: $(VENV)/.built
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site
docs: $(VENV)/.built
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(VENV)/.built
	$(PY) benchmarks/bench_loss.py

# Pretraining stages n = 0, 2, 4 on synthetic radiographs (generated into data/synthetic once), sized
# by the `demo` preset (adam_ext/config.py) for 2 cores; then few-shot heart and clavicle
# segmentation on the synthetic SCR layout from the Adam encoder and from random initialisation
# (3 runs each, same seeds, t-tests), fine-tuned and with the encoder frozen; then the Eve analyses of locality (landmark patches at three
# scales, t-SNE) and correspondence (landmark transfer across views and subjects), Adam vs random,
# and the explorer page runs/demo/eve/explore/explore.html (4 test images, 4.4 MB); writes
# runs/demo/report.md. About 12 minutes on the 2-core machine once the data exist (measured). Run again after an interruption
# and the pretraining resumes.
# The few-shot recipe trains 160 steps (40 epochs of 4 batches of 4): the earlier 15 epochs of 2
# batches (30 steps) stopped every run while its validation Dice was still rising, so the table
# measured how fast a decoder starts, not the encoder (README, "What the demo learns"). No loader
# worker: its start cost 2 s of every 2.5-s epoch (the fine-tuning loader's workers are not persistent).
DEMO_SEG := --data data/synthetic/scr --masks "heart,left clavicle,right clavicle" --arch resnet18 \
	--size 64 --shots 16 --runs 3 --epochs 40 --patience 15 --batch-size 4 --lr 1e-3 --workers 0
# The frozen-encoder comparison (only the U-Net decoder trains), the standard SSL protocol, run to
# convergence (150 epochs, patience 40: the recipe of README "The few-shot comparison at convergence"),
# about 6 minutes: 40 epochs stop frozen decoders mid-rise too.
DEMO_FROZEN := $(subst --epochs 40 --patience 15,--epochs 150 --patience 40,$(DEMO_SEG)) --freeze-encoder
DEMO_EVE := --ckpt adam=runs/demo/best.pt --ckpt random --arch resnet18 --data data/synthetic --size 64
demo: $(VENV)/.built
	$(VENV)/bin/adam pretrain --preset demo $(if $(wildcard runs/demo/last.pt),--resume)
	$(VENV)/bin/adam compare seg $(DEMO_SEG) --init random --init runs/demo/best.pt --out runs/demo/fewshot_seg
	$(VENV)/bin/adam compare seg $(DEMO_FROZEN) --init random --init runs/demo/best.pt --out runs/demo/fewshot_seg_frozen
	$(VENV)/bin/adam eve locality $(DEMO_EVE) --images 40 --out runs/demo/eve/locality
	$(VENV)/bin/adam eve correspondence $(DEMO_EVE) --pairs 8 --out runs/demo/eve/correspondence
	$(VENV)/bin/adam eve explore $(DEMO_EVE) --images 4 --out runs/demo/eve/explore
	$(VENV)/bin/adam report runs/demo

clean:
	rm -rf build *.egg-info adam_ext/_C*.so $(VENV)/.built
