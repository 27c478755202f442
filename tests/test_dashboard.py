"""optuna-dashboard, in a real (headless) browser, shows what autoprune records about every candidate.

A small finished study (4 random candidates under a MACs budget, each also timed because the budget has a latency
limit too) is served by ``optuna-dashboard``; Chromium opens its trial list with every trial selected
(``/dashboard/studies/<id>/trials?numbers=0,1,2,3``) and the page must show, per trial, the attributes users read
there: MACs, parameters, the plan, the strategy and the measured latency.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from selenium import webdriver  # the dev extras install selenium and optuna-dashboard; .ci/run installs chromium
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import autoprune as ap
from autoprune.data import digits_splits
from autoprune.engine.latency import LatencyTable
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search import attrs

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver: nothing is downloaded
N_TRIALS = 4
DEADLINE = 60.0  # seconds for the dashboard to answer and for the page to render


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_command() -> list[str]:
    exe = Path(sys.executable).parent / "optuna-dashboard"
    exe = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    assert exe is not None, "the optuna-dashboard command is not installed (pip install -e '.[dev]')"
    return [exe]


def _wait_for_studies(proc: subprocess.Popen, base: str, log: Path) -> list[dict]:
    """Poll ``GET /api/studies`` until the dashboard answers (or has exited, or the deadline passes)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"optuna-dashboard exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                return json.load(r)["study_summaries"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                pytest.fail(f"optuna-dashboard did not answer in {DEADLINE:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)  # the poll's interval, not a synchronisation


def _trial_sections(text: str) -> dict[int, list[str]]:
    """The page's text cut at each selected trial's heading ("Trial 3 (trial_id=4)"): number -> its lines."""
    parts = re.split(r"^Trial (\d+) \(trial_id=\d+\)$", text, flags=re.M)
    return {int(n): body.splitlines() for n, body in zip(parts[1::2], parts[2::2])}


def _user_attrs_shown(lines: list[str]) -> dict[str, str]:
    """The "User Attributes" block of one trial's card: "key value" lines, up to the next heading."""
    if "User Attributes" not in lines:
        return {}
    shown = {}
    for line in lines[lines.index("User Attributes") + 1 :]:
        key, _, value = line.partition(" ")
        if not value:
            break
        shown[key] = value
    return shown


def _finished_study(tmp_path: Path):
    space = ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)), torch.zeros(1, 1, 8, 8))
    data = digits_splits()
    ev = AccuracyEvaluator(data.val, train_data=data.train, bn_recalibration_batches=2, recalibration_batch_size=64)
    # MACs decide (half of them); the latency limit (100 ms absolute, far above this model's few ms) never binds
    # but makes the search time every candidate beside the unpruned model, as a latency study does.
    table = LatencyTable.build(space, grid_step=8, min_run_time=0.002)
    url = f"sqlite:///{tmp_path / 's.db'}"
    budget = ap.Budget(macs=0.5, latency=100.0)
    study = ap.search(
        space,
        ev,
        budget,
        strategy="random",
        n_trials=N_TRIALS,
        storage=url,
        study_name="dash",
        seed=0,
        latency_table=table,
    )
    return space, study, url


def test_dashboard_shows_every_trial_with_its_costs_plan_and_latency(tmp_path: Path):
    assert Path(CHROMEDRIVER).exists(), f"{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
    space, study, url = _finished_study(tmp_path)
    trials = {t.number: t for t in study.trials if t.state.name == "COMPLETE"}
    assert sorted(trials) == list(range(N_TRIALS))
    for t in trials.values():  # what the page must show is there to show
        assert {attrs.PLAN, attrs.MACS, attrs.PARAMS, attrs.STRATEGY, attrs.MEASURED_MS} <= set(t.user_attrs)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dashboard.log"
    driver = None
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*_dashboard_command(), url, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        summaries = _wait_for_studies(proc, base, log)
        (study_id,) = [s["study_id"] for s in summaries if s["study_name"] == "dash"]

        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(DEADLINE)
        numbers = ",".join(str(n) for n in range(N_TRIALS))
        driver.get(f"{base}/dashboard/studies/{study_id}/trials?numbers={numbers}")

        def rendered(d) -> dict[int, dict[str, str]] | bool:
            sections = _trial_sections(d.find_element(By.TAG_NAME, "body").text)
            shown = {n: _user_attrs_shown(lines) for n, lines in sections.items()}
            done = sorted(shown) == list(range(N_TRIALS)) and all(attrs.STRATEGY in s for s in shown.values())
            return shown if done else False

        shown = WebDriverWait(driver, DEADLINE, poll_frequency=0.2).until(
            rendered, message="the trial list never showed every trial's user attributes"
        )
        text = driver.find_element(By.TAG_NAME, "body").text
        assert f"{N_TRIALS} Trials" in text  # the list's header
        for n in range(N_TRIALS):
            assert re.search(rf"^Trial {n}$", text, flags=re.M)  # each in the list on the left

        for n, t in trials.items():
            page, ua = shown[n], t.user_attrs
            assert page[attrs.MACS] == str(ua[attrs.MACS])
            assert page[attrs.PARAMS] == str(ua[attrs.PARAMS])
            assert page[attrs.STRATEGY] == "random"
            assert page[attrs.MEASURED_MS] == str(ua[attrs.MEASURED_MS])
            assert page[attrs.LATENCY_MS] == str(ua[attrs.LATENCY_MS])  # the latency table's prediction
            assert int(page[attrs.MACS]) <= 0.5 * space.macs({})  # the budget, as the page says
            plan = json.loads(page[attrs.PLAN])  # shown whole, as JSON
            assert plan == ua[attrs.PLAN]
            assert "conv1" in plan and "layer3.0.conv2" in plan
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
