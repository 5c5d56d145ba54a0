"""Benchmark: load-test the registered model behind `mlflow models serve` on loopback.

Starts `mlflow models serve -m <model-uri> --env-manager local -h 127.0.0.1` (the tracking/registry
store from --tracking-uri), waits for /ping, then runs N concurrent clients (asyncio + aiohttp, which
DVC already depends on) for a fixed time; each client POSTs one real image per request (the test
split's images, round-robin) in MLflow's `dataframe_split` JSON and checks the answer. Prints a
markdown table: requests/s, p50/p99/max latency, errors (non-200, timeouts, malformed answers).

--checkpoint CKPT --backends torch,onnx instead registers CKPT once per `registry.backend` in a scratch
MLflow store (as the retrain stage does: tlpipe.serving.registry.log_model) and load-tests each served model
alone, one after the other, with one row per backend in the same table.

    python bench/serve_load.py [--model-uri models:/tlpipe-classifier/1] [--tracking-uri sqlite:///mlflow.db]
                               [--checkpoint models/retrained.pt --backends torch,onnx]
                               [--clients 50] [--duration 60] [--short] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tlpipe.serving import model, server  # noqa: E402
from tlpipe.data import images, manifest  # noqa: E402


def test_images(split_dir: Path, raw: Path, limit: int) -> list[bytes]:
    """Up to `limit` encoded images of the test split, as stored (PNG for digits, PPM for GTSRB)."""
    rows = manifest.read(split_dir / "test.csv")[:limit]
    reader = images.Reader(raw)
    try:
        return [reader.read(r["path"]) for r in rows]
    finally:
        reader.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[bytes], clients: int, duration: float, timeout: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + duration
    headers = {"Content-Type": "application/json"}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        n = i
        while time.perf_counter() < stop_at:
            body = bodies[n % len(bodies)]
            n += clients
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    text = await r.text()
                    if r.status != 200:
                        error(f"HTTP {r.status}")
                        continue
                    rows = json.loads(text)["predictions"]
                    if len(rows) != 1 or "label" not in rows[0]:
                        error("malformed answer")
                        continue
            except asyncio.TimeoutError:
                error("timeout")
                continue
            except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                error(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
    return {"latencies": latencies, "errors": errors, "elapsed": time.perf_counter() - t0}


def register_backends(ckpt: Path, example: bytes, backends: list[str], root: Path) -> tuple[str, dict[str, str]]:
    """A scratch sqlite store under `root` with `ckpt` registered once per backend: (tracking URI, model URIs)."""
    import mlflow

    from tlpipe.serving import registry

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve-bench", artifact_location=(root / "artifacts").as_uri())
    uris = {}
    for backend in backends:
        with mlflow.start_run(experiment_id=exp):
            info = registry.log_model(ckpt, example, f"bench-{backend}", backend)
        uris[backend] = f"models:/bench-{backend}/{info.registered_model_version}"
    return uri, uris


def serve_and_load(model_uri: str, tracking_uri: str, bodies: list[bytes], args: argparse.Namespace,
                   duration: float) -> dict:
    """Start the model server, wait for /ping, warm up, load it for `duration` s, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen(server.serve_command(model_uri, port, workers=args.workers),
                            env=server.serve_env(tracking_uri), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        try:
            server.wait_ready(base, proc, args.startup_timeout)
        except Exception:
            log.flush()
            print(Path(log.name).read_text()[-3000:], file=sys.stderr)
            raise
        startup = time.perf_counter() - t0
        asyncio.run(load(f"{base}/invocations", bodies[:2], 2, 2.0, args.timeout))  # warm-up, not counted
        load_before = os.getloadavg()[0]
        res = asyncio.run(load(f"{base}/invocations", bodies, args.clients, duration, args.timeout))
        load_after = os.getloadavg()[0]
    finally:
        server.stop(proc)
        log.close()
        os.unlink(log.name)
    return {**res, "startup": startup, "load": (load_before, load_after)}


def row(name: str, res: dict, clients: int) -> str:
    lat = np.array(res["latencies"]) * 1000
    n_err = sum(res["errors"].values())
    p50, p99, mx = (np.percentile(lat, 50), np.percentile(lat, 99), lat.max()) if len(lat) else (float("nan"),) * 3
    return (f"| {name} | {clients} | {res['elapsed']:.1f} | {len(lat)} | {n_err} | {len(lat) / res['elapsed']:.1f} | "
            f"{p50:.0f} | {p99:.0f} | {mx:.0f} | {res['startup']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default="models:/tlpipe-classifier/1")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db",
                    help="where --model-uri is registered")
    ap.add_argument("--checkpoint", type=Path, help="register this checkpoint per --backends and load-test each")
    ap.add_argument("--backends", default="torch,onnx", help="with --checkpoint: registry.backend values, in order")
    ap.add_argument("--split", type=Path, default=Path("data/split_unknown"), help="images from <split>/test.csv")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--images", type=int, default=200, help="distinct test images sent round-robin")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--short", action="store_true", help="10 s of load instead of --duration (a smoke run)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the server")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /ping")
    args = ap.parse_args()
    duration = 10.0 if args.short else args.duration

    blobs = test_images(args.split, args.raw, args.images)
    bodies = [json.dumps({"dataframe_split": {"columns": [model.IMAGE_COLUMN], "data": [[model.encode(b)]]}})
              .encode() for b in blobs]
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        if args.checkpoint:
            tracking_uri, uris = register_backends(args.checkpoint, blobs[0], args.backends.split(","), Path(tmp))
        else:
            tracking_uri, uris = args.tracking_uri, {args.model_uri: args.model_uri}
        results = {name: serve_and_load(uri, tracking_uri, bodies, args, duration) for name, uri in uris.items()}
    print(f"{len(bodies)} distinct images, one image per request, server workers {args.workers}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; 1-min load average before / after: "
          + ", ".join(f"{n} {r['load'][0]:.2f} / {r['load'][1]:.2f}" for n, r in results.items()))
    print()
    print("| model | clients | seconds | requests OK | errors | requests/s | p50 ms | p99 ms | max ms | startup s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        print(row(name, res, args.clients))
    for name, res in results.items():
        if res["errors"]:
            print(f"\n{name} errors: " + ", ".join(f"{k}: {v}" for k, v in sorted(res["errors"].items())))


if __name__ == "__main__":
    main()
