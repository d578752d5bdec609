"""End to end in a real browser: JupyterLab + the everest sidebar + the quickstart notebook.

Debian's /usr/bin/chromium, driven by Python Playwright, against `jupyter lab` started on
127.0.0.1 in a temporary root dir holding a copy of notebooks/01-quickstart.ipynb. One
scenario, step by step, a screenshot per step under test-artifacts/e2e/:

  open the notebook (sidebar: empty state with the start hint) -> run all cells ->
  the session and its index job appear in the sidebar, the job goes to done, the indexed
  views show their size -> the result galleries render -> click a kNN thumbnail and
  pick "kNN from this item": the drill-down level appears -> start `%everest index conv1`
  and cancel it from the sidebar -> click a history entry: its magic lands in a new cell ->
  reload the page (the sidebar reopens the channel itself) -> a second notebook shows its
  own (empty) kernel, switching back shows the session -> restart the kernel: empty state;
  `%load_ext` + `%everest use` again: the session is back.

Also (issue 12): the group top-k's histogram of its aggregate; three drill-downs (kNN, most
activated neurons, top-k of those) that end "done" in the history and each insert the magic
that reproduces them; a query on a view not indexed yet showing the build's progress in its
bar and in the sidebar; a session made with `em.Session(...)` listed in the sidebar; a text
gallery whose sentences are shaded token by token.

Needs chromium, playwright and jupyterlab (scripts/setup_browser.sh); missing ones FAIL
the test with a message saying so, they never skip it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_util import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, JS_ACTIVE_INDEX, JS_ALL_CELLS_RAN, JS_CELL_SOURCES,
                      JS_FIRST_CODE_CELL_STARTED, JS_KERNEL_IDLE, JS_RUN_CELL, REPO, LabServer, Shots,
                      require_browser_stack, reset_artifacts, step, wait_js)

NOTEBOOK = "01-quickstart.ipynb"
SCRATCH = "scratch.ipynb"

# -- DOM of the result gallery (everest_magic/widgets/gallery.js) ------------------------------
GALLERY = ".everest-gallery"
THUMBNAIL = "figure.ev-item.ev-clickable"            # one result item; a click opens the menu
THUMBNAIL_IMG = "figure.ev-item img"
ACTION_KNN = ".ev-menu button.ev-action[data-action='knn']"   # "kNN from this item"
ACTION = ".ev-menu button.ev-action[data-action='{}']"           # knn | neurons | topk
HISTOGRAM = "section.ev-level[data-level='0'] img.ev-hist"
TOKEN = "figure.ev-item .ev-tokens span.ev-tok"
LEVEL = "section.ev-level[data-level='{}']"          # level 0: the result, 1: first drill-down
BREADCRUMBS = "nav.ev-crumbs"

# -- DOM of the sidebar (labextension/panel.ts) -----------------------------------------------
SIDEBAR_TAB = ".jp-SideBar li[data-id='everest-magic-sidebar']"
SIDEBAR = "#everest-magic-sidebar"
EMPTY = f"{SIDEBAR} .everest-empty"
SESSION = f"{SIDEBAR} .everest-session[data-session='default']"
VIEW = f"{SIDEBAR} .everest-view[data-view='{{}}']"
JOB = f"{SIDEBAR} .everest-job"
HISTORY_ENTRY = f"{SIDEBAR} .everest-history-entry"

# generous ceilings (training ~20 s, indexing two layers ~30 s on 2 CPU cores)
RUN_ALL_S = 480
STEP_S = 90


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_browser_stack()
    reset_artifacts()
    base = tmp_path_factory.mktemp("e2e-lab")
    server = LabServer(base, ARTIFACTS / "jupyterlab.log")
    shutil.copy(REPO / "notebooks" / NOTEBOOK, server.root / NOTEBOOK)
    (server.root / SCRATCH).write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "scratch-1", "metadata": {},
                   "outputs": [], "source": "x = 1"}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5}))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(STEP_S * 1000)
        console = open(ARTIFACTS / "browser-console.log", "w")
        pg.on("console", lambda m: console.write(f"[{m.type}] {m.text}\n"))
        pg.on("pageerror", lambda e: console.write(f"[pageerror] {e}\n"))
        try:
            yield pg
        finally:
            console.close()
            context.close()
            browser.close()


def test_labextension_installed_and_enabled():
    """`pip install` of the package alone makes JupyterLab list the sidebar as enabled."""
    require_browser_stack(browser=False)
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                         capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    line = next((ln for ln in text.splitlines() if ln.strip().startswith("everest_magic ")), None)
    assert line is not None, f"everest_magic is not a JupyterLab extension here:\n{text}"
    assert "enabled" in line and "OK" in line, line


def installed_build_is_the_repos() -> tuple[bool, str]:
    """(same, detail): is the sidebar build JupyterLab serves the one committed in the repo?"""
    from jupyter_core.paths import jupyter_path
    repo = json.loads((REPO / "everest_magic" / "labextension" / "package.json").read_text())
    for root in jupyter_path("labextensions"):
        pkg = Path(root) / "everest_magic" / "package.json"
        if pkg.exists():
            served = json.loads(pkg.read_text())
            return served["jupyterlab"]["_build"] == repo["jupyterlab"]["_build"], str(pkg.parent)
    return False, "not installed"


def test_kernels_import_this_checkout(tmp_path):
    """A kernel started outside the repo (as the lab's are) imports everest_magic from this
    checkout: an editable install re-pointed elsewhere makes every notebook cell fail."""
    out = subprocess.run([sys.executable, "-c", "import everest_magic; print(everest_magic.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    where = Path(out.stdout.strip()).resolve().parent if out.returncode == 0 else None
    assert where == (REPO / "everest_magic").resolve(), (
        f"outside the repo, everest_magic imports from {where} ({out.stderr.strip()[-200:]}); "
        "reinstall: pip install -e . --no-deps")


def test_served_sidebar_is_the_committed_build():
    """The browser test runs the sidebar built from this checkout, not a stale copy left by an
    earlier install (an editable install copies the build once)."""
    require_browser_stack(browser=False)
    same, where = installed_build_is_the_repos()
    assert same, (f"JupyterLab serves a sidebar build at {where} that is not this checkout's "
                  "everest_magic/labextension/; reinstall: pip install -e . --no-deps")


# -- page actions ---------------------------------------------------------------------------------

def open_notebook(page, lab, path: str) -> None:
    page.goto(lab.lab_url(path))
    page.wait_for_selector(".jp-NotebookPanel", state="visible", timeout=90_000)
    wait_js(page, JS_KERNEL_IDLE, path, 90, f"the kernel of {path} to be idle")
    page.evaluate("() => window.jupyterapp.restored.then(() => true)")
    plugin_on = page.evaluate("() => window.jupyterapp.isPluginActivated('everest_magic:sidebar')")
    assert plugin_on, "the everest_magic:sidebar plugin is not active in JupyterLab"


JS_OPEN_AND_ACTIVATE = """async (path) => {
  const app = window.jupyterapp;
  await app.restored;
  const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  app.shell.activateById(w.id);
}"""
JS_CURRENT_PATH = "() => { const w = window.jupyterapp.shell.currentWidget; return w && w.context ? w.context.path : null; }"


def bring_to_front(page, path: str) -> None:
    """Open the notebook at `path`, wait for its kernel and make it the current widget; again
    while a late restore of the workspace (or of the page's URL) puts another one in front."""
    page.evaluate(JS_OPEN_AND_ACTIVATE, path)
    wait_js(page, JS_KERNEL_IDLE, path, 90, f"the kernel of {path} to be idle")
    for _ in range(10):
        page.evaluate(JS_OPEN_AND_ACTIVATE, path)
        page.wait_for_timeout(1000)
        if page.evaluate(JS_CURRENT_PATH) == path:
            page.wait_for_timeout(1000)
            if page.evaluate(JS_CURRENT_PATH) == path:
                return
    raise AssertionError(f"{path} does not stay in front: {page.evaluate(JS_CURRENT_PATH)} is")


def show_sidebar(page) -> None:
    if not page.locator(SIDEBAR).is_visible():
        page.click(SIDEBAR_TAB)
    page.wait_for_selector(SIDEBAR, state="visible")


def menu(page, top: str, item: str) -> None:
    """Click a main-menu entry (item is a regex for the label)."""
    page.click(f".lm-MenuBar-itemLabel:text-is('{top}')")
    page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(item)).first.click()


def run_all_cells(page) -> None:
    """Run > Run All Cells; once more if the kernel has not started on the first code cell
    within a minute (on a loaded machine the kernel's websocket can drop the first requests;
    no cell has run then, so running them again is safe)."""
    for attempt in range(2):
        menu(page, "Run", r"^Run All Cells$")
        try:
            wait_js(page, JS_FIRST_CODE_CELL_STARTED, NOTEBOOK, 60, "the first code cell to start")
            return
        except AssertionError:
            if attempt:
                raise


def notebook_panel(page):
    """The notebook panel in front: the shell's current widget (a restored workspace can show
    two notebooks side by side, so `:visible` is not enough)."""
    wid = page.evaluate("() => window.jupyterapp.shell.currentWidget.id")
    return page.locator(f"[id='{wid}']")


def code_cell(page, text: str):
    """The front notebook's code cell whose input contains `text`."""
    return notebook_panel(page).locator(".jp-CodeCell").filter(
        has=page.locator(".jp-InputArea", has_text=text)).first


def select_cell_command_mode(page, cell) -> None:
    cell.scroll_into_view_if_needed()
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")


def add_cell_at_end_and_run(page, text: str) -> None:
    last = notebook_panel(page).locator(".jp-Cell").last
    select_cell_command_mode(page, last)
    page.keyboard.press("b")          # new cell below, selected
    page.keyboard.press("Enter")      # edit it
    page.keyboard.type(text)
    page.keyboard.press("Shift+Enter")


def insert_from_history(page, entry) -> str:
    """Click a history entry; return the source of the cell it inserted below the active one."""
    before = page.evaluate(JS_CELL_SOURCES, NOTEBOOK)
    entry.click()
    wait_js(page, f"(path) => ({JS_CELL_SOURCES})(path).length === {len(before) + 1}", NOTEBOOK,
            STEP_S, "a new cell after clicking the history entry")
    return page.evaluate(JS_CELL_SOURCES, NOTEBOOK)[page.evaluate(JS_ACTIVE_INDEX, NOTEBOOK)]


def item_id(figure) -> int:
    """The input id in a gallery item's caption ("#4711 · 3.2 · label 7")."""
    return int(re.match(r"#(\d+)", figure.locator("figcaption").text_content()).group(1))


def job_locator(page, description: str):
    return page.locator(JOB).filter(
        has=page.locator(".everest-job-description", has_text=re.compile(rf"^{re.escape(description)}$")))


def expect_attr(locator, name: str, value, timeout_s: float = STEP_S) -> None:
    from playwright.sync_api import expect
    expect(locator).to_have_attribute(name, value, timeout=timeout_s * 1000)


# -- the scenario --------------------------------------------------------------------------------

def test_quickstart_notebook_with_sidebar(lab, page):
    from playwright.sync_api import expect
    shots = Shots(page)
    t0 = time.time()

    with step(shots, "open-notebook"):
        open_notebook(page, lab, NOTEBOOK)
        show_sidebar(page)
        expect_attr(page.locator(SIDEBAR), "data-status", "not-loaded")
        expect(page.locator(EMPTY)).to_contain_text("%load_ext everest_magic")
        expect(page.locator(EMPTY)).to_contain_text("%everest use model=")
        shots.take("sidebar-empty-state-before-load-ext")

    with step(shots, "run-all-session-and-index-job"):
        run_all_cells(page)
        page.wait_for_selector(SESSION, state="visible", timeout=RUN_ALL_S * 1000)
        session = page.locator(SESSION)
        expect(session.locator(".everest-session-model")).to_contain_text("MnistCNN")
        expect(session.locator(".everest-session-data")).to_contain_text("50000")
        expect(session.locator(".everest-session-index")).to_contain_text("mnist_index")
        job = job_locator(page, "index conv2 fc1")
        expect_attr(job, "data-status", "running", RUN_ALL_S)
        # live progress: the bar moves past zero while the job runs
        page.wait_for_function(
            """(sel) => [...document.querySelectorAll(sel)].some(j =>
                 j.dataset.status === 'running' &&
                 j.querySelector('.everest-job-description').textContent === 'index conv2 fc1' &&
                 Number(j.querySelector('.everest-job-progress').dataset.progress) > 0)""",
            arg=JOB, timeout=RUN_ALL_S * 1000, polling=100)
        expect(job.locator(".everest-job-cancel")).to_be_visible()
        shots.take("sidebar-index-job-running-with-progress")

    with step(shots, "index-job-done-views-listed"):
        expect_attr(job, "data-status", "done", RUN_ALL_S)
        expect(job.locator(".everest-job-status")).to_have_text("done")
        expect(job.locator(".everest-job-cancel")).to_have_count(0)
        for view in ("conv2", "fc1"):
            v = page.locator(VIEW.format(view))
            expect(v).to_be_visible()
            expect(v.locator(".everest-view-size")).to_have_text(re.compile(r"^[\d.]+ (B|kB|MB|GB)$"))
            expect(v.locator(".everest-view-ratio")).to_have_text(re.compile(r"^[\d.]+% of full$"))
        shots.take("sidebar-index-job-done-views-with-size-and-ratio")

    with step(shots, "all-cells-ran-galleries"):
        result = wait_js(page, JS_ALL_CELLS_RAN, NOTEBOOK, RUN_ALL_S, "every cell of the notebook to run")
        assert result == "done", result
        knn_cell = code_cell(page, "%%everest knn 20")
        knn_cell.scroll_into_view_if_needed()
        gallery = knn_cell.locator(GALLERY)
        expect(gallery.locator(LEVEL.format(0)).locator(THUMBNAIL)).to_have_count(20, timeout=STEP_S * 1000)
        # thumbnails are real images (decoded, non-empty)
        page.wait_for_function(
            """(el) => { const imgs = el.querySelectorAll('img');
                         return imgs.length >= 20 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }""",
            arg=gallery.element_handle(), timeout=STEP_S * 1000)
        top_cell = code_cell(page, "%%everest topk 12 -o top")
        expect(top_cell.locator(GALLERY).locator(THUMBNAIL)).to_have_count(12)
        gallery.scroll_into_view_if_needed()
        shots.take("knn-result-gallery")

    with step(shots, "click-thumbnail-knn-drilldown"):
        expect(gallery.locator(LEVEL.format(1))).to_have_count(0)
        gallery.locator(LEVEL.format(0)).locator(THUMBNAIL).nth(2).click()
        page.locator(ACTION_KNN).click()
        level1 = gallery.locator(LEVEL.format(1))
        expect(level1.locator(THUMBNAIL)).to_have_count(20, timeout=STEP_S * 1000)
        expect(gallery.locator(BREADCRUMBS)).to_be_visible()
        level1.scroll_into_view_if_needed()
        shots.take("knn-drilldown-level-after-thumbnail-click")

    with step(shots, "group-topk-histogram"):
        top_cell = code_cell(page, "%%everest topk 12 -o top")
        hist = top_cell.locator(GALLERY).locator(HISTOGRAM)
        expect(hist).to_have_count(1)
        page.wait_for_function("(i) => i.complete && i.naturalWidth === 360", arg=hist.element_handle())
        expect(hist).to_have_attribute("alt", re.compile("what the query ranks by"))
        top_cell.locator(GALLERY).scroll_into_view_if_needed()
        shots.take("topk-group-histogram-of-the-aggregate")

    with step(shots, "three-drilldowns-in-history"):
        # level 1 is the kNN drill-down of the previous step; now "most activated neurons" of one
        # of its items, then "top-k of those neurons" of another
        level1 = gallery.locator(LEVEL.format(1))
        first, second = level1.locator(THUMBNAIL).nth(0), level1.locator(THUMBNAIL).nth(1)
        knn_id, neurons_id, topk_id = item_id(gallery.locator(LEVEL.format(0)).locator(THUMBNAIL).nth(2)), \
            item_id(first), item_id(second)
        first.click()
        page.locator(ACTION.format("neurons")).click()
        expect(gallery.locator(LEVEL.format(2)).locator("pre.ev-text")).to_contain_text(
            f"input #{neurons_id}", timeout=STEP_S * 1000)
        second.click()
        page.locator(ACTION.format("topk")).click()
        expect(gallery.locator(LEVEL.format(2)).locator(THUMBNAIL)).to_have_count(20, timeout=STEP_S * 1000)
        drills = page.locator(f"{HISTORY_ENTRY}[data-kind='drill-down']")
        expect(drills).to_have_count(3)
        for i in range(3):
            expect_attr(drills.nth(i), "data-status", "done")
        expected = {   # newest first
            0: f"%%everest topk 20\nlayer conv2\nneurons top 10 of input {topk_id}\nby sum",
            1: f"%everest neurons top 10 of input {neurons_id} layer conv2",
            2: f"%%everest knn 20\ntarget {knn_id}\nlayer conv2\nneurons ",
        }
        for i, text in expected.items():
            inserted = insert_from_history(page, drills.nth(i))
            assert inserted.startswith(text), (i, inserted, text)
            assert inserted == drills.nth(i).locator(".everest-history-text").text_content().rstrip()
        page.locator(f"{SIDEBAR} .everest-history").scroll_into_view_if_needed()
        shots.take("history-three-drilldowns-done-each-inserted")

    with step(shots, "cancel-job-from-sidebar"):
        add_cell_at_end_and_run(page, "%everest index conv1")
        job = job_locator(page, "index conv1")
        expect_attr(job, "data-status", "running", STEP_S)
        shots.take("sidebar-conv1-index-job-running")
        job.locator(".everest-job-cancel").click()
        expect_attr(job, "data-status", "cancelled", STEP_S)
        expect(job.locator(".everest-job-cancel")).to_have_count(0)
        shots.take("sidebar-conv1-index-job-cancelled")

    with step(shots, "lazy-view-build-progress"):
        add_cell_at_end_and_run(page, "%%everest topk 8\nlayer conv3\nneurons 1, 2")
        lazy = code_cell(page, "layer conv3")
        label = lazy.locator(".widget-label", has_text="building the index of conv3")
        expect(label).to_have_text(re.compile(r"· [1-9][\d,]*/[\d,]+ ·"), timeout=STEP_S * 1000)
        job = job_locator(page, "%%everest topk 8")
        expect(job.locator(".everest-job-phase")).to_contain_text("building the index of conv3")
        page.wait_for_function(
            """(sel) => [...document.querySelectorAll(sel)].some(j =>
                 j.querySelector('.everest-job-description').textContent === '%%everest topk 8' &&
                 Number(j.querySelector('.everest-job-progress').dataset.progress) > 0)""",
            arg=JOB, timeout=STEP_S * 1000, polling=100)
        lazy.scroll_into_view_if_needed()
        shots.take("lazy-view-build-progress-in-query-and-sidebar")
        expect(lazy.locator(GALLERY).locator(THUMBNAIL)).to_have_count(8, timeout=RUN_ALL_S * 1000)
        expect_attr(job, "data-status", "done", STEP_S)

    with step(shots, "history-entry-inserts-cell"):
        entry = page.locator(HISTORY_ENTRY).filter(has=page.locator(".everest-history-text",
                                                                     has_text="%%everest topk 12 -o top"))
        expect(entry).to_have_count(1)
        expect_attr(entry, "data-status", "done")
        text = entry.locator(".everest-history-text").text_content()
        before = page.evaluate(JS_CELL_SOURCES, NOTEBOOK)
        active = page.evaluate(JS_ACTIVE_INDEX, NOTEBOOK)
        entry.click()
        wait_js(page, f"(path) => ({JS_CELL_SOURCES})(path).length === {len(before) + 1}", NOTEBOOK,
                STEP_S, "a new cell after clicking the history entry")
        after = page.evaluate(JS_CELL_SOURCES, NOTEBOOK)
        new_index = page.evaluate(JS_ACTIVE_INDEX, NOTEBOOK)
        assert new_index == active + 1, (active, new_index)
        assert after[new_index] == text.rstrip(), (after[new_index], text)
        assert after[:new_index] == before[:new_index] and after[new_index + 1:] == before[new_index:]
        inserted = notebook_panel(page).locator(".jp-Cell").nth(new_index)
        inserted.scroll_into_view_if_needed()
        expect(inserted).to_contain_text("layer conv2")
        shots.take("history-entry-inserted-as-new-cell")

    with step(shots, "reload-sidebar-reopens-channel"):
        page.reload()
        open_notebook(page, lab, NOTEBOOK)
        show_sidebar(page)
        # no %load_ext ran since: the sidebar opened the comm to the kernel itself
        page.wait_for_selector(SESSION, state="visible")
        expect(job_locator(page, "index conv2 fc1")).to_have_attribute("data-status", "done")
        expect(job_locator(page, "index conv1")).to_have_attribute("data-status", "cancelled")
        expect(page.locator(HISTORY_ENTRY)).not_to_have_count(0)
        shots.take("sidebar-after-page-reload")

    with step(shots, "switch-notebooks"):
        bring_to_front(page, SCRATCH)
        expect(page.locator(f"{SIDEBAR} .everest-notebook")).to_contain_text(SCRATCH, timeout=STEP_S * 1000)
        expect_attr(page.locator(SIDEBAR), "data-status", "not-loaded")
        expect(page.locator(EMPTY)).to_contain_text("%load_ext everest_magic")
        expect(page.locator(SESSION)).to_have_count(0)
        shots.take("sidebar-switched-to-notebook-without-session")

    with step(shots, "python-session-in-sidebar"):
        add_cell_at_end_and_run(page, "import everest_magic as em\nfrom everest_magic import examples as ex\n"
                                      "digits, digit_labels = ex.load_digits()\n"
                                      "py_session = em.Session(ex.DigitsCNN(), digits, labels=digit_labels)")
        py = page.locator(f"{SIDEBAR} .everest-session[data-session='py_session']")
        expect(py).to_be_visible(timeout=STEP_S * 1000)
        expect_attr(py, "data-origin", "python")
        expect(py.locator(".everest-badge-python")).to_have_text("Python")
        expect(py.locator(".everest-session-data")).to_contain_text("1797")
        expect_attr(page.locator(SIDEBAR), "data-status", "connected")
        shots.take("sidebar-lists-a-session-made-in-python")

    with step(shots, "text-gallery-token-shading"):
        add_cell_at_end_and_run(page, "model_t, tok, collate = ex.minilm(max_length=48)\n"
                                      "sentences = ex.python_sentences(limit=240)\n"
                                      "%load_ext everest_magic\n"
                                      "%everest use model=model_t data=sentences collate=collate name=text batch_size=40")
        add_cell_at_end_and_run(page, "%%everest topk 6\nlayer encoder.layer.1.intermediate:token_mean\n"
                                      "neurons 10, 200, 1000")
        text_cell = code_cell(page, "encoder.layer.1.intermediate:token_mean")
        tokens = text_cell.locator(GALLERY).locator(TOKEN)
        expect(tokens.first).to_be_visible(timeout=RUN_ALL_S * 1000)
        shaded = page.evaluate(r"""(sel) => [...document.querySelectorAll(sel)].filter(t =>
                   /rgba\(214, 39, 40, 0\.[1-9]/.test(t.style.background)).length""", TOKEN)
        assert shaded > 0, "no token is shaded"
        expect(text_cell.locator(".ev-note")).to_contain_text("sum of the 3 neurons at each token")
        text_cell.locator(GALLERY).scroll_into_view_if_needed()
        shots.take("text-gallery-tokens-shaded-by-the-group")
        page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=NOTEBOOK).click()
        expect(page.locator(f"{SIDEBAR} .everest-notebook")).to_contain_text(NOTEBOOK)
        page.wait_for_selector(SESSION, state="visible")
        shots.take("sidebar-switched-back-to-quickstart")

    with step(shots, "restart-kernel-empty-then-session-again"):
        menu(page, "Kernel", r"^Restart Kernel…?$")
        page.click(".jp-Dialog .jp-mod-accept")
        expect(page.locator(".jp-Dialog")).to_have_count(0)
        expect_attr(page.locator(SIDEBAR), "data-status", "not-loaded")
        expect(page.locator(SESSION)).to_have_count(0)
        expect(page.locator(EMPTY)).to_contain_text("%everest use model=")
        wait_js(page, JS_KERNEL_IDLE, NOTEBOOK, 90, "the restarted kernel to be idle")
        shots.take("sidebar-empty-after-kernel-restart")
        # rerun the setup cells: the model comes from mnist_cnn.pt, then %load_ext + %everest use
        sources = page.evaluate(JS_CELL_SOURCES, NOTEBOOK)
        first = next(i for i, src in enumerate(sources) if "trained_mnist_cnn" in src)
        for i in (first, first + 1):        # queued in the kernel one after the other
            assert page.evaluate(JS_RUN_CELL, [NOTEBOOK, i])
        page.wait_for_selector(SESSION, state="visible", timeout=RUN_ALL_S * 1000)
        expect_attr(page.locator(SIDEBAR), "data-status", "connected")
        expect(page.locator(VIEW.format("conv2"))).to_be_visible()
        expect(page.locator(JOB)).to_have_count(0)   # a new kernel: no jobs yet
        shots.take("sidebar-session-back-after-restart")

    print(f"e2e scenario: {time.time() - t0:.0f} s; screenshots: {[p.name for p in shots.files]}")
