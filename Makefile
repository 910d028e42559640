# `make test` and `make static` build the environment from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
# glibc hands tensors over 32 MB back to the kernel at every free, and zeroing fresh pages
# then took more time than the maths: EfficientNet at 224 px ran 2.8x slower (61 vs 22 ms an
# image on 2 cores, most of it system time). Keep freed memory in the process instead.
export GLIBC_TUNABLES := glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=1073741824

.PHONY: setup test repro static bench bench-gpu bench-gpu-dry bench-gpu-wheels ui ui-stop serve data-deps clean-venv

setup: $(STAMP)

# torch first, from the pinned version, then everything else under the same constraint so
# that no resolver step can swap it for a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements.lock constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@# DeepSpeed compiles its CPU communication op at the first engine start (about 1.5 min
	@# on 2 cores): build it with the environment, into TORCH_EXTENSIONS_DIR.
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder; \
		ShareMemCommBuilder().load(verbose=False)" >/dev/null || \
		echo "DeepSpeed's CPU op was not built now; the first training builds it"
	touch $@

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The whole experiment: prepare, autoencoder, encode, reference, classifier, train@*,
# evaluate@*, static, report, resuming or skipping what is already done. `dice runs` first
# writes train.runs (one train and evaluate stage per model and seed) from params.yaml.
repro: setup data-deps
	@start=$$(date +%s); $(BIN)/dice runs >/dev/null && $(BIN)/dvc repro && $(BIN)/dice tracking flush && \
	report=$$($(BIN)/python -c "from dice_core.config import load_params; print(load_params().report.output)") && \
	echo "make repro: finished in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s; the report is $$report/report.md"

# The embedded dataset ships as a Debian package; without it (or apt), the prepare stage
# explains the other two ways (a folder, or a download).
data-deps:
	@test -d /usr/share/datasets/fashion-mnist || ! command -v apt-get >/dev/null || \
		{ $$(test "$$(id -u)" = 0 || echo sudo) apt-get install -y dataset-fashion-mnist || \
		  echo "could not install dataset-fashion-mnist; see README (Data)"; }

# The MLflow and Prefect servers on 127.0.0.1 (MLFLOW_PORT, PREFECT_PORT); Ctrl-C stops both.
ui: setup
	BIN=$(BIN) infra/ui.sh start

ui-stop:
	BIN=$(BIN) infra/ui.sh stop

# The scheduled deployment of the flow (CRON, default every night at 02:00), served from
# this shell against the Prefect server of `make ui`.
serve: setup
	PREFECT_API_URL=$${PREFECT_API_URL:-$$(cat .ui/prefect_api_url 2>/dev/null)} \
		$(BIN)/dice flow serve $(if $(CRON),--cron "$(CRON)")

static: setup
	$(BIN)/dvc repro static

bench: setup
	$(BIN)/python bench/models.py
	$(BIN)/python bench/depthwise.py
	$(BIN)/python bench/dice_mlp.py
	$(BIN)/python bench/data.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/eval.py

# The prepared GPU benchmark (bench/gpu.py): on a GPU, the paper's models side by side;
# -dry runs every code path with the tiny presets on this CPU; -wheels fetches into .whl/ what
# the GPU machine (no registry, its own Python 3.12 and PyTorch) lacks.
bench-gpu: setup
	$(BIN)/python bench/gpu.py

bench-gpu-dry: setup
	$(BIN)/python bench/gpu.py --dry-run --compile-budget 0

bench-gpu-wheels: setup
	PY=$(BIN)/python bench/gpu_wheels.sh

clean-venv:
	rm -rf $(VENV)
