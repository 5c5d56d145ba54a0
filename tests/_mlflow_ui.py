"""Drive the MLflow UI in a real headless Chromium (selenium + Debian's chromium and chromium-driver).

Nothing is installed at run time: the browser and its driver come from the system (CI installs the Debian
packages `chromium` and `chromium-driver`), selenium from requirements.txt. The server and the browser are
started on loopback only and stopped by the context managers, whatever happens in between.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tlpipe.serving import server as serving
from tlpipe.errors import PipelineError

# Chromium in a container without a display, a sandbox, a GPU or the network; its own fresh profile.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-dev-shm-usage")
WINDOW = (1600, 900)
READY_WAIT_S = 240  # first start of `mlflow ui` (store migration, workers) on a busy 2-core box: ~25-40 s
RENDER_WAIT_S = 120  # the runs page is a React app that fetches runs after load


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) from $CHROMIUM / $CHROMEDRIVER or PATH; None when either is missing."""
    browser = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(store_uri: str, log: Path, workdir: Path) -> Iterator[str]:
    """`mlflow ui` over `store_uri` on 127.0.0.1:<free port>; yields the base URL once /health answers."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "ui", "--backend-store-uri", store_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    try:
        try:
            serving.wait_ready(base, proc, READY_WAIT_S, "/health")
        except PipelineError as exc:
            raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from exc
        yield base
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn workers included), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()


@contextmanager
def chromium(browser: str, driver: str) -> Iterator[object]:
    """A headless Chromium driven through chromedriver, with a fresh profile that is removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tlpipe-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        opts.add_argument(a)
    d = None
    try:
        d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
        yield d
    finally:
        if d is not None:
            d.quit()
        shutil.rmtree(profile, ignore_errors=True)


def runs_page(base: str, experiment_id: str) -> str:
    """The README's link: the experiment's runs table in the "Model training" view (MLflow 3 opens on the GenAI
    view otherwise) with tlpipe's shared view (tracking.VIEW_TAG: the headline metric columns ticked)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=tlpipe"


def compare_page(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare view of these runs (what "Compare" opens for the ticked rows)."""
    runs = ",".join(f'"{r}"' for r in run_ids)
    return f'{base}/#/compare-runs?runs=[{runs}]&experiments=["{experiment_id}"]'


def expand(d, run_id: str) -> None:
    """Unfold a parent run's row to show its nested runs (the [+] before its name)."""
    d.execute_script(
        "const cell = [...document.querySelectorAll('.ag-row')].filter(r => r.getAttribute('row-id') === arguments[0])"
        ".flatMap(r => [...r.querySelectorAll('.ag-cell')]).find(c => c.getAttribute('col-id') === arguments[1]);"
        "cell.querySelector('button').click()", run_id, RUN_NAME_COL)


def wait_for_text(d, texts: list[str], timeout: float = RENDER_WAIT_S) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, timeout).until(lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))


def set_columns(d, wanted: dict[str, bool]) -> None:
    """Tick (True) or untick (False) columns by name in the runs table's "Columns" picker, then close it.

    Names are those the picker lists: metric and param keys, tag names, attributes such as "Dataset"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    button = WebDriverWait(d, RENDER_WAIT_S).until(
        lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Columns"), None))
    button.click()
    search = WebDriverWait(d, RENDER_WAIT_S).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[role=dialog] input[placeholder='Search columns']"))
    for name, show in wanted.items():
        search.send_keys(Keys.CONTROL, "a")  # filter the (long, clipped) list down to this column
        search.send_keys(name)
        box = WebDriverWait(d, RENDER_WAIT_S).until(lambda d: d.find_element(
            By.XPATH, f"//*[@role='dialog']//div[contains(@class,'tree-treenode')][normalize-space(.)='{name}']"
                      "/span[contains(@class,'tree-checkbox')]"))
        if ("tree-checkbox-checked" in (box.get_attribute("class") or "")) != show:
            box.click()
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def close_assistant(d) -> None:
    """Close the "MLflow Assistant" side panel, if shown, so the table gets the width."""
    from selenium.webdriver.common.by import By

    for b in d.find_elements(By.XPATH, "//*[contains(text(),'MLflow Assistant')]/ancestor::*[.//button][1]//button"):
        if b.get_attribute("aria-label") == "Close" and b.is_displayed():
            b.click()
            return


def table(d) -> dict[str, dict[str, str]]:
    """The rendered runs table: run id -> {column id: cell text} (pinned and scrolling parts merged)."""
    rows = d.execute_script(
        "return [...document.querySelectorAll('.ag-row')].map(r => [r.getAttribute('row-id'),"
        " [...r.querySelectorAll('.ag-cell')].map(c => [c.getAttribute('col-id'), c.innerText.trim()])])")
    out: dict[str, dict[str, str]] = {}
    for run_id, cells in rows:
        out.setdefault(run_id, {}).update({col: text for col, text in cells})
    return out


def metric_col(name: str) -> str:
    return f"metrics.`{name}`"


RUN_NAME_COL = "attributes.`Run Name`"
