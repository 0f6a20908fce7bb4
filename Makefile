# dmfx developer entry points. Every target sets up what it needs first.
#   make run         setup, then train DMF-2-nce on the bundled MovieLens-100K and print HR/NDCG@10
#   make setup       .venv with torch (PyPI's; TORCH_PIP_ARGS below for the CPU wheel) + dmfx built
#   make test        setup, then the C++ kernel tests (ctest) and the Python tests (pytest)
#   make bench       setup, then the CPU benchmarks (pytest-benchmark), apart from the tests
#   make cuda-check  compile every CUDA kernel with nvcc and the CUDA paths of the op glue
#   make dist-check  build the sdist and a wheel from it, install the wheel in a fresh venv, use it
#   make recbole-check  the RecBole integration's tests in their own environment (.venv-recbole)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# setup never replaces a torch already in $(VENV): on a GPU machine install your CUDA build there
# first (or pass TORCH_SPEC=torch). PyPI's Linux torch wheels are CUDA builds (GBs of CUDA
# libraries); TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" takes the CPU one.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
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

.PHONY: setup run test test-cpp test-python bench cuda-check dist-check recbole-check clean

RUN_DIR ?= runs/ml-100k-dmf

setup: $(INSTALL_STAMP) $(EXT_STAMP)

$(DEPS_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PIP) install numpy scipy tqdm matplotlib pyarrow pandas pybind11 ninja "setuptools>=77" wheel pytest pytest-benchmark
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

# setup first: a broken install fails before the C++ kernels are built and tested.
test: setup test-cpp test-python

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

# What a user of the published package gets: `python -m build` makes the sdist and, from the
# sdist alone, the wheel (so a file missing from the sdist fails the build); the wheel goes into
# a fresh venv holding only $(TORCH_SPEC) and its dependencies, where an op, the bundled data
# set, the py.typed marker, the version and the `dmfx` command are tried outside the source
# tree. Everything lives in a temporary directory. Not part of `make test`: it compiles the
# extension once more (minutes).
DIST_CHECK := import importlib.metadata as m, importlib.resources as r, scipy.sparse as sp, \
	torch, dmfx, dmfx.data as d; \
	y = sp.random(6, 9, density=0.4, format="csr", dtype="float32", random_state=0); \
	w = torch.randn(9, 4); c = d.as_csr(y); \
	torch.testing.assert_close(dmfx.sparse_rows_matmul(*c[:3], torch.arange(6), w), \
	torch.from_numpy(y.toarray()) @ w); \
	assert d.load_dataset("ml-100k").nnz == 100000; \
	assert r.files("dmfx").joinpath("py.typed").is_file(); \
	assert m.version("dmfx") == dmfx.__version__; \
	print("dist-check: dmfx", dmfx.__version__, "from", dmfx.__file__)

dist-check: $(DEPS_STAMP)
	$(PY) -c "import build" 2>/dev/null || $(PIP) install build
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && set -e && \
	MAX_JOBS=$(JOBS) $(PY) -m build --no-isolation --outdir "$$tmp/dist" . && \
	$(PY) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS) && \
	"$$tmp/venv/bin/pip" install "$$tmp"/dist/dmfx-*.whl && \
	cd "$$tmp" && "$$tmp/venv/bin/python" -c '$(DIST_CHECK)' && \
	"$$tmp/venv/bin/dmfx" --help > /dev/null && \
	ls -l "$$tmp/dist" && echo "dist-check: sdist and wheel build, install and run"

# torch and a setuptools that builds pyproject's metadata (>= 77) and still has pkg_resources
# for RecBole's ray (< 81) first, then dmfx (editable, not compiled: it uses dmfx/_C built by
# `setup`) with its `recbole` and `test` extras, holding that torch: a free resolve would trade
# it for an older release that accepts more setuptools versions.
$(RECBOLE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_PY) -m pip install "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(RECBOLE_PY) -m pip install "setuptools>=77,<81" wheel
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
