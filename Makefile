# dmfx developer entry points. Every target sets up what it needs first.
#   make run         setup, then train DMF-2-nce on the bundled MovieLens-100K and print HR/NDCG@10
#   make setup       .venv with torch (CPU build unless a GPU is present) + dmfx built and installed
#   make test        setup, then the C++ kernel tests (ctest) and the Python tests (pytest)
#   make bench       setup, then the CPU benchmarks (pytest-benchmark), apart from the tests
#   make cuda-check  compile every CUDA kernel with nvcc and the CUDA paths of the op glue
#   make recbole-check  the RecBole integration's tests in their own environment (.venv-recbole)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch==2.13.0 is a CPU wheel where no GPU is present; on a GPU machine install the CUDA build
# of torch into $(VENV) first (or pass TORCH_SPEC=torch): setup never replaces an existing torch.
TORCH_SPEC ?= torch==2.13.0
CMAKE_BUILD ?= build-cmake
JOBS ?= 2

SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/common/*.h csrc/cpu/* csrc/cuda/*)
EXT_STAMP := $(VENV)/.dmfx-extension
INSTALL_STAMP := $(VENV)/.dmfx-installed
DEPS_STAMP := $(VENV)/.dmfx-deps

# RecBole 1.2.1's old pins (pyproject's `recbole` extra) get their own venv, never $(VENV).
RECBOLE_VENV ?= .venv-recbole
RECBOLE_PY := $(RECBOLE_VENV)/bin/python
RECBOLE_STAMP := $(RECBOLE_VENV)/.dmfx-recbole

.PHONY: setup run test test-cpp test-python bench cuda-check recbole-check clean

RUN_DIR ?= runs/ml-100k-dmf

setup: $(INSTALL_STAMP) $(EXT_STAMP)

$(DEPS_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install numpy scipy tqdm matplotlib pyarrow pybind11 ninja "setuptools>=64" wheel pytest pytest-benchmark
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) $(SOURCES) setup.py setup.cfg
	$(PY) setup.py build_ext --inplace -j $(JOBS)
	touch $@

$(INSTALL_STAMP): $(DEPS_STAMP) pyproject.toml setup.py
	DMFX_SKIP_EXTENSION=1 $(PIP) install --no-build-isolation --no-deps -e .
	touch $@

# A second `make run` resumes (or, when finished, just re-evaluates) the run in $(RUN_DIR).
run: setup
	$(VENV)/bin/dmfx train --dataset ml-100k --output $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/checkpoint.pt),--resume)

test: test-cpp test-python

test-cpp:
	cmake -S . -B $(CMAKE_BUILD) -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build $(CMAKE_BUILD) -j $(JOBS) --target dmfx_kernel_tests
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

test-python: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-columns=median,iqr,rounds \
		--benchmark-sort=name --benchmark-group-by=group

# nvcc builds every kernel (CMake, no torch), then g++ type-checks the op glue with WITH_CUDA,
# which the CPU-only extension build never compiles.
cuda-check: $(DEPS_STAMP)
	cmake -S . -B $(CMAKE_BUILD) -DDMFX_REQUIRE_CUDA=ON > /dev/null
	cmake --build $(CMAKE_BUILD) -j $(JOBS) --target dmfx_kernels_cuda
	$(PY) tools/check_cuda_glue.py

# torch first, then dmfx (editable, not compiled: it uses dmfx/_C built by `setup`) with its
# `recbole` and `test` extras, holding that torch: a free resolve would trade it for an older
# release that accepts more setuptools versions.
$(RECBOLE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_PY) -m pip install "$(TORCH_SPEC)"
	DMFX_SKIP_EXTENSION=1 $(RECBOLE_PY) -m pip install --no-build-isolation -e ".[recbole,test]" \
		"torch==$$($(RECBOLE_PY) -c 'import torch; print(torch.__version__)')"
	touch $@

# dmfx/_C is compiled against $(VENV)'s torch and Python; it loads in $(RECBOLE_VENV) only when
# both are the same there, which the check below makes sure of instead of compiling twice.
recbole-check: $(EXT_STAMP) $(RECBOLE_STAMP)
	@built=$$($(PY) -c 'import sys, torch; print(sys.version_info[:2], torch.__version__)'); \
	here=$$($(RECBOLE_PY) -c 'import sys, torch; print(sys.version_info[:2], torch.__version__)'); \
	if [ "$$built" != "$$here" ]; then \
		echo "dmfx/_C was built for Python/torch $$built ($(VENV)) but $(RECBOLE_VENV) has" \
			"$$here: rm -rf $(RECBOLE_VENV) and rerun with the same TORCH_SPEC and PYTHON"; \
		exit 1; fi
	$(RECBOLE_PY) -m pytest tests/integrations -q

clean:
	rm -rf build $(CMAKE_BUILD) dmfx/_C*.so $(EXT_STAMP) $(INSTALL_STAMP)
