"""CLI command of federated learning: ``tinymlops federate CONFIG``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from cli._common import console, err_console, handle_errors, print_json, print_table, run_flow
from cli._prefect import NoPrefectOpt, start_flow


@handle_errors
def federate(
    config: Annotated[Path, typer.Argument(help="pipeline YAML: dataset, pre-processing, model, MLflow names")],
    rounds: Annotated[int, typer.Option("--rounds", "-r", help="Flower rounds (server aggregations)")] = 10,
    clients: Annotated[int, typer.Option("--clients", "-k", help="simulated devices, each with its own data")] = 20,
    per_round: Annotated[int | None, typer.Option("--per-round", help="clients sampled per round (default: all)")
                         ] = None,
    strategy: Annotated[Literal["fedavg", "fedprox", "fedavgm"], typer.Option(
        "--strategy", help="Flower strategy: fedavg, fedprox (proximal term) or fedavgm (server momentum: "
                           "fastest on non-IID devices, see docs/learning.md)")] = "fedavg",
    mu: Annotated[float, typer.Option("--mu", help="FedProx proximal weight (with --strategy fedprox)")] = 0.1,
    momentum: Annotated[float, typer.Option("--server-momentum", help="FedAvgM server momentum (with --strategy "
                                            "fedavgm)")] = 0.9,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="epochs each client trains per round")] = 1,
    samples: Annotated[int, typer.Option("--samples", help="local windows per device (vibration dataset)")] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="Dirichlet concentration of each device's class mix: "
                                                         "0.1 one or two classes per device, 100 near IID")] = 0.5,
    dp_epsilon: Annotated[float | None, typer.Option("--dp-epsilon", help="differential privacy: the noise is "
                                                     "calibrated so the client-level epsilon stays within this")
                          ] = None,
    dp_noise: Annotated[float | None, typer.Option("--dp-noise", help="DP noise multiplier instead (epsilon is "
                                                   "reported)")] = None,
    dp_clip: Annotated[float, typer.Option("--dp-clip", help="L2 norm each client's update is clipped to")] = 1.0,
    dp_delta: Annotated[float, typer.Option("--dp-delta", help="delta of the (epsilon, delta) guarantee")] = 1e-5,
    seed: Annotated[int, typer.Option("--seed", help="seeds devices' data, sampling and DP noise")] = 7,
    register_only: Annotated[bool, typer.Option("--register-only", help="stop after registering the global model "
                                                "(default: compress and profile it as the config says)")] = False,
    no_prefect: NoPrefectOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Train the config's Keras model with federated learning (Flower) across simulated devices and register it.

    Every device holds its own data (vibration: its cohort's sensor condition - line-a as deployed, line-b gain
    1.15, line-c noisier, line-d slower shaft - and a skewed class mix); only model updates travel, over Flower's
    gRPC on a loopback port. FedAvg, FedProx or FedAvgM; --dp-epsilon adds Flower's server-side clipping + Gaussian noise
    (epsilon from dp-accounting's RDP accountant). The global model is registered as a float32 version with its
    lineage (tags federated.*; per-round metrics on its MLflow run) and then compressed and profiled like any
    trained version; `tinymlops rollout` takes it from there.
    """
    from tinymlops.config import load_pipeline
    from tinymlops.learn.fedplan import parse_options

    cfg = load_pipeline(config)  # a bad file fails here (exit 2) before anything starts
    opts = parse_options({"rounds": rounds, "clients": clients, "clients_per_round": per_round,
                          "strategy": strategy, "proximal_mu": mu, "server_momentum": momentum,
                          "local_epochs": local_epochs, "samples_per_client": samples, "label_alpha": alpha,
                          "dp_epsilon": dp_epsilon, "dp_noise_multiplier": dp_noise, "dp_clip": dp_clip,
                          "dp_delta": dp_delta, "seed": seed})
    from tinymlops import registry

    registry.connect(cfg.mlflow.tracking_uri)
    if no_prefect:
        from tinymlops.learn.federated import run_federated

        out = run_flow(run_federated, config, opts, progress=None if json_out else err_console.print).to_dict()
    else:
        out = start_flow("flows.federated:federated_flow", str(config), opts.model_dump(), not register_only,
                         quiet=json_out)
    if json_out:
        print_json(out)
        return
    lin, m = out["lineage"], out["metrics"]
    rows = [[str(r["round"]), *[f"{100 * r[k]:.2f}%" for k in r if k != "round"]] for r in out["rounds"]]
    heads = [k.removeprefix("cohort:") for k in out["rounds"][0] if k != "round"]
    print_table(f"{out['model_uri']}: global accuracy per round ({lin['strategy']})", ["round", *heads], rows)
    dp = (f"DP epsilon {lin['dp_epsilon']:.2f} at delta {lin['dp_delta']:g} (noise {lin['dp_noise_multiplier']:.3f},"
          f" clip {lin['dp_clip']})" if lin["dp"] else "no DP")
    console.print(f"[green]registered[/] {out['model_uri']}: test accuracy {100 * m['accuracy']:.2f}%, "
                  f"{lin['clients']} clients ({lin['clients_per_round']} per round), {lin['samples']} samples, "
                  f"{dp}; {out['duration_s']:.0f} s", highlight=False)
    if "compress" in out:
        console.print(f"compressed: {sum(v['status'] == 'registered' for v in out['compress']['variants'])} "
                      "variants registered", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main app."""
    app.command("federate")(federate)
