"""Drive the Dagster UI in headless Chromium (Debian's `chromium` and `chromium-driver`).

The browser tests and `make screenshots` use it: open a page, type run config into the
Launchpad, launch, read the run's logs, and read the asset lineage as drawn (nodes, the
group box each sits in, and the edges between them).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

INSTALL_HINT = "apt-get install chromium chromium-driver (Debian's Chromium and its WebDriver)"
#: Chromium on a closed network: no background connections, no first-run pages, no GPU.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
RUN_URL = re.compile(r"/runs/([0-9a-f-]{36})")


def browser_missing() -> str | None:
    """Why no browser test can run here (Chromium or its driver is not installed), or None."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    return f"{' and '.join(missing)} not found: {INSTALL_HINT}" if missing else None


@dataclass(frozen=True)
class Lineage:
    """The asset lineage as the UI draws it."""

    group_of: dict[str, str]  # asset node name -> the group box around it
    edges: set[tuple[str, str]]  # (upstream, downstream) node names


class DagsterUI:
    """One headless Chromium on a Dagster webserver."""

    def __init__(self, base_url: str, driver: webdriver.Chrome) -> None:
        self.base_url = base_url.rstrip("/")
        self.driver = driver

    @classmethod
    @contextmanager
    def open(cls, base_url: str, width: int = 1600, height: int = 1000) -> Iterator[DagsterUI]:
        options = Options()
        options.binary_location = shutil.which("chromium") or "chromium"
        profile = tempfile.mkdtemp(prefix="etl-sync-chromium-")
        for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
        try:
            yield cls(base_url, driver)
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)

    # ----- waiting and reading -----
    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
        """The first truthy value of `probe`, polled until `timeout`; fail naming `what` and the page."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = probe()
            except WebDriverException:  # the page re-rendered under us: look again
                value = None
            if value:
                return value
            time.sleep(0.3)
        shot = self.screenshot(Path(tempfile.mkdtemp(prefix="etl-sync-ui-")) / "timeout.png")
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what} on {self.driver.current_url} "
            f"(screenshot: {shot}); the page says: {self.text()[:1500]!r}"
        )

    def text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def wait_for_text(self, text: str, timeout: float = 60) -> None:
        self.wait(repr(text), lambda: text in self.text(), timeout)

    def go(self, path: str, until_text: str) -> None:
        self.driver.get(self.base_url + path)
        self.wait_for_text(until_text)

    def click_button(self, label: str) -> None:
        button = self.wait(f"the button {label!r}", lambda: self._buttons(label))[0]
        button.click()

    def _buttons(self, label: str) -> list:
        return [
            b for b in self.driver.find_elements(By.XPATH, f"//button[normalize-space()='{label}']") if b.is_displayed()
        ]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    # ----- the Launchpad and a run -----
    def open_launchpad(self, job: str, location: str = "etl_sync") -> None:
        self.go(f"/locations/{location}/jobs/{job}/playground", until_text="Launch Run")
        self.wait("the config editor", lambda: self.driver.find_elements(By.CSS_SELECTOR, ".CodeMirror"))

    def type_run_config(self, yaml: str) -> str:
        """Replace the Launchpad's config with `yaml`, typed as a person types it; returns what the editor holds."""
        editor = self.driver.find_element(By.CSS_SELECTOR, ".CodeMirror")
        editor.click()
        keys = ActionChains(self.driver).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL)
        keys.send_keys(Keys.DELETE).send_keys(yaml).perform()
        self.wait("the typed config in the editor", lambda: self.run_config() == yaml)
        return self.run_config()

    def run_config(self) -> str:
        """What the Launchpad's config editor holds."""
        return self.driver.execute_script("return document.querySelector('.CodeMirror').CodeMirror.getValue()")

    def press_launch_run(self) -> None:
        # The Launchpad takes typed config after a pause (it debounces the editor); a click before that is lost.
        time.sleep(1)
        self.click_button("Launch Run")

    def launch_run(self) -> str:
        """Click Launch Run and wait for the run's page; returns the run id."""
        self.press_launch_run()
        match = self.wait("the run page", lambda: RUN_URL.search(self.driver.current_url))
        return match.group(1)

    def wait_for_run_status(self, status: str, timeout: float = 180) -> None:
        """Wait until the run page's header shows `status` (Success, Failure, Canceled)."""
        self.wait(
            f"the run to show {status}",
            lambda: self.driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{status}']"),
            timeout,
        )

    def filter_run_logs(self, text: str) -> None:
        box = self.wait(
            "the run log filter", lambda: self.driver.find_elements(By.CSS_SELECTOR, "input[placeholder^='Filter']")
        )
        box[0].send_keys(text)

    # ----- the asset lineage -----
    def open_global_lineage(self) -> None:
        self.go("/asset-groups", until_text="Global asset lineage")
        self.wait("the lineage graph", lambda: self.driver.find_elements(By.CSS_SELECTOR, f"{_GRAPH} foreignObject"))
        self.wait(
            "the lineage's nodes to load their status",
            lambda: "Loading" not in self.driver.find_element(By.CSS_SELECTOR, _GRAPH).get_attribute("textContent"),
        )

    def expand_lineage_groups(self) -> None:
        """Open every collapsed group box, one click at a time (each click redraws the graph)."""
        for _ in range(20):
            collapsed = self.driver.find_elements(By.CSS_SELECTOR, f"{_GRAPH} foreignObject [aria-label=unfold_more]")
            if not collapsed:
                return
            collapsed[0].click()
            time.sleep(0.5)
        raise AssertionError("the lineage's groups did not open")

    def drawn_graph(self, timeout: float = 60) -> dict:
        """The lineage graph as drawn once it stopped changing (the same in two reads a second apart): each click on
        a group redraws it, and on a slow machine a read caught the edges of one layout beside the nodes of the
        next. `timeout` is a hang detector."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            drawn = self.driver.execute_script(_READ_GRAPH)
            if drawn == last:
                return drawn
            last = drawn
            time.sleep(1)
        raise AssertionError(f"the lineage graph was still changing after {timeout:.0f}s: {last}")

    def lineage(self) -> Lineage:
        """Nodes, their group boxes and the edges, read from the drawn graph (edges matched to node boxes)."""
        drawn = self.drawn_graph()
        nodes, groups = drawn["nodes"], drawn["groups"]

        def node_at(x: float, y: float, edge: str) -> str:
            for node in nodes:
                side = node["x"] + node["w"] if edge == "out" else node["x"]
                if abs(side - x) <= 12 and node["y"] <= y <= node["y"] + node["h"]:
                    return node["name"]
            raise AssertionError(f"an edge {edge} of ({x}, {y}) touches no node: {nodes}")

        edges = set()
        for path in drawn["edges"]:
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path)]
            edges.add((node_at(numbers[0], numbers[1], "out"), node_at(numbers[-2], numbers[-1], "in")))
        group_of = {}
        for node in nodes:
            around = [
                g["name"]
                for g in groups
                if g["x"] <= node["x"]
                and node["x"] + node["w"] <= g["x"] + g["w"]
                and g["y"] <= node["y"]
                and node["y"] + node["h"] <= g["y"] + g["h"]
            ]
            group_of[node["name"]] = around[0] if len(around) == 1 else ""
        return Lineage(group_of=group_of, edges=edges)


_GRAPH = "svg[class*=AssetGraphExplorer_svgContainer]"
_READ_GRAPH = f"""
const graph = document.querySelector("{_GRAPH}");
const box = (f) => ({{x: +f.getAttribute("x"), y: +f.getAttribute("y"),
                      w: +f.getAttribute("width"), h: +f.getAttribute("height")}});
const all = [...graph.querySelectorAll("foreignObject")];
const nodes = all.filter(f => f.querySelector("[class*=assetName] [data-tooltip]"))
  .map(f => ({{name: f.querySelector("[class*=assetName] [data-tooltip]").getAttribute("data-tooltip"), ...box(f)}}));
const groups = all.filter(f => !f.querySelector("[class*=assetName]") && f.textContent.trim())
  .map(f => ({{name: f.textContent.trim(), ...box(f)}}));
const edges = [...graph.querySelectorAll(":scope > path[marker-end]")].map(p => p.getAttribute("d"));
return {{nodes, groups, edges}};
"""
