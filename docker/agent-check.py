"""Build-time check of the agent image: the agent's code path imports, and no heavy framework is installed.

Then it compiles the bytecode of every module that path loaded, of the venv and of the standard library (the venv
is otherwise without ``__pycache__``, and the base's stdlib bytecode, if any, is not at the agent's level):
an agent that finds no ``.pyc`` compiles each module at every start, which costs ~10 MB of heap for as long as it
runs and seconds of start-up. The ``.pyc`` are unchecked-hash ones (the image's sources never change), and only
of the modules the agent loads, so the image grows by what it uses (~9 MB), not by every package's bytecode.

They are compiled at this interpreter's optimisation level and without column tables: the Dockerfile runs this
check with ``-OO -X no_debug_ranges``, the flags the image's ENV gives the agent (PYTHONOPTIMIZE=2,
PYTHONNODEBUGRANGES=1), so the agent loads ``.opt-2.pyc`` without docstrings, asserts and column tables (~4 MB
less heap while serving). A different level would find no ``.pyc`` and compile every module at each start.
"""

import asyncio
import contextlib
import importlib.util
import py_compile
import sys
import sysconfig

HEAVY = ("tensorflow", "tf_keras", "mlflow", "prefect", "evidently", "pandas", "sklearn", "sqlalchemy", "fastapi",
         "typer", "rich", "click")
present = [m for m in HEAVY if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"agent image must not contain {present}")
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # as tinymlops-agent does (agent_main.main)

import ai_edge_litert.interpreter  # noqa: E402, F401
import cryptography.hazmat.backends.openssl  # noqa: E402, F401  (loaded at the first signature check)
import httpx  # noqa: E402
import numpy.fft  # noqa: E402, F401  (spectral pre-processing)
import numpy.ma  # noqa: E402, F401  (numpy.ma.core alone costs MBs of heap to compile)
import onnxruntime  # noqa: E402, F401

import tinymlops.fleet.inputs  # noqa: E402, F401
import tinymlops.fleet.tls  # noqa: E402, F401
import tinymlops.monitor.sketches  # noqa: E402, F401
import tinymlops.preprocessing  # noqa: E402, F401
import tinymlops.profile.targets  # noqa: E402, F401
import tinymlops.sim.agent  # noqa: E402, F401  (compose.yaml's simulated device)
import tinymlops.sim.simulator  # noqa: E402, F401
from tinymlops.fleet.agent import Agent  # noqa: E402, F401
from tinymlops.fleet.agent_main import main  # noqa: E402, F401
from tinymlops.runtimes.onnx import OnnxRunner  # noqa: E402, F401
from tinymlops.runtimes.tflite import TFLiteRunner, litert_available  # noqa: E402, F401

if not litert_available():  # not an assert: this check runs with -OO, which strips them
    sys.exit("LiteRT does not load in the agent image")
if sys.flags.optimize != 2:
    sys.exit("run this check with -OO -X no_debug_ranges (the flags of the agent image's ENV)")


async def _connect() -> None:
    """Load httpx's transport modules (httpcore, anyio's asyncio backend, h11) as a first request does."""
    async with httpx.AsyncClient() as client:
        with contextlib.suppress(httpx.HTTPError):  # nothing listens there (the build has no network)
            await client.get("http://127.0.0.1:9/")


asyncio.run(_connect())
# the venv's modules and the standard library's: the base image's stdlib bytecode (if any) is not at this level
roots = (sys.prefix + "/", sysconfig.get_paths()["stdlib"] + "/")
compiled = 0
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(roots) and path.endswith(".py"):
        py_compile.compile(path, doraise=True, optimize=sys.flags.optimize,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        compiled += 1
print(f"agent image ok: agent, onnxruntime and LiteRT import; no {', '.join(HEAVY)}; bytecode (opt-2, no column "
      f"tables) of {compiled} modules")
