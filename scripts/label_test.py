# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""
Live MONAI Label test of apps/monailabel: a real server on 127.0.0.1, checked over REST.

Run through ``scripts/label_test.sh`` (``make label-test``), which creates the MONAI Label venv and runs this file in
it. Steps, each timed:

1. a synthetic ISIC 2018 data set; a tiny MedSegDiff trained on it for a few epochs with the ISIC bundle's own
   ``train.json`` (``python -m monai.bundle run``), its ``model.pt`` supplied to the app as a user would; an untrained
   tiny ``model.pt`` for every other bundle (so that all bundles are served);
2. a study folder: 3 labelled images, 3 unlabelled synthetic lesions and one constructed out-of-distribution image (a
   uniform grey square, no lesion, no skin: nothing for the image condition to go on) named to sort last;
3. ``monailabel start_server`` with the app (tiny networks through the app's ``overrides`` setting, offline flags);
4. ``/info``: every bundle served as a model and a trainer, labels numbered from 1 (0 is the background);
5. ``/infer`` with every model: HTTP 200, mask of the image's size with values in {0} + the model's labels, and for
   ISIC the ensemble scores in the result and the uncertainty map saved under the label tag ``uncertainty``;
6. ``/scoring/medsegdiff_isic2018`` then ``/activelearning/ensemble_uncertainty``: the grey image has the highest
   mutual information and is served first (``first`` serves another one);
7. ``/train/medsegdiff_isic2018`` twice: each run finishes and changes ``model.pt`` (hash before/after); /infer
   then runs with the new checkpoint;
8. the server is stopped (also on failure or Ctrl-C); the timings are printed.

Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from monai.bundle import ConfigParser
from PIL import Image
from requests_toolbelt.multipart.decoder import MultipartDecoder

REPO = Path(__file__).resolve().parents[1]
ISIC = "medsegdiff_isic2018"
BLANK = "zz_blank_grey"  # sorts after the ISIC_* ids, so "first" would not serve it
TINY: dict[str, Any] = {
    "image_size": [32, 32],
    "network_def#channels": [8, 16],
    "network_def#cond_channels": [8, 16],
    "network_def#norm_num_groups": 4,
    "num_workers": 0,
}
# inference ids per bundle: the tiny network (identical in train and inference) and a short sampler
INFERENCE: dict[str, dict[str, Any]] = {
    ISIC: {**TINY, "num_samples": 4, "num_inference_steps": 5},
    "diffseg_isic2018": {"image_size": [32, 32], "channels": [8, 16], "num_workers": 0, "timesteps": [60, 100, 150]},
    "medsegdiff_fundus_disc_cup": {**TINY, "num_samples": 2, "num_inference_steps": 2},
    "medsegdiff_multirater": {**TINY, "num_samples": 2, "num_inference_steps": 2},
    "medsegdiff_polyp": {**TINY, "num_samples": 2, "num_inference_steps": 2},
    "medsegdiff_thyroid_ddti": {**TINY, "num_samples": 2, "num_inference_steps": 2},
}
SCORES = ("entropy", "mutual_information", "sample_diversity")
TRAIN: dict[str, Any] = {**TINY, "batch_size": 2, "val_num_inference_steps": 2, "val_num_samples": 2}

TIMINGS: list[tuple[str, float]] = []
FAILURES: list[str] = []


def log(msg: str) -> None:
    print(f"[label-test] {msg}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    log(f"--- {name}")
    t0 = time.time()
    yield
    TIMINGS.append((name, time.time() - t0))
    log(f"--- {name}: ok ({time.time() - t0:.1f} s)")


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def check_later(cond: bool, msg: str) -> bool:
    """A check of one bundle: recorded, the run goes on (the other bundles and the ISIC flow are still checked)."""
    if not cond:
        log(f"  FAIL: {msg}")
        FAILURES.append(msg)
    return cond


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundles() -> list[str]:
    """The 2D bundles (the study folder holds 2D images); 3D bundles (BraTS) are checked against MONAI Label's
    bundle tasks by tests/bundles/test_brats_bundle.py, not served here."""
    names = []
    for meta in sorted((REPO / "bundles").glob("*/configs/metadata.json")):
        image = json.loads(meta.read_text())["network_data_format"]["inputs"]["image"]
        if len(image.get("spatial_shape", [])) == 2:
            names.append(meta.parent.parent.name)
    return names


def pretrain(data: Path, work: Path, epochs: int) -> Path:
    """Train the tiny ISIC network with the bundle's train.json; return its model.pt."""
    configs = REPO / "bundles" / ISIC / "configs"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(configs / "train.json"),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(work / "pretrain"),
        "--dataset_dir", str(data),
        "--num_epochs", str(epochs),
        "--val_interval", str(epochs),
        "--resume", "False",
    ]  # fmt: skip
    for key, value in TRAIN.items():
        cmd += [f"--{key}", json.dumps(value)]
    with open(work / "pretrain.log", "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work).returncode
    model = work / "pretrain" / "models" / "model.pt"
    check(
        rc == 0 and model.is_file(),
        f"pre-training failed (rc {rc}, {model} exists: {model.is_file()}); see {work}/pretrain.log",
    )
    return model


def untrained_checkpoint(bundle: str, dest: Path) -> None:
    """Write the state dict of the bundle's network (with its tiny overrides), untrained, to ``dest``."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    parser.update(INFERENCE[bundle])
    network = parser.get_parsed_content("network_def")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), dest)


def make_study(data: Path, studies: Path) -> dict[str, Path]:
    """3 labelled and 3 unlabelled synthetic lesions, and the grey image; returns the unlabelled id -> ground truth."""
    images = sorted((data / "ISIC2018_Task1-2_Training_Input").glob("ISIC_*.jpg"))
    tests = sorted((data / "ISIC2018_Task1-2_Test_Input").glob("ISIC_*.jpg"))
    (studies / "labels" / "final").mkdir(parents=True)
    for image in images[:3]:
        shutil.copy(image, studies / image.name)
        mask = np.asarray(Image.open(data / "ISIC2018_Task1_Training_GroundTruth" / f"{image.stem}_segmentation.png"))
        Image.fromarray((mask > 0).astype(np.uint8)).save(studies / "labels" / "final" / f"{image.stem}.png")
    truth = {}
    for image in tests[:3]:
        shutil.copy(image, studies / image.name)
        truth[image.stem] = data / "ISIC2018_Task1_Test_GroundTruth" / f"{image.stem}_segmentation.png"
    size = Image.open(tests[0]).size
    Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(studies / f"{BLANK}.png")
    return truth


class Server:
    """``monailabel start_server`` in its own process group; :meth:`stop` ends that group."""

    def __init__(self, app: Path, studies: Path, conf: dict[str, str], log_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = ["monailabel", "start_server", "--app", str(app), "--studies", str(studies)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in conf.items():
            cmd += ["--conf", key, value]
        env = dict(os.environ, MONAI_LABEL_AUTO_UPDATE_SCORING="false")  # scoring is requested by the test
        self.log_file = log_file
        self._out = open(log_file, "w")
        log(" ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_file}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        raise TimeoutError(f"the server did not answer /info/ within {timeout} s; see {self.log_file}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._out.close()
        log(f"server stopped (exit {self.proc.returncode})")


def call(method: str, url: str, quiet: bool = False, **kwargs: Any) -> requests.Response:
    t0 = time.time()
    r = requests.request(method, url, timeout=kwargs.pop("timeout", 600), **kwargs)
    if not quiet:
        log(f"{method} {url.split('127.0.0.1')[1]} -> HTTP {r.status_code} ({time.time() - t0:.2f} s)")
    check(r.status_code == 200, f"{method} {url}: HTTP {r.status_code}: {r.text[:2000]}")
    return r


def wait_task(url: str, kind: str, timeout: float) -> dict[str, Any]:
    """Poll ``GET /<kind>/`` until the last task is DONE (or fails)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.get(f"{url}/{kind}/", timeout=30)
        if r.status_code == 200:
            task = r.json()
            if task.get("status") in ("DONE", "ERROR"):
                check(task["status"] == "DONE", f"/{kind} task failed: {json.dumps(task)[-3000:]}")
                return task
        time.sleep(2)
    raise TimeoutError(f"/{kind} task not done within {timeout} s")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = np.logical_and(a, b).sum(), a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def infer(url: str, model: str, image: str, size: tuple[int, int], info: dict) -> tuple[np.ndarray, dict]:
    """``POST /infer/<model>`` of a datastore image: the mask must have the image's size and the model's label values."""
    r = call("POST", f"{url}/infer/{model}?image={image}&output=all", data={"params": "{}"})
    parts = {}
    for part in MultipartDecoder.from_response(r).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        parts[disposition.split('name="')[1].split('"')[0]] = part
    params = json.loads(parts["params"].text)
    mask = np.asarray(Image.open(io.BytesIO(parts["image"].content)))
    name = parts["image"].headers[b"Content-Disposition"].decode().split('filename="')[-1].rstrip('"')
    values = sorted(int(v) for v in np.unique(mask))
    allowed = {0, *(int(v) for v in info["models"][model]["labels"].values())}
    log(f"  {model}: mask {name[-4:]} {mask.shape[::-1]} {mask.dtype} values {values}; image {size}; "
        f"latency {params['latencies']['total']} s")  # fmt: skip
    check_later(mask.ndim == 2 and mask.shape[::-1] == size, f"{model}: mask {mask.shape[::-1]} for image {size}")
    check_later(set(values) <= allowed, f"{model}: mask values {values} not in {sorted(allowed)}")
    return mask, params


def run(args: argparse.Namespace, work: Path) -> None:
    names = bundles()
    if args.bundles:
        wanted = [b.strip() for b in args.bundles.split(",") if b.strip()]
        check(ISIC in wanted and set(wanted) <= set(names), f"--bundles {args.bundles}: need {ISIC}; have {names}")
        names = sorted(wanted)
    app = work / "app"
    with step("data + pre-training of the tiny ISIC network"):
        from monai_diffseg.data import make_synthetic_isic2018

        data = Path(make_synthetic_isic2018(work / "data", num_train=24, num_val=4, num_test=3, image_size=(48, 64)))
        model = pretrain(data, work, args.pretrain_epochs)
        # the app as shipped (main.py, lib/), in a folder of its own so the repository's app folder stays clean
        shutil.copytree(REPO / "apps" / "monailabel", app, ignore=shutil.ignore_patterns("model", "logs", "bin"))
        served = {n: app / "model" / n / "models" / "model.pt" for n in names}
        served[ISIC].parent.mkdir(parents=True)
        shutil.copy(model, served[ISIC])
        for n in names:
            if n != ISIC:
                untrained_checkpoint(n, served[n])
        truth = make_study(data, work / "studies")
        # the same tiny network in /infer and /train; the sampler settings exist in inference.json only
        sampler = ("num_samples", "num_inference_steps", "timesteps")
        overrides = {n: {"inference": INFERENCE[n], "train": {k: v for k, v in INFERENCE[n].items() if k not in sampler}}
                     for n in names}  # fmt: skip
        overrides[ISIC]["train"] = TRAIN
        (work / "overrides.json").write_text(json.dumps(overrides, indent=1))

    conf = {
        "models": ",".join(names),
        "bundles_dir": str(REPO / "bundles"),
        "overrides": str(work / "overrides.json"),
        "scoring_models": ISIC,
        "zoo_source": "local",
        "sam2": "false",
    }
    server = Server(app, work / "studies", conf, work / "server.log")
    try:
        with step("server start"):
            server.wait_ready(args.start_timeout)
        url = server.url

        with step("/info"):
            info = call("GET", f"{url}/info/").json()
            check(sorted(info["models"]) == names, f"models {sorted(info['models'])} != bundles {names}")
            check(sorted(info["trainers"]) == names, f"trainers {sorted(info['trainers'])} != bundles {names}")
            for n, m in info["models"].items():
                labels = m["labels"]
                log(f"  {n}: labels {labels}")
                check_later(bool(labels) and all(int(v) >= 1 for v in labels.values()), f"{n}: labels {labels} use 0")
            check("ensemble_uncertainty" in info["strategies"], f"strategies {list(info['strategies'])}")
            check(ISIC in info["scoring"], f"scoring {list(info['scoring'])}")

        unlabelled = sorted(truth)
        with step("/infer (every model)"):
            served_files = sorted(p for p in (app / "model").rglob("*") if p.is_file())
            image = unlabelled[0]
            size = Image.open(work / "studies" / f"{image}.jpg").size
            mask, params = infer(url, ISIC, image, size, info)
            unc = params["ensemble_uncertainty"]
            truth_mask = np.asarray(Image.open(truth[image])) > 0
            log(f"  {ISIC}: Dice vs ground truth {dice(mask > 0, truth_mask):.3f}; ensemble_uncertainty {unc}")
            check(unc["label_tag"] == "uncertainty", f"uncertainty map not stored: {unc}")
            r = call("GET", f"{url}/datastore/label?label={image}&tag=uncertainty")
            umap = np.asarray(Image.open(io.BytesIO(r.content)))
            log(f"  uncertainty map {umap.shape[::-1]} {umap.dtype} range [{umap.min()}, {umap.max()}]")
            check(umap.shape == mask.shape and umap.dtype == np.uint8, f"map {umap.shape} {umap.dtype}")
            # an uploaded file (not in the datastore): scores in the result, no map stored
            with open(work / "studies" / f"{unlabelled[1]}.jpg", "rb") as f:
                r = call("POST", f"{url}/infer/{ISIC}?output=json", files={"file": (f"{unlabelled[1]}.jpg", f)})
            unc = uploaded = r.json()["ensemble_uncertainty"]
            log(f"  uploaded file: ensemble_uncertainty {unc}")
            check(unc["label_tag"] is None and "file" not in unc, f"uploaded file: {unc}")
            for n in names:
                if n != ISIC:
                    try:
                        infer(url, n, image, size, info)
                    except AssertionError as e:
                        check_later(False, str(e))
            written = sorted(set(p for p in (app / "model").rglob("*") if p.is_file()) - set(served_files))
            check_later(not written, f"/infer wrote into the served bundle folders: {[str(p) for p in written]}")

        with step("/scoring + /activelearning"):
            call("POST", f"{url}/scoring/{ISIC}", json={})
            task = wait_task(url, "scoring", args.task_timeout)
            log(f"  scoring task {task['status']} in {task.get('start_ts')} .. {task.get('end_ts')}")
            candidates = [*unlabelled, BLANK]
            scores: dict[str, dict[str, float]] = {}
            deadline = time.time() + 60  # the server reloads the datastore file the scoring process wrote
            while time.time() < deadline and len(scores) < len(candidates):
                for image in candidates:
                    got = call("GET", f"{url}/datastore/image/info?image={image}", quiet=True).json()
                    entry = (got.get("ensemble_uncertainty") or {}).get(ISIC)
                    if entry:
                        scores[image] = entry
                time.sleep(1)
            check(len(scores) == len(candidates), f"scores of {sorted(scores)} only, expected {candidates}")
            for image in candidates:
                s = scores[image]
                log(f"  {image:16s} entropy {s['entropy']:.4f}  MI {s['mutual_information']:.5f}  "
                    f"diversity {s['sample_diversity']:.4f}  ({s['latency']} s)")  # fmt: skip
            # the same image and seeds: /infer (uploaded above) and the scoring process agree
            agree = all(math.isclose(scores[unlabelled[1]][k], uploaded[k], rel_tol=1e-3, abs_tol=1e-6) for k in SCORES)
            check(agree, f"scoring {scores[unlabelled[1]]} != /infer {uploaded} for {unlabelled[1]}")
            ranked = sorted(candidates, key=lambda i: -scores[i]["mutual_information"])
            check(ranked[0] == BLANK, f"most uncertain by MI is {ranked[0]}, not {BLANK}: {scores}")
            served = call("POST", f"{url}/activelearning/ensemble_uncertainty", json={}).json()
            log(f"  ensemble_uncertainty serves {served['id']} ({served.get('score')} {served.get('value')})")
            check(served["id"] == BLANK, f"served {served['id']}, expected {BLANK}")
            first = call("POST", f"{url}/activelearning/first", json={}).json()
            log(f"  first serves {first['id']}")
            check(
                first["id"] != BLANK, "'first' serves the grey image too: the check would not tell the strategies apart"
            )

        for attempt, epochs in enumerate((2, 1), 1):
            with step(f"/train #{attempt} ({epochs} epochs)"):
                model_pt = app / "model" / ISIC / "models" / "model.pt"
                before = sha256(model_pt)
                params = {"max_epochs": epochs, "val_split": 0.34, "multi_gpu": False}
                call("POST", f"{url}/train/{ISIC}", json=params)
                task = wait_task(url, "train", args.task_timeout)
                after = sha256(model_pt)
                log(f"  model.pt {before[:12]} -> {after[:12]}; task {task['status']}")
                check(after != before, f"model.pt unchanged after /train #{attempt}; see {server.log_file}")
        with step("/infer with the retrained model.pt"):
            mask, _ = infer(url, ISIC, unlabelled[0], size, info)
            log(
                f"  {ISIC}: Dice vs ground truth {dice(mask > 0, np.asarray(Image.open(truth[unlabelled[0]])) > 0):.3f}"
            )
    finally:
        server.stop()
    check(not FAILURES, f"{len(FAILURES)} bundle check(s) failed: " + "; ".join(FAILURES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed on success)")
    parser.add_argument("--bundles", help=f"comma separated bundles to serve (default: all; must include {ISIC})")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--task-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="monai-diffseg-label-test-")).resolve()
    if args.workdir and work.exists() and any(work.iterdir()):
        parser.error(f"--workdir {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. from a test timeout) unwinds like Ctrl-C, so the server is stopped
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log(f"work folder {work}; MONAI Label from {shutil.which('monailabel')}")
    t0 = time.time()
    try:
        run(args, work)
    except BaseException:
        log(f"FAILED; logs kept in {work}")
        raise
    TIMINGS.append(("total", time.time() - t0))
    log("timings: " + "; ".join(f"{n} {t:.1f} s" for n, t in TIMINGS))
    log("PASSED")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
