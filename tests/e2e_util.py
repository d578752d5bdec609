"""Helpers for the real-browser tests: a JupyterLab server, Debian's chromium, page actions.

No fixed sleeps anywhere: every wait is on a selector, a JS condition or an HTTP answer,
with a timeout that names what was awaited.
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
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "e2e"

#: Debian's chromium (scripts/setup_browser.sh installs it); override with EVEREST_E2E_CHROMIUM.
CHROMIUM = os.environ.get("EVEREST_E2E_CHROMIUM", "/usr/bin/chromium")
#: Flags measured to work headless in this container (see shared/design/JUPYTER_NOTES.md).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def require_browser_stack(browser: bool = True) -> None:
    """Fail (never skip) with a clear message when chromium or the Python packages are missing
    (`browser=False`: only JupyterLab is needed)."""
    missing = []
    if browser and not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"chromium is not at {CHROMIUM}")
    needed = (("playwright", "playwright"),) if browser else ()
    for mod, pkg in needed + (("jupyterlab", "jupyterlab==4.*"),):
        try:
            __import__(mod)
        except ImportError:
            missing.append(f"python package {pkg!r} is not installed")
    if missing:
        pytest.fail("end-to-end browser test cannot run: " + "; ".join(missing)
                    + ". Run `bash scripts/setup_browser.sh` (apt-get install -y chromium; "
                      "pip install playwright jupyterlab).", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`jupyter lab` on 127.0.0.1 with a token, in a root dir with private settings,
    workspaces and runtime dirs (nothing of the user's Jupyter config leaks in)."""

    def __init__(self, base: Path, log_path: Path):
        self.base = base
        self.root = base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "LabServer":
        settings = self.base / "settings"
        notif = settings / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True, exist_ok=True)
        (notif / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        for d in ("workspaces", "runtime", "config", "data"):
            (self.base / d).mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.base / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(self.base / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self.base / "config"),   # ignore the user's config
            "PYTHONUNBUFFERED": "1",
        })
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.expose_app_in_browser=True",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly",
               "--ServerApp.shutdown_no_activity_timeout=0"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                raise TimeoutError(f"jupyter lab did not answer /api/status in {timeout} s:\n{self.log_tail()}")
            _pause_on(self.proc, 0.25)   # poll interval; also notices the server dying

    def lab_url(self, path: str = "") -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels), then end it by its pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            req = urllib.request.Request(f"{self.url}/api/shutdown?token={self.token}", method="POST")
            urllib.request.urlopen(req, timeout=5).close()
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        finally:
            self._log.close()


def _pause_on(proc: subprocess.Popen, seconds: float) -> None:
    """Wait up to `seconds` for the process to exit (a poll interval that also notices death)."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


# -- JavaScript run in the page (needs --LabApp.expose_app_in_browser) -------------------------

#: Finds the notebook panel of a path among the main-area widgets.
JS_PANEL = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
}
"""


def js_with_panel(body: str) -> str:
    """A page function `(path) => ...` with `panel` bound to the notebook panel of `path`."""
    return f"(path) => {{ const panel = ({JS_PANEL})(path); {body} }}"


JS_KERNEL_IDLE = js_with_panel("""
  if (!panel || !panel.sessionContext.session || !panel.sessionContext.session.kernel) return false;
  return panel.sessionContext.session.kernel.status === 'idle';
""")

#: 'done' once every code cell ran (execution count set, no [*]) and the kernel is idle;
#: a string starting with 'error:' as soon as any cell shows an error.
JS_ALL_CELLS_RAN = js_with_panel("""
  if (!panel) return false;
  const cells = panel.content.widgets;
  for (const c of cells) {
    if (c.model.type !== 'code') continue;
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') {
        return 'error: in cell ' + cells.indexOf(c) + ': ' + o.ename + ': ' + o.evalue
          + '\\n' + c.model.sharedModel.getSource();
      }
    }
  }
  for (const c of cells) {
    if (c.model.type !== 'code') continue;
    if (c.model.executionCount === null) return false;
    const prompt = c.node.querySelector('.jp-InputPrompt');
    if (prompt && prompt.textContent.includes('*')) return false;
  }
  const k = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return k && k.status === 'idle' ? 'done' : false;
""")

JS_CELL_SOURCES = js_with_panel("""
  return panel ? panel.content.widgets.map(c => c.model.sharedModel.getSource()) : null;
""")

JS_ACTIVE_INDEX = js_with_panel("return panel ? panel.content.activeCellIndex : -1;")

#: True once the first code cell shows an execution count or is running ([*]).
JS_FIRST_CODE_CELL_STARTED = js_with_panel("""
  if (!panel) return false;
  const cell = panel.content.widgets.find(c => c.model.type === 'code');
  if (!cell) return false;
  const prompt = cell.node.querySelector('.jp-InputPrompt');
  return cell.model.executionCount !== null || (prompt && prompt.textContent.includes('*'));
""")

#: Runs the code cell at `index` of the notebook at `path` (no keyboard focus needed).
JS_RUN_CELL = """([path, index]) => {
  const panel = (%s)(path);
  if (!panel) return false;
  window.jupyterapp.shell.activateById(panel.id);
  panel.content.activeCellIndex = index;
  panel.content.mode = 'command';
  window.jupyterapp.commands.execute('notebook:run-cell');
  return true;
}""" % JS_PANEL


def wait_js(page, fn: str, arg=None, timeout_s: float = 60, what: str = "a condition"):
    """Wait until the page function returns a truthy value; returns it."""
    from playwright.sync_api import TimeoutError as PWTimeout
    try:
        handle = page.wait_for_function(fn, arg=arg, timeout=timeout_s * 1000, polling=200)
    except PWTimeout as e:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from e
    return handle.json_value()


class Shots:
    """Numbered screenshots under test-artifacts/e2e/ (NN-description.png)."""

    def __init__(self, page, folder: Path = ARTIFACTS):
        self.page, self.folder, self.n = page, folder, 0
        self.files: list[Path] = []

    def take(self, name: str, full_page: bool = False) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        self.files.append(path)
        return path


@contextmanager
def step(shots: Shots, name: str):
    """Run one scenario step; on failure save FAILED-<name>.png and say which step failed."""
    try:
        yield
    except Exception as e:
        try:
            shots.page.screenshot(path=str(shots.folder / f"FAILED-{name}.png"))
        except Exception:
            pass
        # Playwright's messages end with a page snapshot of hundreds of lines: keep the head here
        # (a CI log shows the end of the output), the whole message in FAILED-<name>.txt
        message = f"{type(e).__name__}: {e}"
        (shots.folder / f"FAILED-{name}.txt").write_text(message)
        raise AssertionError(f"step {name!r} failed: {message[:1500]}") from None


def reset_artifacts(folder: Path = ARTIFACTS) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder
