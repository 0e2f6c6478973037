"""The run report: built from constructed run files, checked as files and in headless Chromium.

The browser check drives Chromium through the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (JSON messages ending in NUL on file descriptors 3 and 4: no
port, no websocket, standard library only). It records what DevTools would show as errors
(uncaught exceptions, console errors, log entries such as CSP violations or failed loads),
every network request the page makes, and evaluates a snippet in the page that awaits
``img.decode()`` for each plot and measures its rendered box. A control page with a broken
image and an external resource shows the harness does see such failures.

Chromium comes from Debian: ``apt-get update && apt-get install -y chromium``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import random
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import artifacts, runs
from pipeline.artifacts import EvalMetrics
from pipeline.evaluation import compare, mechanism
from pipeline.evaluation.benchmarks import Benchmark
from pipeline.recipe import Recipe
from pipeline.report.run import PLOT_IDS, write_report

TEMPS = (0.7, 1.0, 1.3)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm, too small for Chromium
    "--remote-debugging-pipe",
)


def _rows(rng: random.Random, problems: int, p: float, entropy: tuple[float, float] | None) -> list[dict]:
    rows = []
    for i in range(problems):
        tokens = rng.randint(20, 200)
        row = {
            "task_id": f"HumanEval/{i}",
            "sample_index": 0,
            "completion": "    return 1\n",
            "completion_tokens": tokens,
            "finish_reason": "stop" if rng.random() < 0.95 else "length",
            "passed": rng.random() < p,
            "status": "passed",
            "detail": "",
        }
        if entropy:
            locks, scale = entropy
            row["entropies"] = [
                0.01 * rng.random() if rng.random() < locks else rng.expovariate(1 / scale) for _ in range(tokens)
            ]
        rows.append(row)
    return rows


def _make_run(run_dir: Path, *, entropies: bool = True, difficulty: bool = True) -> Path:
    """A finished run's files as the stages write them, with plausible numbers; metrics.json is
    computed from the sample rows by the eval stage's own comparison (``compare.benchmark_metrics``)."""
    rng = random.Random(7)
    recipe = Recipe(evaluation={"benchmarks": ["humaneval", "mbpp"], "temperatures": list(TEMPS)})
    benchmarks = {}
    for bench, problems, entropy_bench in (("humaneval", 40, True), ("mbpp", 30, False)):
        rows = {}
        for t in TEMPS:
            for model, p, ent in (
                ("base", 0.3 - 0.1 * (t - 0.7), (0.5, 1.0)),
                ("adapter", 0.3 + 0.1 * (t - 0.7), (0.75, 1.2)),
            ):
                sample_rows = _rows(rng, problems, p, ent if entropies and entropy_bench else None)
                path = run_dir / "eval" / bench / f"{model}-T{t}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r) + "\n" for r in sample_rows))
                rows[t, model] = sample_rows
        levels = ("easy", "hard") if difficulty and bench == "humaneval" else (None, None)
        tasks = [{"task_id": f"HumanEval/{i}", "difficulty": levels[2 * i // problems]} for i in range(problems)]
        spec = Benchmark(name=bench, problems=tasks, temperatures=list(TEMPS), n=1, limit=None)
        benchmarks[bench] = compare.benchmark_metrics(recipe, spec, rows)
    EvalMetrics(target="humaneval", adapter_serving="lora", benchmarks=benchmarks).save(
        run_dir / "eval" / "metrics.json"
    )
    if entropies:  # `ssd entropy`: both models at the same positions; the adapter sharpens the locks
        scored = []
        for i in range(30):
            base = [0.01 * rng.random() if rng.random() < 0.5 else rng.expovariate(1 / 1.2) for _ in range(40)]
            scored.append({"task_id": f"HumanEval/{i}", "base": base, "adapter": [b * 0.5 for b in base]})
        (run_dir / "eval" / "mechanism.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored))
        summary = {"target": "humaneval", "temperature": 0.7, "problems": 30, **mechanism.summarize(scored)}
        (run_dir / "eval" / "mechanism.json").write_text(json.dumps(summary))
    losses = [2.5 * math.exp(-i / 15) + 0.4 + 0.05 * rng.random() for i in range(60)]
    artifacts.Manifest(
        stage="train",
        key="k",
        params={},
        inputs={},
        outputs={},
        counts={"losses": losses},
        started_at="",
        wall_s=1.0,
        versions={},
    ).save(runs.manifest_path(run_dir, "train"))
    samples = [
        {"id": f"mbpp/{i}", "completion_token_ids": list(range(rng.randint(5, 256))), "finish_reason": "stop"}
        for i in range(64)
    ]
    samples.append({"id": "mbpp/cut", "completion_token_ids": list(range(256)), "finish_reason": "length"})
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (run_dir / "recipe.yaml").write_text("name: ssd\nsampling:\n  max_tokens: 256\ntraining:\n  logging_steps: 2\n")
    (run_dir / "promotion.json").write_text(
        json.dumps(
            {
                "promoted": True,
                "name": "ssd",
                "version": "v0003",
                "reasons": ["pass: humaneval pass@1 delta +0.0500 > min_delta 0"],
            }
        )
    )
    return run_dir


def test_report_files(tmp_path):
    run_dir = _make_run(tmp_path / "weekly-2026-W48")
    md_path, html_path = write_report(run_dir)
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    md = md_path.read_text()
    assert md.startswith("# SSD run report: weekly-2026-W48")
    assert "PROMOTED as ssd v0003" in md and "pass: humaneval pass@1 delta +0.0500" in md
    for plot in PLOT_IDS:
        assert f"](report/plot-{plot}.svg)" in md
        svg = (run_dir / "report" / f"plot-{plot}.svg").read_text()
        assert "<svg" in svg and 'xlink:href="http' not in svg
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    he = metrics["benchmarks"]["humaneval"]
    assert f"| humaneval (target) | {he['base_best']['pass@1']:.4f} (T={he['base_best']['temperature']:g}) |" in md
    assert "| humaneval | easy |" in md and "60 logged steps" in md and "1 cut at max_tokens" in md
    assert "| 0.7 | base |" in md and "locks (< 0.1)" in md  # entropy summary per T
    same = md.split("## Locks and forks at the same positions")[1].split("##")[0]
    mech = json.loads((run_dir / "eval" / "mechanism.json").read_text())["classes"]
    assert "30 base samples of humaneval at T_eval 0.7" in same
    assert f"| lock | {mech['lock']['positions']} |" in same and "| 100.0% |" in same  # every position sharper
    assert mech["fork"]["change"] < 0 and mech["fork"]["change_ci"][1] < 0
    # the statistics: which problems decided, the test, the sizing, and a guard too small for its margin
    stats = md.split("## Statistics")[1].split("##")[0]
    assert "humaneval (target): T_eval chosen per model on the selection part (12 problems)" in stats
    assert "on the confirmation part (28 problems)" in stats and "Exact paired test:" in stats
    assert "Smallest change detected with 80% power" in stats and "Finish rate change at the adapter's T=" in stats
    assert "mbpp (guard)" in stats and "WARNING: this guard cannot detect its own threshold" in stats
    assert f"| {he['delta']['p_value']:.4f} | {he['delta']['problems']} |" in md
    page = html_path.read_text()
    assert page.count('class="plot"') == len(PLOT_IDS) and "not recorded" not in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch


def test_report_says_not_recorded(tmp_path):
    run_dir = _make_run(tmp_path / "older-run", entropies=False, difficulty=False)
    (run_dir / "manifests" / "train.json").unlink()
    _, html_path = write_report(run_dir)
    md = (run_dir / "report.md").read_text()
    assert "*not recorded: no eval/humaneval/<base|adapter>-T<temp>.jsonl rows carry entropies" in md
    assert "*not recorded: no benchmark in eval/metrics.json has per_difficulty" in md
    assert "*not recorded: manifests/train.json has no counts.losses" in md
    page = html_path.read_text()
    assert page.count('class="plot"') == 3 and page.count('class="plot-missing"') == 4
    assert not (run_dir / "report" / "plot-entropy.svg").exists()
    assert "*not measured: `ssd entropy RUN_DIR` scores the base's samples with both models*" in md


def test_report_of_a_run_that_stopped_before_eval(tmp_path):
    run_dir = _make_run(tmp_path / "partial")
    shutil.rmtree(run_dir / "eval")
    (run_dir / "promotion.json").unlink()
    md_path, html_path = write_report(run_dir)
    md = md_path.read_text()
    assert md.count("*not recorded: eval/metrics.json is missing") == 4
    assert "not recorded: promotion.json is missing" in md
    page = html_path.read_text()
    assert page.count('class="plot"') == 2 and 'id="plot-loss"' in page and 'id="plot-lengths"' in page


def test_bad_metrics_name_the_file(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    del metrics["benchmarks"]["mbpp"]["adapter_best"]
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match=r"eval/metrics.json: field benchmarks.mbpp.adapter_best.*rerun the stage"):
        write_report(run_dir)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        write_report(tmp_path / "missing")


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path, log_path: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # copies numbered >= 5, so placing them on 3 and 4 in the child cannot overwrite each other
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 5)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 5)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=wire,
            close_fds=False,
        )
        for fd in (to_chrome_r, from_chrome_w, child_in, child_out):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=self.session)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_chrome], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=self.session)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> object:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def errors(self, page_url: str) -> list[str]:
        """What DevTools would flag on the page, plus any request beyond the page and its data: URIs."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')[:120]}")
            elif (
                method == "Network.requestWillBeSent"
                and params["request"]["url"] != page_url
                and not params["request"]["url"].startswith("data:")
            ):
                found.append(f"request: {params['request']['url'][:80]}")
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')}")
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass  # it may exit before answering
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._log.close()


# Awaits every plot image's decode and measures what is on screen, in the page itself.
PLOTS_SCRIPT = """
(async () => {
  const figures = [...document.querySelectorAll('figure.plot')];
  const plots = [];
  for (const figure of figures) {
    const img = figure.querySelector('img.plot-image');
    let decoded = false;
    try { await img.decode(); decoded = true; } catch (e) { decoded = false; }
    const box = img.getBoundingClientRect();
    const visible = getComputedStyle(img).visibility === 'visible' && getComputedStyle(figure).display !== 'none';
    plots.push({id: figure.id, decoded, naturalWidth: img.naturalWidth, width: box.width, height: box.height, visible});
  }
  return {plots, missing: [...document.querySelectorAll('figure.plot-missing')].map(f => f.id),
          resources: performance.getEntriesByType('resource').map(r => r.name)};
})()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = os.environ.get("SSD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(
            "chromium not found: install it with `apt-get update && apt-get install -y chromium` (or set SSD_CHROMIUM)"
        )
    root = tmp_path_factory.mktemp("chromium")
    chromium = Chromium(binary, root / "profile", root / "chromium.log")
    yield chromium
    chromium.close()


def test_html_report_renders_in_chromium(tmp_path, browser):
    run_dir = _make_run(tmp_path / "run")
    _, html_path = write_report(run_dir)
    url = html_path.resolve().as_uri()
    browser.open(url)
    page = browser.evaluate(PLOTS_SCRIPT)
    assert browser.errors(url) == []
    assert page["resources"] == []
    assert sorted(p["id"] for p in page["plots"]) == sorted(f"plot-{p}" for p in PLOT_IDS)
    for plot in page["plots"]:
        assert plot["decoded"] and plot["naturalWidth"] > 100, plot
        assert plot["width"] > 100 and plot["height"] > 50 and plot["visible"], plot
    assert page["missing"] == []


def test_html_report_with_missing_data_renders(tmp_path, browser):
    run_dir = _make_run(tmp_path / "run", entropies=False)
    _, html_path = write_report(run_dir)
    url = html_path.resolve().as_uri()
    browser.open(url)
    page = browser.evaluate(PLOTS_SCRIPT)
    assert browser.errors(url) == []
    assert len(page["plots"]) == len(PLOT_IDS) - 2 and all(p["decoded"] for p in page["plots"])
    assert page["missing"] == ["plot-entropy", "plot-mechanism"]
    assert "not recorded" in browser.evaluate("document.getElementById('plot-entropy').innerText")


def test_harness_sees_broken_images_and_external_resources(tmp_path, browser):
    """The control: the checks above would fail on a page that is not self-contained or not decodable."""
    run_dir = _make_run(tmp_path / "run")
    _, html_path = write_report(run_dir)
    not_svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'><g></svg>").decode()  # malformed XML
    page = re.sub(
        r'src="data:image/svg\+xml;base64,[^"]*"',
        f'src="data:image/svg+xml;base64,{not_svg}"',
        html_path.read_text(),
        count=1,
    )
    broken = page.replace("</body>", '<img src="https://example.invalid/x.png"></body>')
    control = tmp_path / "control.html"
    control.write_text(broken)
    url = control.resolve().as_uri()
    browser.open(url)
    result = browser.evaluate(PLOTS_SCRIPT)
    assert [p["decoded"] for p in result["plots"]].count(False) == 1
    errors = browser.errors(url)
    assert any("Content Security Policy" in e and "example.invalid" in e for e in errors), errors
