# kexpert: `make demo` runs the main job on the embedded default; `make test` runs the test suite.
# Both create/refresh .venv by themselves (idempotent; a second run only checks a stamp).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
DATA_DIR ?= $(if $(KEXPERT_DATA_DIR),$(KEXPERT_DATA_DIR),$(abspath ../shared/data))
DEMO_LIMIT ?= 40
DEMO_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_DIR ?= outputs/multiruns/demo/$(DEMO_STAMP)

# test-slow/test-all: see below
.PHONY: help venv demo demo-eval bank bank-card select-data report rebuild-tables rehearse-paper plan-paper test test-slow test-all lint format clean clean-outputs

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

venv: ## create/refresh .venv (torch kept if it fits, else torch==2.13.0 CPU or the CUDA build on a GPU machine)
	@bash scripts/bootstrap_venv.sh

demo: venv ## the whole pipeline on the embedded default (SmolLM2-135M, CPU, ~30 min): base vs merge vs ROCKET on ARC-E
	KEXPERT_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) train.py -m experiment=demo \
	  method=base,uniform_merge,rocket hydra.sweep.dir=$(DEMO_DIR)
	$(PY) -m kexpert.report $(DEMO_DIR)
	@echo "demo: tables and plots are in $(DEMO_DIR)/report (index: $(DEMO_DIR)/report/report.md)"

demo-eval: venv ## evaluate the default base model on a small slice of every task and print a table
	KEXPERT_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) eval.py -m \
	  task=arc_c,arc_e,piqa,boolq,gsm8k,mbpp eval.limit=$(DEMO_LIMIT) eval.progress=false sweep_name=demo_eval

bank: venv ## build (or finish) the CPU LoRA bank for SmolLM2-135M (~15-30 min on 2 cores)
	KEXPERT_DATA_DIR=$(DATA_DIR) $(PY) bank.py bank=smollm2_cpu base_model=smollm2_135m

bank-card: venv ## evaluate every bank LoRA and the base model on every task (experiments/bank/)
	KEXPERT_DATA_DIR=$(DATA_DIR) $(PY) -m kexpert.bank.card bank=smollm2_cpu base_model=smollm2_135m

select-data: venv ## Sim-Div data selection for every task on the real pools (offline MiniLM)
	KEXPERT_DATA_DIR=$(DATA_DIR) HF_HUB_OFFLINE=1 $(PY) select_data.py -m task=arc_c,arc_e,boolq,piqa,gsm8k,mbpp embedding.progress=false

report: venv ## tables + plots of a sweep: make report SWEEP=outputs/multiruns/<name>/<time>
	$(PY) -m kexpert.report $(SWEEP)

rebuild-tables: venv ## check experiments/ archives (sha256) and rebuild the committed tables from them (~15 s)
	$(PY) experiments/rebuild_tables.py --check

rehearse-paper: venv ## every stage of experiment=paper_7b on 2-layer LLaMA-2/Mistral-7B-shaped random models, CPU (~35 min)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) scripts/rehearse_paper.py $(if $(REHEARSE_DIR),--out $(REHEARSE_DIR))

plan-paper: venv ## estimated params and peak GPU memory per stage of experiment=paper_7b (PLAN_ARGS="trainer=fsdp ...")
	$(PY) -m kexpert.plan experiment=paper_7b task=arc_c gpu_mem_gb=$${GPU_MEM_GB:-80} $(PLAN_ARGS)

test: venv ## the test suite (offline, CPU, no slow tests)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -m "not slow and not gpu" -q $(PYTEST_ARGS)

test-slow: venv ## slow tests too (real SmolLM2, multiprocess DDP)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -m "not gpu" -q $(PYTEST_ARGS)

lint: venv ## ruff check + format check + the import-linter layer contract (pyproject.toml [tool.importlinter])
	$(VENV)/bin/ruff check kexpert tests experiments scripts *.py
	$(VENV)/bin/ruff format --check kexpert tests experiments scripts *.py
	$(VENV)/bin/lint-imports

format: venv ## ruff format + autofix
	$(VENV)/bin/ruff format kexpert tests experiments scripts *.py
	$(VENV)/bin/ruff check --fix kexpert tests experiments scripts *.py

clean-outputs: ## remove run outputs (keeps caches)
	rm -rf outputs/runs outputs/multiruns

clean: clean-outputs ## remove caches of this checkout
	rm -rf .pytest_cache .ruff_cache **/__pycache__
