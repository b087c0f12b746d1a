"""``privtext federation serve`` (the coordinator) and ``privtext federation join`` (a silo).

Both run Flower's deployment engine (the ``federation`` extra: ``pip install
'privtext[federation]'``) as processes of their own:

* ``serve`` starts a SuperLink, submits the Flower App of ``service/federation_app/`` to it
  with ``flwr run`` (the settings as its run config), waits for the run to end, prints the
  coordinator's summary (per round: which silos were accepted, declined, rejected or failed;
  per silo: epsilon and delta; the model each silo published) and stops the SuperLink;
* ``join`` starts a SuperNode for this instance's data directory: its ClientApp trains on
  the live snapshot, charged to this instance's corpus-wide cap (``privtext cap``).

Without TLS files, both refuse unless ``--insecure`` is given for a loopback address.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from federation.config import TRAINING_FIELDS, FederationSettings
from mechanisms.errors import InvalidParameterError
from service.cli.context import Context, pass_ctx

APP_DIR = Path(__file__).resolve().parents[1] / "federation_app"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CONNECTION = "privtext"


def _bin(name: str) -> str:
    """A console script of the environment privtext runs in (Flower's included)."""
    return str(Path(sys.executable).parent / name)


def _env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _tls_args(host: str, insecure: bool, tls: dict[str, str | None]) -> list[str]:
    """Flower's TLS arguments; ``--insecure`` only on a loopback address."""
    if insecure:
        if host not in LOOPBACK:
            raise click.UsageError("--insecure is allowed on a loopback address only")
        return ["--insecure"]
    given = {k: v for k, v in tls.items() if v}
    if not given:
        raise click.UsageError("give the TLS files (see --help), or --insecure on loopback")
    return [arg for k, v in given.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException("the SuperLink exited while starting")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise click.ClickException(f"the SuperLink did not listen on {host}:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and its children (Flower's SuperExec)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run_config_toml(settings: FederationSettings, path: Path) -> Path:
    lines = []
    flat = settings.to_run_config()
    for key, value in flat.items():
        lines.append(f'"{key}" = {json.dumps(value)}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _connection_config(home: Path, address: str, tls: list[str], ca: str | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{address}"',
    ]
    if "--insecure" in tls:
        lines.append("insecure = true")
    elif ca:  # else the system's CA bundle verifies the SuperLink
        lines.append(f"root-certificates = {json.dumps(str(Path(ca).resolve()))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


TRAIN_OPTIONS = (
    ("steps", int), ("expected_senders_per_batch", int), ("target_epsilon", float),
    ("max_seq_len", int), ("max_messages_per_sender", int), ("trainable_layers", int),
    ("learning_rate", float), ("max_grad_norm", float), ("seed", int), ("engine", str),
)
assert {name for name, _t in TRAIN_OPTIONS} <= set(TRAINING_FIELDS)


def _train_options(func: Any) -> Any:
    for name, kind in reversed(TRAIN_OPTIONS):
        func = click.option(
            f"--{name.replace('_', '-')}", name, type=kind, default=None,
            help=f"Local round: TrainingConfig.{name} (default: the app's).",
        )(func)
    return func


@click.group("federation")
def federation() -> None:
    """Federated DP training across silos (Flower; the `federation` extra)."""


@federation.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9093, show_default=True, help="SuperLink's port.")
@click.option("--insecure", is_flag=True, help="No TLS (loopback only).")
@click.option("--ssl-certfile", default=None)
@click.option("--ssl-keyfile", default=None)
@click.option("--ssl-ca-certfile", default=None)
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--min-silos", type=int, default=2, show_default=True)
@click.option("--min-results", type=int, default=2, show_default=True)
@click.option("--round-timeout", "round_timeout_s", type=float, default=600.0, show_default=True)
@click.option("--max-update-norm", type=float, default=0.0, show_default=True)
@click.option("--activate", is_flag=True, help="Each silo activates the published model.")
@click.option("--summary", "summary_path", default=None, help="Where to write the summary.")
@_train_options
@pass_ctx
def serve(ctx: Context, host: str, port: int, insecure: bool, **options: Any) -> None:
    """Coordinate one federated training: SuperLink, `flwr run`, summary."""
    tls = {k: options.pop(k) for k in ("ssl_certfile", "ssl_keyfile", "ssl_ca_certfile")}
    tls_args = _tls_args(host, insecure, tls)
    home = Path(ctx.settings.data_dir) / "federation" / "coordinator"
    home.mkdir(parents=True, exist_ok=True)
    training = {k: options.pop(k) for k, _t in TRAIN_OPTIONS if options.get(k) is not None}
    for name, _t in TRAIN_OPTIONS:
        options.pop(name, None)
    summary = Path(options.pop("summary_path") or home / f"summary-{int(time.time())}.json")
    try:
        settings = FederationSettings(
            **options, summary_path=str(summary.resolve()), training=training
        ).validate()
    except InvalidParameterError as exc:
        raise click.UsageError(str(exc)) from exc
    link = subprocess.Popen(
        [_bin("flower-superlink"), *tls_args, "--host", host, "--port", str(port),
         "--disable-runtime-dependency-installation"],
        env=_env(home / "superlink"), start_new_session=True,
    )
    try:
        _wait_for_port(host, port, link, 60)
        _connection_config(home / "cli", f"{host}:{port}", tls_args, tls["ssl_ca_certfile"])
        config = _run_config_toml(settings, home / "run-config.toml")
        rc = subprocess.call(
            [_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--run-config", str(config),
             "--stream"],
            env=_env(home / "cli"),
        )
        if rc != 0 or not summary.is_file():
            raise click.ClickException(f"the federated run did not finish (flwr run: {rc})")
    finally:
        _stop(link)
    click.echo(summary.read_text(encoding="utf-8"))


@federation.command("join")
@click.option("--superlink", required=True, help="The coordinator's HOST:PORT.")
@click.option("--population-size", type=int, required=True,
              help="The declared, public number of senders of this silo's corpus.")
@click.option("--insecure", is_flag=True, help="No TLS (loopback only).")
@click.option("--root-certificates", default=None, help="CA bundle of the SuperLink's TLS.")
@click.option("--port", type=int, default=9094, show_default=True,
              help="The SuperNode's local ClientApp port (one per silo on a host).")
@pass_ctx
def join(
    ctx: Context,
    superlink: str,
    population_size: int,
    insecure: bool,
    root_certificates: str | None,
    port: int,
) -> None:
    """Join a federation as this instance's silo (runs until stopped)."""
    host = superlink.rsplit(":", 1)[0].strip("[]")
    tls_args = _tls_args(host, insecure, {"root_certificates": root_certificates})
    if population_size < 1:
        raise click.UsageError("--population-size must be >= 1")
    data_dir = Path(ctx.settings.data_dir).resolve()
    _ = ctx.engine  # the silo's state store exists (and its ledger tables) before a round
    node_config = f'data-dir="{data_dir}" population-size={population_size}'
    env = _env(data_dir / "federation" / "supernode")
    env["PRIVTEXT_DATA_DIR"] = str(data_dir)
    os.execve(
        _bin("flower-supernode"),
        [_bin("flower-supernode"), *tls_args, "--superlink", superlink, "--port", str(port),
         "--node-config", node_config],
        env,
    )


COMMANDS: list[click.Command] = [federation]
