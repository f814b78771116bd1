# The two quick-start commands, each setting itself up on first use:
#   make demo    the main job: train a pruner on the shipped reference base, benchmark it, print the table
#                (WORLD=v2: on the second reference world, configs/world2.yaml; 40 minutes on 2 CPU cores)
#   make test    the test suite
# Both create ./.venv with the CPU build of torch (constraints.txt) on first use. On a GPU machine:
#   make demo CONSTRAINTS=
# Other settings: VENV (the environment's folder), CONSTRAINTS (pip constraints files, several allowed: the
# declared oldest set is CONSTRAINTS="constraints.txt constraints-oldest.txt"), EXTRAS (lvprune's extras to
# install), PIN (extra requirements, e.g. PIN="transformers==5.20.0"), PYTEST_ARGS (e.g. PYTEST_ARGS="-m 'not slow'"), KVPRESS (the
# kvpress release installed for the peers' presses; empty: none). The families
# whose processors need torchvision are tested in an environment of their own:
#   make test VENV=.venv-video CONSTRAINTS=constraints-video.txt EXTRAS=deepspeed,train,bench,test,video,lmms-eval \
#       PYTEST_ARGS="-m torchvision"

VENV ?= .venv
PYTHON ?= python3
CONSTRAINTS ?= constraints.txt
EXTRAS ?= deepspeed,train,bench,test
PIN ?=
PYTEST_ARGS ?=
# kvpress declares transformers<5.3, so pip cannot install it as an extra; its scorers run on lvprune's
# transformers. Installed without its dependencies (its runtime ones first); KVPRESS= skips it.
KVPRESS ?= kvpress==0.5.5
WORLD ?= 1

BIN := $(VENV)/bin
STAMP := $(VENV)/.lvprune-installed
CONSTRAINT_FLAG := $(foreach file,$(CONSTRAINTS),-c $(file))
DEMO_CONFIG = $(if $(filter 1 v1,$(WORLD)),,$(if $(filter 2 v2,$(WORLD)),--config configs/world2.yaml,\
	$(error WORLD=$(WORLD): the reference world is 1 (the default) or v2)))

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@echo "setting up $(VENV): torch, transformers, accelerate, deepspeed ... (a minute or two, once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(CONSTRAINT_FLAG) -e ".[$(EXTRAS)]" $(PIN)
	$(if $(KVPRESS),$(BIN)/python -m pip install --quiet --disable-pip-version-check $(CONSTRAINT_FLAG) requests "cachetools<6" "fire<0.7" && $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(KVPRESS),)
	@$(BIN)/python -c "import torch, transformers; print(f'torch {torch.__version__}, transformers {transformers.__version__}')"
	@touch $@

demo: $(STAMP)
	$(BIN)/accelerate launch --config_file configs/accelerate/single.yaml train/train.py $(DEMO_CONFIG)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest tests/ -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
