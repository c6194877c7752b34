"""Pre-processing parity on an emulated Cortex-M4: every built-in block's C code built with arm-none-eabi-gcc
(hard-float FPU, newlib's libm), run in QEMU's mps2-an386 on the unit parity cases, against the Python block.

The bounds are the host parity test's (docs/data.md "Pre-processing"); instructions per input are printed.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinymlops.export.preprocess_c import emulated_preprocess
from tinymlops.preprocessing import fit, transform

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                                 reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm")]

_spec = importlib.util.spec_from_file_location(
    "pp_host_cases", Path(__file__).parents[1] / "unit" / "test_export_preprocess.py")
assert _spec is not None and _spec.loader is not None
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)


@pytest.mark.parametrize("block", list(_cases.CASES))
def test_c_block_on_cortex_m4_matches_python_block(block: str) -> None:
    section, X = _cases.CASES[block]
    spec = fit(section, X[: len(X) // 2], 8000.0)
    X = X[:6]
    got, insn = emulated_preprocess(spec, X, "cortex-m4")
    diff = float(np.abs(got.astype(np.float64) - transform(spec, X)).max())
    print(f"\n{block}: {spec.n_features} features on mps2-an386, max abs diff {diff:.3g} "
          f"(bound {_cases.BOUNDS[block]:g}), {int(np.median(insn))} instructions per input")
    assert got.shape == (len(X), spec.n_features)
    assert diff <= _cases.BOUNDS[block]
    assert len(insn) == len(X) and np.all(insn > 0)
