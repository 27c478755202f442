"""The README's dashboard picture: a small autoprune study as optuna-dashboard shows it, saved to docs/dashboard.png.

    python benchmarks/dashboard_screenshot.py [--trials 12] [--out docs/dashboard.png]

Searches the pretrained zoo ResNet-20 on Fashion-MNIST with TPE at half the MACs (each candidate: adaptive-BN
recalibration on 4 x 128 training images, top-1 on 4 x 256 held-out training images), serves the study with
``optuna-dashboard`` on loopback and saves a 1400x900 screenshot of the study's history page (the optimization
history plot, then the parameter importances) taken by headless Chromium. Needs ``selenium`` and Debian's
``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import autoprune as ap
from autoprune.data import fashion_mnist_splits
from autoprune.evaluators import AccuracyEvaluator

ROOT = Path(__file__).resolve().parent.parent
CHROMEDRIVER = "/usr/bin/chromedriver"
DEADLINE = 60.0


def make_study(url: str, trials: int) -> optuna.Study:
    space = ap.PruningSpace(ap.zoo.pretrained("resnet20_fashion_mnist"), torch.zeros(1, 1, 28, 28))
    data = fashion_mnist_splits()
    ev = AccuracyEvaluator(data.val, train_data=data.train, batches=4, bn_recalibration_batches=4)
    return ap.search(
        space, ev, ap.Budget(macs=0.5), strategy="tpe", n_trials=trials, storage=url, study_name="resnet20-fmnist"
    )


def wait_for_dashboard(proc: subprocess.Popen, base: str) -> list[dict]:
    deadline = time.monotonic() + DEADLINE
    while True:
        if proc.poll() is not None:
            sys.exit(f"optuna-dashboard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                return json.load(r)["study_summaries"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                sys.exit(f"optuna-dashboard did not answer in {DEADLINE:.0f} s")
            time.sleep(0.1)  # the poll's interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    url = f"sqlite:///{work / 'study.db'}"
    t0 = time.perf_counter()
    study = make_study(url, args.trials)
    print(f"{len(study.trials)} trials in {time.perf_counter() - t0:.0f} s; best {study.best_value:.4f}")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    proc = subprocess.Popen(
        [exe, url, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    driver = None
    try:
        (study_id,) = [s["study_id"] for s in wait_for_dashboard(proc, base) if s["study_name"] == study.study_name]
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        # The page's own size, exactly (a window size includes the browser's frame).
        metrics = {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.get(f"{base}/dashboard/studies/{study_id}")
        n = len(study.trials)
        # Rendered: the history plot has a marker per trial (plotly draws them as path.point).
        WebDriverWait(driver, DEADLINE, poll_frequency=0.2).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.point")) >= n,
            message="the history plot never showed every trial",
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(out)):
            sys.exit("the screenshot failed")
        print(f"wrote {out}")
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
