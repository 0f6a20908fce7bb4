"""pytest wiring of the dmfx benchmarks: options, the device, cached matrices, case selection.

Run from the repository root:  ``python -m pytest benchmarks --benchmark-only [--device cuda]
[--big]``. The project's ``testpaths`` is ``tests``, so a plain ``pytest`` never reaches here.
"""
from __future__ import annotations

import os
import shlex

import pytest
import torch

import dmfx
from dmfx.bench import (device_name, driver_version, full_float32, load_csr, precision_settings,
                        synchronized_timer, to_device)


def pytest_addoption(parser):
    group = parser.getgroup("dmfx benchmarks")
    group.addoption("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device to benchmark on (default: cpu)")
    group.addoption("--big", action="store_true",
                    help="CUDA only: add the 2M x 1M x 50M-ratings shapes (~40 s to generate)")


def _device_or_skip_reason(config):
    if config.getoption("device") == "cpu":
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        return None, "--device cuda: no CUDA device is available"
    if not dmfx.cuda_enabled():
        return None, "--device cuda: this dmfx build has no CUDA kernels"
    return torch.device("cuda"), None


@pytest.fixture(scope="session")
def device(pytestconfig):
    dev, reason = _device_or_skip_reason(pytestconfig)
    if dev is None:
        pytest.skip(reason)
    return dev


# The float32 settings every benchmark ran under (full_float32's), for the machine info.
_PRECISION: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _full_float32():
    """No TF32 for the whole session, as in ``dmfx bench``; torch's settings are restored after."""
    with full_float32():
        _PRECISION.update(precision_settings())
        yield


@pytest.fixture(scope="session")
def matrix(device):
    """``matrix(name)``: the named CSR of ``dmfx.bench.SHAPES`` on the benchmark device, built once
    per session (generating ML-1M takes ~0.5 s, the 50M-ratings one ~40 s)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = to_device(load_csr(name), device)
        return cache[name]

    return get


def pytest_generate_tests(metafunc):
    """Parametrize ``case, contender`` from the test module's ``CASES`` and ``CONTENDERS``.

    A case with ``cuda_only`` runs only with ``--device cuda`` and one with ``big`` only with
    ``--big`` too; they are left out rather than skipped so the report lists what ran. Pairs are
    generated case-major so each shape's contenders run (and print) together.
    """
    if not {"case", "contender"} <= set(metafunc.fixturenames):
        return
    on_cuda = metafunc.config.getoption("device") == "cuda"
    big = metafunc.config.getoption("big")
    cases = [c for c in metafunc.module.CASES
             if (on_cuda or not c.cuda_only) and (big or not c.big)]
    # A case may name the contenders it is for (``contenders``); by default all of them run.
    pairs = [(c, name) for c in cases
             for name in (getattr(c, "contenders", None) or metafunc.module.CONTENDERS)]
    metafunc.parametrize("case, contender", pairs, ids=[f"{c.id}-{name}" for c, name in pairs])


def pytest_collection_modifyitems(config, items):
    # Every benchmark reads the synchronising timer, so a CUDA round ends when its kernels do.
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(timer=synchronized_timer))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what report.py prints: the device, torch, the float32 settings and the command
    line (pytest-benchmark adds the git commit as ``commit_info``)."""
    dev, _ = _device_or_skip_reason(config)
    machine_info["dmfx"] = {
        "device": device_name(dev) if dev is not None else "unavailable",
        "device_type": config.getoption("device"),
        "driver": driver_version(dev) if dev is not None else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        # what the session's benchmarks ran under; empty if none ran
        "float32": dict(_PRECISION),
        "command": "python -m pytest " + shlex.join(config.invocation_params.args),
        # CPU timings on a shared machine move with its load: keep the 1/5/15-min averages.
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
