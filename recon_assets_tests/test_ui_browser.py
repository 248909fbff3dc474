"""The Dagster UI of the demo, in a real browser.

The demo stack (local PostgreSQL, exchange simulator, health server) is started in-process with
`recon_assets.demo`, one full cycle plus corrections is run into the demo's Dagster instance, the
real `dagster-webserver` serves that instance, and Debian's Chromium (driven by Playwright)
reads the pages:

- every asset, asset check, schedule, sensor and job that the code location defines (the list is
  read from the loaded Definitions, so the test grows with the project) is shown in the UI;
- a materialization of `reconciliation_diff` for an account shows the runbook counts and its
  mismatch table, and they agree with what the cycle computed.

Screenshots go to pytest's tmp_path, and also to $RECON_SCREENSHOTS_DIR when it is set (that is
how docs/screenshots/ is produced). Chromium must be installed (`scripts/bootstrap.sh` installs
Debian's `chromium`); without it the test fails rather than skips.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from recon_assets.demo import start_stack, run_once
from recon_assets.local_postgres import free_port

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DIFF_ASSET = "reconciliation_diff"
ACCOUNT = "acct1"
PAGE_TIMEOUT_MS = 30_000


def _chromium_path() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not path:
        pytest.fail(f"Chromium is not installed ({CHROMIUM} is missing). The browser test needs "
                    "Debian's chromium: run `scripts/bootstrap.sh` (or `apt-get update && apt-get "
                    "install -y chromium`). Playwright's own browser download is not used.",
                    pytrace=False)
    return path


def _reset_signals() -> None:
    # Background shells start children with SIGINT/SIGTERM ignored; the webserver must die on them.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL it after `timeout`; also sweeps stray children."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; kill whatever it left in its group (the code server).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {proc.returncode}:\n"
                                 f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"dagster-webserver did not answer {url} within {timeout}s:\n"
                         f"{log.read_text()[-3000:]}")


class Expected:
    """What the code location defines, read from its Definitions with the demo's env."""

    def __init__(self, env: dict[str, str]):
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            from recon_assets.definitions import defs as load_defs
            defs = load_defs()
            graph = defs.resolve_asset_graph()
            self.asset_keys = [spec.key for spec in defs.resolve_all_asset_specs()]
            self.groups = sorted({spec.group_name for spec in defs.resolve_all_asset_specs()})
            self.checks = sorted(graph.asset_check_keys, key=lambda k: k.to_user_string())
            self.schedules = sorted(s.name for s in defs.schedules or [])
            self.sensors = sorted(s.name for s in defs.sensors or [])
            # Dagster's implicit asset job (__ASSET_JOB) is hidden by the UI, as it should be.
            self.jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))


@pytest.fixture(scope="module")
def chromium_path():
    path = _chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install -e '.[test]'`", pytrace=False)
    return path


@pytest.fixture(scope="module")
def demo_ui(chromium_path):
    """Demo stack + one cycle with corrections + dagster-webserver on a free port."""
    base = Path(tempfile.mkdtemp(prefix="recon-ui-test-"))
    os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user when we are root
    stack = None
    webserver = None
    try:
        stack = start_stack(base)
        summary = run_once(stack)
        home = base / "dagster_home"
        port = free_port()
        log = base / "webserver.log"
        env = {**os.environ, **stack.env(), "DAGSTER_HOME": str(home)}
        bindir = Path(sys.executable).parent
        with open(log, "wb") as out:
            webserver = subprocess.Popen(
                [str(bindir / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"),
                 "-h", "127.0.0.1", "-p", str(port)],
                cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_reset_signals, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/server_info", webserver, log)
        yield {"url": url, "summary": summary, "expected": Expected(stack.env()),
               "secrets": [v for c in stack.sim.credentials().values() for v in c.values()]}
    finally:
        if webserver is not None:
            _stop_group(webserver)
        if stack is not None:
            stack.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium_path, demo_ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, demo_ui):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, base_url=demo_ui["url"])
    # Dagster shows a "Join the community" dialog on localhost until it has been dismissed once.
    context.add_init_script('window.localStorage.setItem("communityNux", JSON.stringify("1"));')
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture
def shoot(tmp_path):
    """Save a screenshot in tmp_path, and in $RECON_SCREENSHOTS_DIR when it is set."""
    extra = os.environ.get("RECON_SCREENSHOTS_DIR")

    def _shoot(pg, name: str, **kwargs) -> Path:
        path = tmp_path / f"{name}.png"
        pg.screenshot(path=str(path), **kwargs)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return _shoot


def _lines(pg, selector: str = "body") -> set[str]:
    return {line.strip() for line in pg.inner_text(selector).splitlines() if line.strip()}


def _wait_for_lines(pg, names, what: str, selector: str = "body", timeout_s: float = 30) -> None:
    """Wait until every name is shown as a line of text on the page (React renders late)."""
    names = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = names - _lines(pg, selector)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not shown at {pg.url}: {sorted(missing)}")
        pg.wait_for_timeout(250)


def _tall_enough(pg, rows: int) -> None:
    # The UI's lists are virtualized: make room for every row so that each one is rendered.
    pg.set_viewport_size({"width": 1440, "height": max(1000, 400 + 90 * rows)})


def test_ui_shows_every_definition(page, demo_ui, shoot):
    exp: Expected = demo_ui["expected"]
    assert exp.asset_keys and exp.schedules and exp.sensors and exp.jobs and exp.checks

    # Asset catalog: every asset.
    _tall_enough(page, len(exp.asset_keys))
    page.goto("/assets")
    _wait_for_lines(page, [k.to_user_string() for k in exp.asset_keys], "assets (catalog /assets)")
    shoot(page, "catalog")

    # Automation: every schedule and sensor.
    _tall_enough(page, len(exp.schedules) + len(exp.sensors))
    page.goto("/automation")
    _wait_for_lines(page, exp.schedules, "schedules (/automation)")
    _wait_for_lines(page, exp.sensors, "sensors (/automation)")
    shoot(page, "automation")

    # Jobs.
    _tall_enough(page, len(exp.jobs))
    page.goto("/jobs")
    _wait_for_lines(page, exp.jobs, "jobs (/jobs)")

    # Asset checks, on each checked asset's Checks tab.
    page.set_viewport_size({"width": 1440, "height": 1000})
    by_asset: dict = {}
    for check in exp.checks:
        by_asset.setdefault(check.asset_key, []).append(check.name)
    for asset_key, names in by_asset.items():
        page.goto(f"/assets/{'/'.join(asset_key.path)}?view=checks")
        _wait_for_lines(page, names, f"asset checks of {asset_key.to_user_string()}")

    # Global asset lineage: every group, expanded (Alt+E), zoomed out to fit, for the docs.
    page.set_viewport_size({"width": 1280, "height": 1400})
    page.goto("/asset-groups")
    viewport = page.locator("[data-svg-viewport]")
    viewport.wait_for()
    _wait_for_lines(page, exp.groups, "asset groups (/asset-groups)")
    page.keyboard.press("Alt+e")
    page.wait_for_function("location.search.includes('expanded=')")
    # Every group and asset node drawn (a graph too big for the window starts zoomed out, its
    # long names shortened, so the nodes are counted rather than their names read).
    nodes = len(exp.asset_keys) + len(exp.groups)
    page.wait_for_function(
        "n => document.querySelectorAll('[data-svg-viewport] foreignObject').length >= n", arg=nodes)
    page.get_by_role("button", name="Hide navigation").click()
    page.locator('button:has([aria-label="panel_show_right"])').last.click()  # the group tree
    # Zoom out (ctrl+wheel) until every group and asset node is drawn and wholly in view (the
    # graph draws only what is in view). Zoomed out, nodes are compact: long names are shortened.
    box = viewport.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    all_in_view = """n => {
        const v = document.querySelector('[data-svg-viewport]').getBoundingClientRect();
        // The toolbar (search, materialize) floats over the top of the canvas.
        const bar = document.querySelector('[class*="topbarWrapper"]');
        const top = (bar ? bar.getBoundingClientRect().bottom : v.top + 64) + 8;
        const r = [...document.querySelectorAll('[data-svg-viewport] foreignObject')]
            .map(e => e.getBoundingClientRect());
        return r.length >= n && r.every(b => b.left >= v.left && b.right <= v.right
                                             && b.top >= top && b.bottom <= v.bottom);
    }"""
    for _ in range(10):
        if page.evaluate(all_in_view, nodes):
            break
        page.keyboard.down("Control")
        page.mouse.wheel(0, 40)
        page.keyboard.up("Control")
        page.wait_for_timeout(300)  # the zoom animation
    assert page.evaluate(all_in_view, nodes), "the asset graph does not fit in the browser window"
    # Drag the graph next to the left edge, then crop the empty canvas right of and below it.
    bounds = """() => {
        const r = [...document.querySelectorAll('[data-svg-viewport] foreignObject')]
            .map(e => e.getBoundingClientRect());
        return [Math.min(...r.map(b => b.left)), Math.max(...r.map(b => b.right)),
                Math.max(...r.map(b => b.bottom))];
    }"""
    left, _, _ = page.evaluate(bounds)
    box = viewport.bounding_box()
    grab = (box["x"] + box["width"] - 120, box["y"] + box["height"] - 20)  # empty canvas
    page.mouse.move(*grab)
    page.mouse.down()
    page.mouse.move(grab[0] - (left - box["x"] - 40), grab[1], steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)
    assert page.evaluate(all_in_view, nodes), "the asset graph moved out of the browser window"
    _, right, bottom = page.evaluate(bounds)
    size = page.viewport_size
    clip = {"x": 0, "y": 0, "width": min(size["width"], right + 60),
            "height": min(size["height"], bottom + 40)}
    shoot(page, "asset-graph", clip=clip)


def test_diff_materialization_shows_mismatch_table(page, demo_ui, shoot):
    cycles = [c for c in demo_ui["summary"]["cycles"] if c["account"] == ACCOUNT]
    latest = cycles[-1]["by_kind"]  # the cycle after corrections: the latest materialization
    assert latest, f"the demo scenario left no mismatches on {ACCOUNT}: nothing to show"

    page.goto(f"/assets/{DIFF_ASSET}?view=events&partition={ACCOUNT}")
    page.get_by_text(re.compile(rf"Partition\s+{ACCOUNT}\s+materialized in run")).wait_for()
    page.get_by_text("reconciliationMismatchCount", exact=True).wait_for()
    shoot(page, "diff-materialization-metadata")

    # The metadata table: label and value on one row.
    rows = {}
    for tr in page.locator("tr").all():
        cells = [c.strip() for c in tr.locator("td").all_inner_texts()]
        if len(cells) >= 2 and cells[0]:
            rows[cells[0]] = cells[1]
    assert rows.get("reconciliationMismatchCount") == str(sum(latest.values())), rows
    assert rows.get("reconciliationMissingInDb") == str(latest.get("missing_in_db", 0)), rows
    assert rows.get("reconciliationMissingFromExchange") == str(latest.get("missing_from_exchange", 0)), rows
    for kind, count in latest.items():
        assert rows.get(f"kind/{kind}") == str(count), (kind, rows)

    # The `mismatches` markdown metadata: one table row per mismatch, its kind first.
    page.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("notional_usd").wait_for()
    table = dialog.locator("table")
    kinds = [k.strip() for k in table.locator("tbody tr td:first-child").all_inner_texts()]
    assert len(kinds) == sum(latest.values()), kinds
    assert {k: kinds.count(k) for k in set(kinds)} == latest
    assert "missing_in_db" in kinds and "ghost_slice" in kinds
    shoot(page, "diff-materialization")


def test_summary_plots_each_account_and_shows_who_is_paused(page, demo_ui, shoot):
    """reconciliation_summary: one series per account (`<account>/<number>`, so the accounts
    are never interleaved into one line) plotted on its Overview, and the profiles' trading gate
    where the on-call looks first."""
    accounts = sorted({c["account"] for c in demo_ui["summary"]["cycles"]})
    assert len(accounts) >= 2, accounts
    page.goto("/assets/reconciliation_summary?view=events")
    page.get_by_text("paused_profiles", exact=True).wait_for()
    rows = {}
    for tr in page.locator("tr").all():
        cells = [c.strip() for c in tr.locator("td").all_inner_texts()]
        if len(cells) >= 2 and cells[0]:
            rows[cells[0]] = cells[1]
    health = demo_ui["summary"]["health"]
    for account in health["accounts"]:
        name = account["account"]
        assert rows.get(f"{name}/mismatches") == str(account["mismatchCount"]), rows
        assert f"{name}/notional_at_risk_usd" in rows
    shoot(page, "summary-events", full_page=True)

    paused = [p for p in health["profiles"] if p["tradingState"] == "paused"]
    assert paused, "the demo's defaults pause its profiles: nothing to show"
    assert rows.get("paused_profiles") == str(len(paused))
    # The profiles table is shown inline in the materialization's metadata.
    profiles = page.locator("tr", has=page.get_by_text("profiles", exact=True)).last
    profiles.get_by_text("trading state").first.wait_for()
    table = profiles.inner_text()
    for p in paused:
        assert p["profileId"] in table
    assert "paused" in table and "parity_watchdog" in table
    profiles.scroll_into_view_if_needed()
    shoot(page, "summary-profiles")
    # The Overview's metadata plots: one plot per key, so one line per account.
    page.goto("/assets/reconciliation_summary?view=overview")
    page.get_by_text("Plots", exact=True).click()
    for account in accounts:
        for number in ("mismatches", "notional_at_risk_usd"):
            page.get_by_text(f"{account}/{number}", exact=True).first.wait_for()
    assert page.locator("canvas, svg").count() >= 2 * len(accounts)
    shoot(page, "summary-plots", full_page=True)


def test_no_secret_on_the_pages_an_operator_opens(page, demo_ui, shoot):
    """The resources the code location is configured with (EnvVar) show the variables' names,
    never their values (the exchange keys and secrets here); nor do the runs and assets pages."""
    secrets = demo_ui["secrets"]
    assert secrets
    seen = []
    for path, wait_for in (
            ("/locations/recon_assets/resources/exchange", "RECON_EXCHANGE_CREDENTIALS"),
            ("/locations/recon_assets/resources/database", "RECON_DATABASE_URL"),
            ("/runs", "reconciliation_cycle"),
            (f"/assets/{DIFF_ASSET}?view=events&partition={ACCOUNT}", "reconciliationMismatchCount"),
            ("/assets/reconciliation_summary?view=events", "paused_profiles")):
        page.goto(path)
        page.get_by_text(wait_for).first.wait_for()
        html = page.content()
        seen.append(path)
        leaked = [s for s in secrets if s in html]
        assert not leaked, (path, leaked)
    shoot(page, "resources-without-secrets")
    assert len(seen) == 5
