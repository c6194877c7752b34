"""One way to run each stage: every stage command starts its Prefect flow, or with --no-prefect calls the same
library entry point without importing Prefect; help and docstrings give the real stage order; ``stages:`` without
``train`` starts from the latest registered float32 version instead of training anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli import app

REPO = Path(__file__).resolve().parents[2]
ORDER = "train → compress → profile → rollout → drift"
runner = CliRunner()


def _model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def _stage_args(stage: str, model: str) -> list[str]:
    """Arguments that start a stage on a model the store does not know (the failure happens inside the stage)."""
    return {"drift": ["drift", model, "-c", str(REPO / "configs/drift.yaml")],
            "profile": ["profile", model, "-t", "nucleo-l4r5zi"],
            "rollout": ["rollout", "start", model, "-t", "raspberry-pi-4", "--version", "1",
                        "-c", str(REPO / "configs/rollout.yaml")]}[stage]


def _flow_runs(name: str, model: str) -> list[Any]:
    """Return the flow runs of flow ``name`` whose ``model``/``model_name`` parameter is ``model``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
    return [r for r in runs if model in (r.parameters.get("model"), r.parameters.get("model_name"))]


def _cli(args: list[str], home: Path, api: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tinymlops ARGS`` in a fresh process on ``home``; with ``api`` against the test harness's Prefect
    server (the flow runs it creates can be read back here)."""
    env = {**os.environ, "TINYMLOPS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)  # as a user has it (this test process set a default)
    if api:
        from prefect.settings import PREFECT_API_URL

        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return subprocess.run([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_help_and_the_pipeline_docstrings_give_the_real_stage_order():
    r = runner.invoke(app, ["run", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert ORDER in " ".join(r.output.split())
    import flows.pipeline

    assert flows.pipeline.__doc__ is not None and ORDER in flows.pipeline.__doc__
    assert flows.pipeline.pipeline_flow.__doc__ is not None and ORDER in flows.pipeline.pipeline_flow.__doc__
    assert "drift → rollout" not in (flows.pipeline.__doc__ + r.output)


@pytest.mark.parametrize("command", [["train"], ["compress"], ["profile"], ["drift"], ["rollout", "start"]])
def test_every_stage_command_documents_no_prefect(command: list[str]):
    r = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert "--no-prefect" in r.output and "flow run" in " ".join(r.output.split())


@pytest.mark.parametrize(("stage", "flow_name"), [("drift", "drift"), ("profile", "profile"),
                                                  ("rollout", "rollout")])
def test_stage_commands_start_their_flow(stage: str, flow_name: str, tmp_path: Path, prefect_harness: None):
    model = _model()
    r = _cli(_stage_args(stage, model), tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "error: " in r.stderr and model in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    runs = _flow_runs(flow_name, model)
    assert len(runs) == 1 and runs[0].state is not None and runs[0].state.is_failed()
    # no retries on an expected failure: the unknown model fails once
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
    assert tasks and all(t.run_count == 1 for t in tasks), [(t.name, t.run_count) for t in tasks]


@pytest.mark.parametrize("stage", ["drift", "profile", "rollout"])
def test_no_prefect_calls_the_library_without_importing_prefect(stage: str, tmp_path: Path):
    model = _model()
    code = ("import sys\nfrom cli import main\nsys.argv = ['tinymlops', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit as exc:\n    code = exc.code\nprint('PREFECT IMPORTED' if 'prefect' in sys.modules "
            "else 'no prefect', code)\n")
    env = {**os.environ, "TINYMLOPS_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-c", code, *_stage_args(stage, model), "--no-prefect"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.stdout.strip().endswith("no prefect 1"), res.stdout + res.stderr[-2000:]
    assert model in res.stderr and "Traceback" not in res.stderr


def _register(model: str, variant: str, accuracy: float, extra: dict[str, str] | None = None) -> str:
    from tinymlops import registry

    with registry.run("it-stages", f"train-{variant}") as r:
        registry.log_metrics(r.run_id, {"test_accuracy": accuracy, "test_macro_f1": accuracy,
                                        "train_seconds": 1.0})
    return registry.register_version(model, r.run_id, {"variant": variant, "dataset_digest": "d1",
                                                        **(extra or {})}, "test")


def _pipeline(path: Path, model: str, stages: list[str]) -> Path:
    cfg = yaml.safe_load((REPO / "configs/pipeline.yaml").read_text())
    cfg.update({"mlflow": {"experiment": "it-stages", "registered_model": model}, "stages": stages,
                "drift": None, "rollout": None})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_latest_trained_is_the_newest_complete_float_version(tm_home: Path):
    from tinymlops.train import latest_trained

    model = _model()
    _register(model, "float32", 0.91)
    _register(model, "ptq-int8", 0.90)
    v3 = _register(model, "float32", 0.93)
    _register(model, "float32", 0.99, {"tinymlops.incomplete": "interrupted"})
    res = latest_trained(_pipeline(tm_home / "p.yaml", model, ["compress"]))
    assert (res.version, res.model_uri, res.metrics["test_accuracy"]) == (v3, f"models:/{model}/{v3}", 0.93)


def test_latest_trained_without_a_float_version_names_the_model(tm_home: Path):
    from tinymlops.errors import UsageError
    from tinymlops.train import latest_trained

    model = _model()
    with pytest.raises(UsageError, match=f"stages: without 'train'.*{model}"):
        latest_trained(_pipeline(tm_home / "p.yaml", model, ["profile"]))
    _register(model, "ptq-int8", 0.9)
    with pytest.raises(UsageError, match="no|none"):
        latest_trained(_pipeline(tm_home / "p.yaml", model, ["profile"]))


def test_run_without_train_in_stages_does_not_train(tm_home: Path, prefect_harness: None):
    from tinymlops import registry

    model = _model()
    path = str(_pipeline(tm_home / "p.yaml", model, ["profile"]))
    r = _cli(["run", "-c", path], tm_home)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "stages: without 'train'" in r.stderr and model in r.stderr and "Traceback" not in r.stderr
    assert "Beginning flow run" in r.stderr  # progress logs show (the config check must not silence them)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
    assert [x.state.is_failed() for x in runs if x.parameters.get("config_path") == path and x.state] == [True]
    exp = registry.client().get_experiment_by_name("it-stages")
    runs = registry.client().search_runs([exp.experiment_id]) if exp else []
    assert not [x for x in runs if x.data.tags.get("tinymlops.stage") == "train"], "training ran anyway"


def test_empty_stages_is_a_config_error(tmp_path: Path):
    r = runner.invoke(app, ["validate", str(_pipeline(tmp_path / "p.yaml", "m", []))])
    assert r.exit_code == 2 and "stages" in r.output
