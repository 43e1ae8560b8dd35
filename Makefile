# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := $(VENV)/share/jupyter/kernels/smartfrz/kernel.json

.PHONY: demo test lab clean-venv

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The notebooks' kernel (papermill, nbval and JupyterLab find it by name), registered once per venv.
$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name smartfrz --display-name "Python (smartfrz)"

demo: $(KERNEL)
	mkdir -p reports/executed
	$(BIN)/python -m papermill notebooks/01_quickstart.ipynb reports/executed/01_quickstart.ipynb -k smartfrz --log-output --no-progress-bar
	@echo "executed notebook: reports/executed/01_quickstart.ipynb"

test: $(KERNEL)
	$(BIN)/python -m pytest -q tests notebooks --nbval-lax

# JupyterLab will not start as root (containers, cloud notebooks) without --allow-root.
lab: $(KERNEL)
	$(BIN)/jupyter lab notebooks/$(if $(filter 0,$(shell id -u)), --allow-root)

clean-venv:
	rm -rf $(VENV)
