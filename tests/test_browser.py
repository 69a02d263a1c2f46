"""The explorers in a real browser: JupyterLab runs notebooks 01, 04 and 05, Chromium moves every slider.

Drives Debian's /usr/bin/chromium through Playwright (no browser download); skipped when either is missing.
The notebooks run from a temporary copy with ``KD_FAST=1``; screenshots go to tests/artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "tests" / "artifacts" / "browser"
NOTEBOOKS = ["01_distillation_loss.ipynb", "04_temperature_alpha_explorer.ipynb", "05_beyond_logits.ipynb"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
RUN_TIMEOUT_S = 600  # notebook 04 prepares a fast-mode setup: minutes if the teacher is not cached yet

pytestmark = pytest.mark.browser
if not CHROMIUM.exists():
    pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

# Lab settings for a quiet, deterministic page: no news or update checks, every cell kept in the DOM.
SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                 "checkForUpdates": False}}

# (running cells, kernel status) of the current notebook, read through the app exposed in the browser.
STATE_JS = """() => {
  const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!nb || !nb.sessionContext || !nb.content) return null;
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')].map(p => p.textContent);
  return {status: kernel ? kernel.status : 'none', running: prompts.filter(p => p.includes('*')).length,
          unrun: nb.content.widgets.filter(c => c.model.type === 'code' && c.model.executionCount === null).length};
}"""
ERRORS_JS = """() => [...document.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(e => e.textContent).filter(t => t.includes('Error') || t.includes('Traceback'))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, home: Path) -> tuple[subprocess.Popen, str, str]:
    """``jupyter lab`` on 127.0.0.1 with a random port and token, private config dirs, ``KD_FAST=1``."""
    for name, values in SETTINGS.items():
        path = home / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "KD_FAST": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython"),
           "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0",
               "--allow-root"]
    with open(home / "jupyter.log", "wb") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {(home / 'jupyter.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                if response.status == 200:
                    return proc, url, token
        except OSError:
            time.sleep(0.5)
    stop_lab(proc)
    raise RuntimeError("jupyter lab did not answer within 120 s")


def stop_lab(proc: subprocess.Popen) -> None:
    """SIGTERM (the server shuts its kernels down), then SIGKILL to the group it leads if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def run_all(page, url: str, token: str, name: str) -> None:
    """Open a notebook, wait for its kernel, run all cells, wait until the kernel is idle again."""
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
    page.wait_for_function(f"() => {{ const s = ({STATE_JS})(); return s && s.status === 'idle'; }}", timeout=120_000)
    # resolves when the last cell has run, or right after a cell fails; bounded by RUN_TIMEOUT_S
    page.evaluate("""ms => Promise.race([window.jupyterapp.commands.execute('notebook:run-all-cells'),
                                         new Promise(resolve => setTimeout(resolve, ms))])""", RUN_TIMEOUT_S * 1000)
    deadline, quiet = time.monotonic() + 60, 0
    while time.monotonic() < deadline and quiet < 3:  # idle with nothing running, three polls in a row
        state = page.evaluate(STATE_JS)
        quiet = quiet + 1 if state["status"] == "idle" and state["running"] == 0 else 0
        time.sleep(1)
    errors = page.evaluate(ERRORS_JS)
    assert not errors, f"{name}: error output while running:\n{errors[0][-2000:]}"
    assert quiet >= 3, f"{name}: still running after {RUN_TIMEOUT_S} s"
    state = page.evaluate(STATE_JS)
    assert state["unrun"] == 0, f"{name}: {state['unrun']} code cell(s) did not run (an earlier cell failed?)"


def move_sliders(page, name: str) -> int:
    """Press ArrowRight (ArrowLeft at the end) on each enabled slider; its figure must be redrawn.

    Returns how many sliders moved (one with a single option cannot move and is not counted).
    """
    handles = page.locator(".jp-OutputArea-output .widget-slider .noUi-handle")
    moved = 0
    for i in range(handles.count()):
        handle = handles.nth(i)
        slider = handle.locator("xpath=ancestor::div[contains(@class, 'widget-slider')][1]")
        if "mod-disabled" in (slider.get_attribute("class") or "") or handle.locator(
                "xpath=ancestor::*[@disabled]").count():
            continue
        output = handle.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]")
        image = output.locator("img.widget-image").first
        readout = slider.locator(".widget-readout")
        handle.scroll_into_view_if_needed()
        before_src, before_value = image.get_attribute("src"), readout.inner_text()
        image.screenshot(path=str(SHOTS / f"{Path(name).stem}_slider{i}_before.png"))
        handle.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(300)
        if readout.inner_text() == before_value:  # already at the right end
            page.keyboard.press("ArrowLeft")
            page.wait_for_timeout(300)
        if readout.inner_text() == before_value:  # a single option (e.g. a one-temperature sweep)
            continue
        page.wait_for_function("([img, src]) => img.getAttribute('src') !== src", arg=[image.element_handle(),
                                                                                     before_src], timeout=30_000)
        page.wait_for_timeout(300)  # let the new image paint before the screenshot
        after = image.screenshot(path=str(SHOTS / f"{Path(name).stem}_slider{i}_after.png"))
        assert after != (SHOTS / f"{Path(name).stem}_slider{i}_before.png").read_bytes(), f"{name}: slider {i}"
        assert readout.inner_text() != before_value
        moved += 1
    return moved


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_notebooks")
    shutil.copytree(ROOT / "notebooks", root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    proc, url, token = start_lab(root, tmp_path_factory.mktemp("lab_home"))
    try:
        yield root, url, token
    finally:
        stop_lab(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_sliders_redraw_the_figure(lab, browser, name):
    root, url, token = lab
    if not (root / name).exists():
        pytest.skip(f"notebooks/{name} does not exist yet")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    try:
        run_all(page, url, token, name)
        page.screenshot(path=str(SHOTS / f"{Path(name).stem}_ran.png"), full_page=False)
        moved = move_sliders(page, name)
        assert moved >= 2, f"{name}: expected at least the T and alpha sliders, moved {moved}"
        assert not page.evaluate(ERRORS_JS), f"{name}: error output after moving the sliders"
    finally:
        page.screenshot(path=str(SHOTS / f"{Path(name).stem}_final.png"))
        page.close()
