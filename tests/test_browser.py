"""A user's view: JupyterLab started on 127.0.0.1, driven by Playwright through the system's Chromium
(never a browser Playwright downloads), opens a stage notebook, runs all its cells on the ci preset
through this environment's kernel, and shows its table and figure.

Skipped, saying why, only when no Chromium is found (scripts/setup.sh installs it with apt where it
can; $STUDY_CHROMIUM names another binary). Nothing waits on the clock: every wait is on a condition
(the server answering, the cells' execution counts, the outputs), with generous limits.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from pipelines.config import PROJECT_ROOT, load_config
from pipelines.runs.manifest import Run

NOTEBOOK = "04_mixes.ipynb"  # seconds on the ci preset: ingest + mix; a table and a figure
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIMIT_MS = 300_000  # generous (a shared 2-core machine), and below pytest-timeout's 600 s: a stuck wait
# fails this test with a screenshot instead of stopping the suite; waits end as soon as their condition holds


def find_chromium() -> str | None:
    for c in (os.environ.get("STUDY_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser")):
        if c and Path(c).exists():
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, limit_s: float = LIMIT_MS / 1000) -> None:
    """Until the server answers its status API (or exits, or the generous limit passes)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer at {url}:\n{log.read_text()[-3000:]}")


def start_lab(root_dir: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """JupyterLab on 127.0.0.1 (a free port, a token, no browser, its own runtime and config dirs, --allow-root
    as root), serving root_dir with this environment's kernel. -> (process, base URL with the token)."""
    port, token = free_port(), os.urandom(16).hex()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = tmp / "lab.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=root_dir)
    base = f"http://127.0.0.1:{port}"
    wait_for_server(f"{base}/api/status?token={token}", proc, log)
    return proc, f"{base}/lab/tree/{{path}}?token={token}"


def start_chromium(binary: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    """Chromium as our own process (its profile in tmp), -> (process, its DevTools websocket URL). Playwright
    connects to it over CDP and this test ends it, so its exit never depends on Playwright's close."""
    cmd = [binary, *CHROMIUM_FLAGS, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
           f"--user-data-dir={tmp / 'chromium-profile'}", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # blocks until Chromium prints its endpoint, or exits (EOF)
        seen.append(line)
        if "DevTools listening on " in line:
            return proc, line.split("DevTools listening on ", 1)[1].strip()
    pytest.fail(f"Chromium ({binary}) exited with {proc.wait()} before listening:\n{''.join(seen)[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ci_copy(dest: Path, results: Path, web_sample: Path) -> Path:
    """The committed notebook with its parameters cell set to the ci preset and a temporary results dir."""
    nb = nbformat.read(PROJECT_ROOT / "notebooks" / NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (f'run = "browser"\npreset = "ci"\nresults_dir = {json.dumps(str(results))}\n'
                     f'overrides = {json.dumps([f"ingest.path={web_sample}"])}')
    path = dest / NOTEBOOK
    nbformat.write(nb, path)
    return path


STARTED = ("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
           ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))")
FINISHED = """() => {
  if (document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')) return true;
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""


def click_menu(page, menu: str, command: str, end: float) -> None:
    """Open a menu of the menu bar and click one of its items (opened again until the item shows: the app
    may still be starting)."""
    item = page.locator(f'.lm-Menu-item[data-command="{command}"]')
    while not item.is_visible():
        if time.monotonic() > end:
            pytest.fail(f"the {menu} menu never showed {command}")
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar-item", has_text=menu).first.click()
        try:
            item.wait_for(state="visible", timeout=5_000)  # a retry interval, not a limit on the test
        except PlaywrightTimeout:
            continue
    item.click()


def run_all(page) -> None:
    """Run > Run All Cells until a cell starts (a Run All given before the kernel is connected runs nothing:
    it is given again), then wait until every code cell shows an execution count, or an error appears."""
    page.locator(".jp-NotebookPanel .jp-CodeCell").first.wait_for(timeout=LIMIT_MS)
    end = time.monotonic() + LIMIT_MS / 1000
    while True:
        click_menu(page, "Run", "runmenu:run-all", end)
        try:
            page.wait_for_function(STARTED, timeout=15_000)  # a retry interval, not a limit on the test
            break
        except PlaywrightTimeout:
            if time.monotonic() > end:
                pytest.fail("Run All Cells never started a cell")
    page.wait_for_function(FINISHED, timeout=LIMIT_MS)


def test_jupyterlab_runs_a_stage_notebook_and_shows_its_table_and_figure(tmp_path, web_sample):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium found (/usr/bin/chromium, `chromium` on PATH, $STUDY_CHROMIUM): install it with "
                    "`apt-get install chromium` (scripts/setup.sh does when apt is usable)")
    books, results = tmp_path / "books", tmp_path / "results"
    books.mkdir()
    ci_copy(books, results, web_sample)
    proc, url = start_lab(books, tmp_path)
    chrome, endpoint = start_chromium(chromium, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.connect_over_cdp(endpoint, timeout=LIMIT_MS)
            page = browser.contexts[0].new_page()
            page.set_default_timeout(LIMIT_MS)  # every click and wait: Playwright's 30 s default failed at load ~5
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(url.format(path=NOTEBOOK), timeout=LIMIT_MS)
            try:
                run_all(page)
            except BaseException:  # what the browser showed, and the server's log, for the failure report
                page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
                print(f"screenshot: {tmp_path / 'failed.png'}\n{(tmp_path / 'lab.log').read_text()[-4000:]}")
                raise
            outputs = page.locator(".jp-OutputArea-output")
            table = page.locator(".jp-OutputArea-output table").first
            figure = page.locator(".jp-OutputArea-output img").first
            table.wait_for(timeout=LIMIT_MS)
            figure.wait_for(timeout=LIMIT_MS)
            assert "epochs" in table.inner_text()  # the composition table: tokens, documents, epochs per source
            assert figure.evaluate("img => img.naturalWidth") > 100  # a drawn image, not a broken one
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], '
                                  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            assert errors.count() == 0, errors.all_inner_texts()
            assert outputs.count() >= 3
            page.screenshot(path=str(tmp_path / "browser.png"), full_page=True)
    finally:
        stop(chrome)
        stop(proc)
    run = Run(load_config("ci", [f"results_dir={results}", f"ingest.path={web_sample}"]), "browser")
    assert run.state("mix").status == "done"  # the notebook ran the stages through the kernel
