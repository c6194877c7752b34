"""Federated learning with Flower across simulated devices: THE federated entry point, ``run_federated``.

Transport: Flower 1.42's own simulation engine runs only on Ray (``backend_name="ray"`` is the one backend in
``flwr.simulation``), too heavy for 2 cores. So the run uses Flower's server (``flwr.server.Server`` with its
strategies, ``run_fl``) behind Flower's gRPC (bidi) fleet server on a loopback port, and every device is a Flower
``NumPyClient`` connected over gRPC by ``start_client`` from its own thread: real Flower messages, serialisation
and client sampling. Local training of the clients is serialised (one lock, one shared Keras model: 2 cores) and
seeded per round and client, so a run repeats. SecAgg+ exists only as a ServerApp workflow on a SuperLink or Ray
simulation in Flower 1.42, not on this transport: it is not offered.

Each client trains the pipeline's Keras model on its own data (its cohort's sensor condition and class mix);
FedProx adds the proximal term ``mu/2 ||w - w_global||^2`` to the local loss; FedAvgM (Flower's server momentum)
averages like FedAvg and moves the global model with momentum, which converges faster on non-IID devices. With DP, Flower's
``DifferentialPrivacyServerSideFixedClipping`` clips each update and adds Gaussian noise; the epsilon is computed
with dp-accounting's RDP accountant (see :mod:`tinymlops.learn.fedplan`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import registry
from tinymlops.config import PipelineConfig, load_pipeline
from tinymlops.errors import ConfigError
from tinymlops.learn.fedplan import (
    FederatedOptions,
    cohort_tests,
    dp_epsilon,
    dp_noise_for_epsilon,
    parse_options,
    partition_labels,
    vibration_clients,
)
from tinymlops.preprocessing import transform

#: seconds to wait for every client to connect to the Flower server
CONNECT_TIMEOUT_S = 60.0
COHORT_TEST_PER_CLASS = 100


@dataclass
class FederatedResult:
    """What a federated run hands on: the registered float version and its figures."""

    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    rounds: list[dict[str, float]]
    lineage: dict[str, Any]
    duration_s: float
    experiment: str = ""
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (flow result, ``--json``)."""
        return {**asdict(self), "model_uri": self.model_uri}


@dataclass
class Federation:
    """The devices' model inputs (never pooled by the server) and the held-out test sets."""

    clients: list[tuple[int, str, np.ndarray, np.ndarray]]  # cid, cohort, features, labels
    tests: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> features, labels

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """Return all clients' data pooled: what central training on the same data would see (benchmarks)."""
        return (np.concatenate([c[2] for c in self.clients]), np.concatenate([c[3] for c in self.clients]))


def build_federation(cfg: PipelineConfig, prep: Any, opts: FederatedOptions) -> Federation:
    """Give every device its local data: vibration cohorts from the generator, else a label-skewed split."""
    tests = {"test": (prep.features("test"), prep.splits["test"].y)}
    if cfg.dataset.source == "vibration":
        base = cfg.dataset.vibration
        clients = [(c.cid, c.cohort, transform(prep.preprocessing, c.X), c.y) for c in vibration_clients(base, opts)]
        for name, (X, y) in cohort_tests(base, opts.cohorts, COHORT_TEST_PER_CLASS, opts.seed).items():
            tests[f"cohort:{name}"] = (transform(prep.preprocessing, X), y)
    else:
        F, y = prep.features("train"), prep.splits["train"].y
        clients = [(k, "all", F[idx], y[idx]) for k, idx in
                   enumerate(partition_labels(y, opts.clients, opts.label_alpha, opts.seed))]
    return Federation(clients, tests)


class LocalTrainer:
    """Local training of one Keras model shared by all clients (one at a time): Adam reset per fit, optional prox."""

    def __init__(self, model: Any, learning_rate: float, batch_size: int) -> None:
        from tinymlops.tf import keras, tf

        self.model, self.batch_size, self.tf = model, batch_size, tf
        self.opt = keras.optimizers.Adam(learning_rate)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        @tf.function(reduce_retracing=True)
        def step(x: Any, y: Any, anchor: list[Any], mu: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
                prox = tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in zip(model.trainable_variables, anchor,
                                                                                   strict=True)])
                total = loss + 0.5 * mu * prox
            grads = tape.gradient(total, model.trainable_variables)
            self.opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        self.step = step

    def fit(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray, epochs: int, mu: float,
            seed: int) -> tuple[list[np.ndarray], float]:
        """Train from ``weights`` on (X, y); return the new weights and the last epoch's mean loss."""
        tf = self.tf
        self.model.set_weights(weights)
        opt_vars = self.opt.variables() if callable(self.opt.variables) else self.opt.variables
        for v in opt_vars:  # a fresh optimizer state per round and client, without retracing the step
            v.assign(tf.zeros_like(v))
        anchor = [tf.constant(w.numpy()) for w in self.model.trainable_variables]
        rng = np.random.default_rng(seed)
        mu_t = tf.constant(mu, tf.float32)
        losses: list[float] = []
        for _ in range(epochs):
            order = rng.permutation(len(y))
            losses = [float(self.step(tf.constant(X[b]), tf.constant(y[b]), anchor, mu_t))
                      for b in np.array_split(order, max(1, int(np.ceil(len(y) / self.batch_size))))]
        return self.model.get_weights(), float(np.mean(losses))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(X, verbose=0, batch_size=512).argmax(axis=1) == y))


def resolve_dp(opts: FederatedOptions) -> dict[str, float]:
    """Return the DP figures of a run (noise multiplier, clip, epsilon, delta, sample rate); empty without DP."""
    if not opts.dp:
        return {}
    q = opts.per_round / opts.clients
    z = (opts.dp_noise_multiplier if opts.dp_noise_multiplier is not None
         else dp_noise_for_epsilon(float(opts.dp_epsilon or 0), q, opts.rounds, opts.dp_delta))
    return {"noise_multiplier": z, "clip": opts.dp_clip, "epsilon": dp_epsilon(z, q, opts.rounds, opts.dp_delta),
            "delta": opts.dp_delta, "sample_rate": q}


def federate(model: Any, fed: Federation, opts: FederatedOptions, learning_rate: float, batch_size: int,
             dp: dict[str, float], on_round: Callable[[int, dict[str, float]], None]) -> list[np.ndarray]:
    """Run the Flower rounds on ``model`` (initial weights = its weights); return the final global weights."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # read when flwr is imported: no calls home from a run
    import flwr
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.client.app import start_client
    from flwr.server import Server, ServerConfig, SimpleClientManager
    from flwr.server.server import run_fl
    from flwr.server.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
        FedAvg,
        FedAvgM,
        FedProx,
    )
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

    from tinymlops.tf import keras

    logging.getLogger("flwr").setLevel(logging.ERROR)  # deprecation notices of the legacy transport
    trainer = LocalTrainer(model, learning_rate, batch_size)
    evaluator = keras.models.clone_model(model)
    lock = threading.Lock()
    errors: list[str] = []

    class Device(flwr.client.Client):  # type: ignore[misc]
        """One simulated device: trains on its own data when the server asks (a Flower ``Client``)."""

        def __init__(self, cid: int, X: np.ndarray, y: np.ndarray) -> None:
            self.cid, self.X, self.y = cid, X, y

        def fit(self, ins: Any) -> Any:
            # (de)serialisation inside the lock too: np.load parses headers with ast, which CPython 3.11 cannot
            # do from several threads at once ("AST constructor recursion depth mismatch")
            try:
                with lock:
                    w, loss = trainer.fit(parameters_to_ndarrays(ins.parameters), self.X, self.y,
                                          opts.local_epochs, float(ins.config.get("proximal_mu", 0.0)),
                                          opts.seed * 7_919 + 1_000 * int(ins.config["round"]) + self.cid)
                    params = ndarrays_to_parameters(w)
            except Exception as exc:
                errors.append(f"client {self.cid}: {type(exc).__name__}: {exc}")
                raise
            return FitRes(Status(Code.OK, "ok"), params, len(self.y), {"loss": loss})

    def evaluate(rnd: int, params: list[np.ndarray], _cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        if errors:  # fail the run now: a dead client would leave the next round waiting for it
            raise RuntimeError(f"federated round {rnd} failed on {len(errors)} client(s); first: {errors[0]}")
        evaluator.set_weights(params)
        figs = {k: _accuracy(evaluator, X, y) for k, (X, y) in fed.tests.items()}
        cohorts = [v for k, v in figs.items() if k.startswith("cohort:")]
        if cohorts:
            figs["fleet_accuracy"] = float(np.mean(cohorts))
        on_round(rnd, figs)
        return 0.0, figs

    def fit_metrics(res: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        n = sum(k for k, _ in res)
        return {"client_loss": sum(k * float(m["loss"]) for k, m in res) / max(n, 1), "round_samples": n}

    common: dict[str, Any] = {
        "fraction_fit": opts.per_round / opts.clients, "min_fit_clients": opts.per_round,
        "min_available_clients": opts.clients, "fraction_evaluate": 0.0, "min_evaluate_clients": 0,
        "evaluate_fn": evaluate, "on_fit_config_fn": lambda r: {"round": r}, "accept_failures": False,
        "initial_parameters": ndarrays_to_parameters(model.get_weights()), "fit_metrics_aggregation_fn": fit_metrics}
    strategy: Any = {"fedavg": lambda: FedAvg(**common),
                     "fedprox": lambda: FedProx(proximal_mu=opts.proximal_mu, **common),
                     "fedavgm": lambda: FedAvgM(server_momentum=opts.server_momentum, **common)}[opts.strategy]()
    if dp:
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, dp["noise_multiplier"], dp["clip"],
                                                              opts.per_round)
    random.seed(opts.seed)  # Flower's client manager samples with the random module
    np.random.seed(opts.seed)  # Flower's DP noise is drawn with NumPy's global generator
    server = Server(client_manager=SimpleClientManager(), strategy=strategy)
    address = f"127.0.0.1:{_free_port()}"
    grpc_server = start_grpc_server(client_manager=server.client_manager(), server_address=address)
    threads = [threading.Thread(target=start_client, daemon=True, name=f"fl-client-{cid}",
                                kwargs={"server_address": address, "client": Device(cid, X, y),
                                        "insecure": True})
               for cid, _cohort, X, y in fed.clients]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while server.client_manager().num_available() < opts.clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {server.client_manager().num_available()} of {opts.clients} Flower "
                                   f"clients connected to {address} within {CONNECT_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        run_fl(server=server, config=ServerConfig(num_rounds=opts.rounds))
    finally:
        grpc_server.stop(grace=1)
        for t in threads:
            t.join(timeout=5)
    if errors:
        raise RuntimeError(f"federated round failed on {len(errors)} client(s); first: {errors[0]}")
    return parameters_to_ndarrays(server.parameters)


def run_federated(config: str | Path | PipelineConfig, options: FederatedOptions | dict[str, Any] | None = None,
                  parent_run_id: str | None = None, progress: Callable[[str], None] | None = None
                  ) -> FederatedResult:
    """Train the pipeline's model federated across simulated devices and register it as a float32 version.

    The version is a parent like a centrally trained one (Keras, TFLite and ONNX exports, package with the
    reference profile), so compress -> profile -> rollout take it as is. Its tags and run carry the lineage:
    strategy, rounds, clients (per round), samples, proximal mu, DP noise/clip/epsilon/delta, per-round metrics.
    """
    from tinymlops import train as central

    cfg = config if isinstance(config, PipelineConfig) else load_pipeline(config)
    opts = options if isinstance(options, FederatedOptions) else parse_options(dict(options or {}))
    if cfg.model.kind in ("tflite", "onnx"):
        raise ConfigError(f"model.file: a finished {cfg.model.kind} file cannot be trained federated; give "
                          "model.arch, model.builder or a Keras file")
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    registry.connect(cfg.mlflow.tracking_uri)
    dp = resolve_dp(opts)
    say(f"preparing dataset {cfg.dataset.name!r} and {opts.clients} devices' local data")
    prep = central.prepare(cfg)
    fed = build_federation(cfg, prep, opts)
    ready = central.build_model(cfg, prep)
    samples = sum(len(c[3]) for c in fed.clients)
    lineage: dict[str, Any] = {
        "strategy": opts.strategy, "rounds": opts.rounds, "clients": opts.clients,
        "clients_per_round": opts.per_round, "samples": samples, "local_epochs": opts.local_epochs,
        "proximal_mu": opts.proximal_mu if opts.strategy == "fedprox" else 0.0,
        "server_momentum": opts.server_momentum if opts.strategy == "fedavgm" else 0.0, "label_alpha": opts.label_alpha,
        "transport": "flower grpc-bidi loopback", "dp": bool(dp),
        **{f"dp_{k}": v for k, v in dp.items()}, **({"dp_accountant": "dp-accounting RDP"} if dp else {})}
    tags = {"tinymlops.stage": "federated", "task": cfg.project, "config_hash": cfg.config_hash(),
            "git_commit": central._git_commit(), "dataset_digest": prep.splits["train"].digest(),
            **central.model_source_tags(cfg)}
    clients = [{"cid": cid, "cohort": cohort, "samples": len(y),
                "class_counts": np.bincount(y, minlength=len(prep.class_names)).tolist()}
               for cid, cohort, _X, y in fed.clients]
    rounds: list[dict[str, float]] = []
    with registry.run(cfg.mlflow.experiment, f"federated {opts.strategy} {cfg.model.label}", parent_run_id,
                      tags) as r:
        registry.log_params(r.run_id, {"federated": lineage, "model": cfg.model.model_dump(),
                                       "preprocessing": cfg.preprocessing.model_dump()})
        registry.log_dict(r.run_id, cfg.model_dump(mode="json"), "config/pipeline.json")
        registry.log_dict(r.run_id, {"options": opts.model_dump(), "clients": clients}, "federated/clients.json")

        def on_round(rnd: int, figs: dict[str, float]) -> None:
            rounds.append({"round": rnd, **figs})
            registry.log_metrics(r.run_id, {f"round_{k.replace(':', '_')}": v for k, v in figs.items()}, step=rnd)
            main = figs.get("fleet_accuracy", figs["test"])
            say(f"round {rnd}/{opts.rounds}: global accuracy {main:.4f}" + (" (initial model)" if rnd == 0 else ""))

        say(f"{opts.strategy} over {opts.clients} clients ({opts.per_round} per round, {samples} samples), "
            f"{opts.rounds} rounds" + (f", DP noise {dp['noise_multiplier']:.3f} clip {dp['clip']} -> epsilon "
                                       f"{dp['epsilon']:.2f} (delta {dp['delta']:g})" if dp else ""))
        t_fit = time.perf_counter()
        weights = federate(ready.model, fed, opts, cfg.train.learning_rate, cfg.train.batch_size, dp, on_round)
        fit_s = time.perf_counter() - t_fit
        model = ready.model
        model.set_weights(weights)
        registry.log_dict(r.run_id, rounds, "federated/rounds.json")
        probs = model.predict(prep.features("test"), verbose=0)
        metrics = central.log_evaluation(r.run_id, cfg, prep, probs, fit_s, opts.rounds)
        final = rounds[-1]
        extra = {k.replace("cohort:", "cohort_accuracy_"): v for k, v in final.items() if k.startswith("cohort:")}
        if "fleet_accuracy" in final:
            extra["fleet_accuracy"] = final["fleet_accuracy"]
        if dp:
            extra["dp_epsilon"] = dp["epsilon"]
        registry.log_metrics(r.run_id, extra)
        metrics.update(extra)
        say("exporting float32 Keras, TFLite and ONNX models")
        central._export_and_log(r.run_id, cfg, prep, model, probs, metrics)
        say("registering the federated float32 model version")
        version = _register(r.run_id, cfg, metrics, lineage, tags)
    return FederatedResult(r.run_id, cfg.mlflow.registered_model, version, metrics, rounds, lineage,
                           time.perf_counter() - t0, cfg.mlflow.experiment, clients)


def _register(run_id: str, cfg: PipelineConfig, metrics: dict[str, float], lineage: dict[str, Any],
              tags: dict[str, str]) -> str:
    """Register the run's package as a float32 version tagged with its federated lineage (the last step)."""
    dp = (f"DP: noise {lineage['dp_noise_multiplier']:.3f}, clip {lineage['dp_clip']}, epsilon "
          f"{lineage['dp_epsilon']:.2f} at delta {lineage['dp_delta']:g} ({lineage['dp_accountant']})"
          if lineage["dp"] else "no DP")
    description = (
        f"**{cfg.project}: float32 {cfg.model.label}, trained federated** ({lineage['strategy']}, Flower).\n\n"
        f"- **rounds** {lineage['rounds']}, **clients** {lineage['clients']} ({lineage['clients_per_round']} per "
        f"round), **samples** {lineage['samples']} (never left the devices), proximal mu {lineage['proximal_mu']}\n"
        f"- **privacy**: {dp}\n"
        f"- **Test accuracy** {metrics['accuracy']:.2%} (configured test split)"
        + (f", fleet accuracy {metrics['fleet_accuracy']:.2%} (mean over cohorts)" if "fleet_accuracy" in metrics
           else "") + f"\n- **made by**: federated run `{run_id}`, config hash `{tags['config_hash']}`\n")
    fl_tags = {f"federated.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in lineage.items()}
    version = registry.register_version(
        cfg.mlflow.registered_model, run_id,
        {"variant": "float32", "technique": "federated", "format": "onnx", "task": cfg.project,
         "train_run_id": run_id, "dataset_digest": tags["dataset_digest"], "config_hash": tags["config_hash"],
         "git_commit": tags["git_commit"], "accuracy": f"{metrics['accuracy']:.4f}", **fl_tags,
         **{k: tags[k] for k in ("model_source", "source_path", "source_sha256") if k in tags}},
        description)
    registry.set_tags(run_id, {"registered_version": version})
    return version
