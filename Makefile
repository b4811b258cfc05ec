# The README's two commands. Each sets a fresh machine up by itself (a virtual env in .venv).
#
# torch is installed first, pinned, so pip never pulls a multi-GB CUDA build by accident:
#   make demo                              # CPU wheel (torch 2.13.0)
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"  # a GPU build
# A torch already present in .venv is kept as it is.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.biocls-installed

.PHONY: demo test install lint report clean

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" snakemake --cores $(CORES)
	@echo
	@$(BIN)/biocls summary results
	@echo "Snakemake's own report of every experiment: make report"

test: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,simulate,slurm]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check biocls tests benchmarks .ci
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint

report: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" snakemake --report report.html

clean:
	rm -rf results resources logs report.html .snakemake
