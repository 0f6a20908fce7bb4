"""The pure-Python parts of dmfx import and work without the compiled extension (dmfx._C).

The extension is hidden in a fresh interpreter by a meta-path finder that refuses ``dmfx._C``,
as if it had never been built; the package has no switch for this.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dmfx

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_EXTENSION = textwrap.dedent("""
    import importlib.abc
    import json
    import sys

    class NoExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dmfx._C":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoExtension())
    result = {}

    import dmfx.data
    from dmfx.data import leave_one_out, load_dataset
    data = load_dataset("ml-100k")
    split = leave_one_out(data, num_negatives=5, seed=0)
    result["ratings"] = len(data.ratings)
    result["users"] = len(data.user_ids)
    result["test_users"] = len(split.test_users)
    result["loaded_after_data"] = sorted(m for m in ("dmfx._C", "dmfx.ops") if m in sys.modules)

    import torch
    import dmfx
    from dmfx import reference
    rows = reference.sparse_rows_matmul(torch.tensor([0, 1]), torch.tensor([1]), None,
                                        torch.tensor([0]), torch.ones(2, 3))
    result["reference"] = rows.tolist()

    def error_of(thunk):
        try:
            thunk()
        except ImportError as error:
            return str(error)
        return None

    result["dmfx.ops.sparse_rows_matmul"] = error_of(lambda: dmfx.ops.sparse_rows_matmul)
    result["from dmfx import ops"] = error_of(lambda: exec("from dmfx import ops"))
    result["dmfx.cuda_enabled"] = error_of(lambda: dmfx.cuda_enabled)
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def without_extension(tmp_path_factory):
    env = dict(os.environ, DMFX_CACHE=str(tmp_path_factory.mktemp("cache")),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSION], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_layer_works_without_the_extension(without_extension):
    assert without_extension["ratings"] == 100_000
    assert without_extension["users"] == 943
    assert without_extension["test_users"] == 943
    assert without_extension["loaded_after_data"] == []  # neither the ops nor the extension
    assert without_extension["reference"] == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize("use", ["dmfx.ops.sparse_rows_matmul", "from dmfx import ops",
                                 "dmfx.cuda_enabled"])
def test_ops_without_the_extension_raise_an_import_error_saying_how_to_build(
        without_extension, use):
    message = without_extension[use]
    assert message is not None, f"{use} did not raise ImportError"
    assert "dmfx._C" in message
    assert "make setup" in message
    assert "pip install --no-build-isolation -e ." in message


def test_ops_load_on_first_use():
    from dmfx import ops
    assert dmfx.ops is ops
    assert dmfx.sparse_rows_matmul is ops.sparse_rows_matmul
    assert dmfx.cuda_enabled is ops.cuda_enabled
    assert set(dmfx.__all__) <= set(dir(dmfx))
    with pytest.raises(AttributeError, match="no attribute 'not_an_op'"):
        _ = dmfx.not_an_op
