"""Build-time check of the agent image: the agent's code path imports, and no heavy framework is installed."""

import importlib.util
import sys

HEAVY = ("tensorflow", "tf_keras", "mlflow", "prefect", "evidently", "pandas", "sklearn", "sqlalchemy", "fastapi",
         "typer", "rich", "click")
present = [m for m in HEAVY if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"agent image must not contain {present}")

import ai_edge_litert.interpreter  # noqa: E402, F401
import onnxruntime  # noqa: E402, F401

from tinymlops.fleet.agent import Agent  # noqa: E402, F401
from tinymlops.fleet.agent_main import main  # noqa: E402, F401
from tinymlops.runtimes.onnx import OnnxRunner  # noqa: E402, F401
from tinymlops.runtimes.tflite import TFLiteRunner, litert_available  # noqa: E402, F401

assert litert_available()
print("agent image ok: agent, onnxruntime and LiteRT import; no", ", ".join(HEAVY))
