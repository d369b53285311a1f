# Every target is a thin wrapper of `python -m pipeline <command>`; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# PIPELINE_VIA=make: the CLI's messages then name the next step as a make command
RUN := PIPELINE_VIA=make PYTHONWARNINGS=ignore::FutureWarning $(PY) -m pipeline
# Competition folder: empty means each variant's data.root (the offline sample by default).
DATA ?=
# CHANNELS=bgr: channel 0 of the submission is blue (default: the format's, rgb for Photo Reconstruction)
CHANNELS ?=
DATA_ARG := $(if $(DATA),--data $(DATA),) $(if $(CHANNELS),--channels $(CHANNELS),)
VARIANT ?= telea
# compare: comma-separated variants for the report; empty means every variant on the leaderboard
VARIANTS ?=
COMPETITION ?=
BASELINES := mean telea navier-stokes
# train: VARIANT when given, else the CPU default; RESUME=1 continues, RESTART=1 starts over;
# EPOCHS=n / MAX_STEPS=n override the config; GPUS=n launches one process per GPU.
# predict/submit: CKPT=<file> instead of the variant's checkpoints/<variant>/best.pt
TRAIN_VARIANT ?= $(if $(filter command line environment,$(origin VARIANT)),$(VARIANT),pix2pix-cpu)
TRAIN_RUN = $(if $(filter-out 1,$(GPUS)),PIPELINE_VIA=make PYTHONWARNINGS=ignore::FutureWarning $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(GPUS) -m pipeline,$(RUN))
CKPT_ARG = $(if $(CKPT),--param checkpoint=$(CKPT),)
# sd: the sweep file, optionally ONLY=<variant,...> of it, and GPUS=<n> processes (one per GPU)
SWEEP ?= configs/sd-prompts.yaml
ONLY ?=
GPUS ?= 1
SD_RUN := $(if $(filter-out 1,$(GPUS)),PIPELINE_VIA=make PYTHONWARNINGS=ignore::FutureWarning $(VENV)/bin/accelerate launch --multi_gpu --num_processes $(GPUS) -m pipeline,$(RUN))

.DEFAULT_GOAL := help
.PHONY: help setup sample data weights predict submit validate score leaderboard verdict prune kaggle-submit kaggle-scores demo test compare tensorboard sd train serve chromium blend duplicates floors gpu-check

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

setup: $(VENV)/.installed ## create .venv and install requirements.txt

sample: setup ## build the offline sample in the real competition's layout (data/sample; FORCE=1 rebuilds)
	$(RUN) sample $(if $(FORCE),--force,)

data: setup ## download COMPETITION=<slug> from Kaggle into data/raw/<slug> and validate it
	@test -n "$(COMPETITION)" || { echo "usage: make data COMPETITION=<slug from the competition URL>"; exit 2; }
	$(RUN) data --competition $(COMPETITION)

weights: setup ## download NAME=big-lama|migan (IOPaint's TorchScript file) into weights/, checksum verified
	@test -n "$(NAME)" || { echo "usage: make weights NAME=big-lama|migan"; exit 2; }
	$(RUN) weights --name $(NAME) $(if $(FORCE),--force,)

predict: setup ## predict the validation split and the test set with VARIANT
	$(RUN) predict --variant $(VARIANT) $(DATA_ARG) $(CKPT_ARG)

submit: setup ## write + validate submissions/<VARIANT>.csv, score it, record it on the leaderboard
	$(RUN) submit --variant $(VARIANT) $(DATA_ARG) $(CKPT_ARG)

train: setup ## train VARIANT (pix2pix-cpu by default; pconv-cpu, glcic-cpu, ...): checkpoints/<variant>/, runs/<variant>/
	$(TRAIN_RUN) train --variant $(TRAIN_VARIANT) $(DATA_ARG) $(if $(RESUME),--resume,) $(if $(RESTART),--restart,) \
		$(if $(EPOCHS),--epochs $(EPOCHS),) $(if $(MAX_STEPS),--max-steps $(MAX_STEPS),)

validate: setup ## check CSV=<file> before upload (competition settings from VARIANT's config)
	@test -n "$(CSV)" || { echo "usage: make validate CSV=<submission file> [VARIANT=<name>] [DATA=<folder>]"; exit 2; }
	$(RUN) validate --csv $(CSV) --variant $(VARIANT) $(DATA_ARG)

score: setup ## score VARIANT on the validation split, or CSV=<file> against the test truth
	$(RUN) score $(if $(CSV),--csv $(CSV),--variant $(VARIANT)) $(DATA_ARG)

leaderboard: setup ## print the leaderboard, ranked per validation split (ALL=1: every submission; DATA= ranks on that split)
	$(RUN) leaderboard $(if $(ALL),--all,) $(DATA_ARG)

compare: setup ## write submissions/report.html + .png: table, RMSE chart, training curves, per class, gallery (VARIANTS=a,b)
	$(RUN) compare $(if $(VARIANTS),--variants $(VARIANTS),) $(DATA_ARG)

# TensorBoard lives in .venv, not on PATH: started from the project's Python. LOGDIR=runs/<variant> for one run
LOGDIR ?= runs
tensorboard: setup ## browse the training runs' TensorBoard logs (LOGDIR=runs, PORT=6006, HOST=127.0.0.1)
	@test -d "$(LOGDIR)" || { echo "no $(LOGDIR)/ here: train a variant first (make train), or give LOGDIR=<folder of runs>"; exit 2; }
	$(PY) -m tensorboard.main --logdir $(LOGDIR) --port $(if $(PORT),$(PORT),6006) --host $(if $(HOST),$(HOST),127.0.0.1)

blend: setup ## fit weights of VARIANTS=a,b,c on validation (PER_CHANNEL=1: per colour), submit the blend (NAME=...)
	@test -n "$(VARIANTS)" || { echo "usage: make blend VARIANTS=a,b[,c...] [NAME=<blend name>] [PER_CHANNEL=1] [DATA=<folder>]"; exit 2; }
	$(RUN) blend --variants $(VARIANTS) $(if $(NAME),--name $(NAME),) $(if $(PER_CHANNEL),--per-channel,) $(DATA_ARG)

sd: setup ## zero-shot SD inpainting: one submission + leaderboard row per variant of SWEEP (ONLY=a,b GPUS=n)
	$(SD_RUN) sd --sweep $(SWEEP) $(if $(ONLY),--only $(ONLY),) $(DATA_ARG)

duplicates: setup ## training photos that test/val images are copies of: table, submissions/duplicates.html (AGAIN=1 searches anew)
	$(RUN) duplicates $(DATA_ARG) $(if $(AGAIN),--again,)

serve: setup ## local web app: upload/pick an image, brush a mask, inpaint with variants (HOST= PORT= DATA=)
	$(RUN) serve $(DATA_ARG) $(if $(HOST),--host $(HOST),) $(if $(PORT),--port $(PORT),)

kaggle-submit: setup ## upload VARIANT's validated CSV to COMPETITION and confirm it arrived
	@test -n "$(COMPETITION)" || { echo "usage: make kaggle-submit VARIANT=<name> COMPETITION=<slug> [DATA=<folder it was submitted on>]"; exit 2; }
	$(RUN) kaggle-submit --variant $(VARIANT) --competition $(COMPETITION) $(DATA_ARG)

kaggle-scores: setup ## pull COMPETITION's public scores into the leaderboard
	@test -n "$(COMPETITION)" || { echo "usage: make kaggle-scores COMPETITION=<slug>"; exit 2; }
	$(RUN) kaggle-scores --competition $(COMPETITION)

verdict: setup ## which variant won on the validation split, by how much over Telea, and what to run next
	$(RUN) verdict $(DATA_ARG)

prune: setup ## list the submission CSVs no one needs (not a variant's latest, never uploaded); APPLY=1 deletes them
	$(RUN) prune $(if $(APPLY),--apply,)

# demo: the training budget is in steps (the config's epochs: 888 steps on the sample), never in
# minutes (max_minutes=0), so a busy machine takes longer but ends with the same weights and verdict
demo: sample ## offline, end to end: baselines, duplicates + nearest, pix2pix training, submissions, leaderboard, verdict
	@for v in $(BASELINES); do $(RUN) submit --variant $$v || exit 1; done
	$(RUN) duplicates
	$(RUN) submit --variant nearest
	$(RUN) train --variant pix2pix-cpu --restart --param max_minutes=0
	$(RUN) submit --variant pix2pix-cpu
	$(RUN) leaderboard
	$(RUN) verdict

test: setup chromium ## run the test suite
	$(PY) -m pytest -q --durations=10 tests

# floors: the suite's fast part on the lowest versions pyproject.toml admits, in .venv-floors (torch
# apart: the one requirements.txt pins, the only build on this disk). test_fill is left out: its
# Telea/Navier-Stokes checksums are those of the pinned OpenCV build.
FLOORS_VENV := .venv-floors
FLOORS_TESTS := tests/test_config.py tests/test_submission.py tests/test_competition.py tests/test_score.py \
	tests/test_files.py tests/test_kaggle.py tests/test_package.py::test_serve_without_its_extra_says_how_to_install_it \
	tests/test_sd.py::test_the_pipeline_loads_in_the_configured_dtype \
	tests/test_sd.py::test_hub_id_in_the_cache_loads_through_auto_pipeline \
	tests/test_train.py::test_l2_objective_trains_the_generator_alone_and_max_steps_keeps_the_schedule

$(FLOORS_VENV)/.installed: pyproject.toml requirements.txt tests/floors.py
	rm -rf $(FLOORS_VENV) && $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install -q --disable-pip-version-check $$(grep -E '^(torch|pytest|nbformat|nbclient|ipykernel)==' requirements.txt) \
		$$($(PYTHON) tests/floors.py --skip torch)
	touch $@

floors: $(FLOORS_VENV)/.installed ## the suite's fast part on pyproject's lowest versions (.venv-floors)
	@$(FLOORS_VENV)/bin/pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(torch|numpy|pandas|pydantic|accelerate|diffusers|transformers|huggingface.hub|filelock|kaggle) '
	NO_ALBUMENTATIONS_UPDATE=1 $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=5 $(FLOORS_TESTS)

gpu-check: sample ## one GPU's check of the GPU configs (~8 min): table + submissions/gpu-check.json; CPU: 2 tiny steps
	PYTHONWARNINGS=ignore::FutureWarning $(PY) benchmarks/gpu_check.py

chromium: ## Debian's chromium for the web app's browser test (apt-get, as root); without it that test skips
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "note: no /usr/bin/chromium and not root with apt-get: the browser test will skip"; \
	else \
		echo "installing chromium (apt-get) for the browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
			|| echo "note: apt-get could not install chromium: the browser test will skip"; \
	fi
