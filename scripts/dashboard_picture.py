"""The Grafana dashboard as a picture, from real data: ``cdc-scorer demo`` runs with its live
workload while a real Prometheus (Debian's ``prometheus``) scrapes it every second; then each
panel of ``deploy/grafana/cdc-scorer.json`` is drawn where the dashboard places it, from its
own queries evaluated by that Prometheus (``query_range``). Drawn with matplotlib — there is no
Grafana here — so colours and fonts are not Grafana's; the panels, their queries and the data
are the dashboard's.

``python scripts/dashboard_picture.py [--seconds 90]`` writes ``docs/how-to/dashboard.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cdc_scorer.local.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "cdc-scorer.json"
OUT = ROOT / "docs" / "how-to" / "dashboard.png"


def _query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=30) as r:
        answer = json.load(r)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _label(series: dict[str, Any], legend: str) -> str:
    metric = series.get("metric", {})
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(metric.get(m.group(1), "")), legend)
    return text or ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"


def draw(prometheus: str, start: float, end: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(18, rows * 0.55))
    figure.suptitle(
        f"{dashboard['title']} — deploy/grafana/cdc-scorer.json over `make demo` "
        f"({end - start:.0f} s, Prometheus scraping every 1 s)",
        fontsize=12,
    )
    grid = figure.add_gridspec(rows, 24, hspace=2.2, wspace=1.2)
    for panel in panels:
        pos = panel["gridPos"]
        axes = figure.add_subplot(
            grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]]
        )
        axes.set_title(panel["title"], fontsize=9, loc="left")
        axes.tick_params(labelsize=7)
        drawn = 0
        last: list[str] = []
        for target in panel["targets"]:
            for series in _query_range(prometheus, target["expr"], start, end):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                points = [(t, v) for t, v in points if v == v]  # NaN: no data yet
                if not points:
                    continue
                label = _label(series, target.get("legendFormat", ""))
                if panel["type"] == "stat":
                    last.append(f"{label}: {points[-1][1]:.3g}")
                    continue
                axes.plot([t for t, _ in points], [v for _, v in points], label=label)
                drawn += 1
        if panel["type"] == "stat":
            axes.axis("off")
            axes.text(0.02, 0.5, "\n".join(last[:6]) or "no data", fontsize=10, va="center")
        elif drawn:
            axes.legend(fontsize=6, loc="upper left")
            axes.set_xlabel("s", fontsize=7)
        else:
            axes.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=9)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=80, bbox_inches="tight")
    print(f"wrote {OUT.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90.0)
    args = parser.parse_args()
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        print("prometheus is not installed (make system-packages)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="cdc-scorer-dashboard-"))
    demo = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "cdc-scorer"),
            "demo",
            "--seconds",
            str(args.seconds),
            "--no-wait",
            "--workdir",
            str(work / "demo"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    target = None
    for line in demo.stdout:
        found = re.search(r"http://(127\.0\.0\.1:\d+)/metrics", line)
        if found:
            target = found.group(1)
            break
    if target is None:
        demo.terminate()
        demo.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
        print("the demo did not print its metrics address", file=sys.stderr)
        return 1
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: cdc-scorer\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    start = time.time()
    try:
        for _line in demo.stdout:  # until the demo's workload ends (--no-wait: it exits)
            pass
        demo.wait(timeout=600)
        end = time.time()
        time.sleep(2)
        draw(f"http://127.0.0.1:{port}", start, end)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        if demo.poll() is None:
            demo.terminate()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
