"""Two load-test runs side by side, as a Markdown table (loadtest/databases.sh).

Per stage, from locust's CSVs in each run's reports folder: the rate, the P50/P95 of all
requests and of the PSP's paid notifications (the callback); then the `tasks` queue
(tasks-queued.txt: its peak, and how fast it went from the peak to empty), the workers'
drain once the load stopped (drain.txt) and the audit's verdict (audit.txt).

    python loadtest/compare.py reports/databases/sqlite reports/databases/postgresql
"""

import csv
import sys
from pathlib import Path

STAGES = ["ramp-10", "ramp-50", "ramp-100", "ramp-200", "throughput", "retry"]
CALLBACK = "PSP paid notification"


def row(folder: Path, stage: str, name: str) -> dict | None:
    path = folder / f"{stage}_stats.csv"
    if not path.exists():
        return None
    with path.open() as f:
        return next((r for r in csv.DictReader(f) if r["Name"] == name), None)


def figure(stats: dict | None, rate: bool = False) -> str:
    if not stats or stats["Request Count"] == "0":
        return "-"
    latency = f"{stats['50%']} / {stats['95%']} ms"
    return f"{float(stats['Requests/s']):,.1f} req/s, {latency}" if rate else latency


def last_line(path: Path, containing: str = "") -> str:
    """The file's last line that holds `containing`, or "-"."""
    if not path.exists():
        return "-"
    lines = [line for line in path.read_text().splitlines() if containing in line]
    return lines[-1].strip() if lines else "-"


def backlog(folder: Path) -> str:
    """The queue's peak during the run, and its net fall from the peak to empty (while
    the load went on: the workers' rate minus the arrivals')."""
    path = folder / "tasks-queued.txt"
    if not path.exists():
        return "-"
    # A sample whose redis-cli failed (the host busy or gone) has no count: skipped.
    fields = [line.split() for line in path.read_text().splitlines()]
    samples = [(int(f[0]), int(f[1])) for f in fields if len(f) == 2 and f[1].isdigit()]
    if not samples:
        return "-"
    start = samples[0][0]
    peak_at, peak = max(samples, key=lambda sample: sample[1])
    if peak == 0:
        return "never above 0 (sampled every 2 s)"
    empty = next((t for t, n in samples if t > peak_at and n == 0), None)
    said = f"peak {peak:,} at {peak_at - start} s"
    if empty is None:
        return f"{said}, {samples[-1][1]:,} left {samples[-1][0] - start} s in"
    return f"{said}, empty {empty - peak_at} s later (net {peak / (empty - peak_at):,.0f} jobs/s)"


def main(folders: list[Path]) -> None:
    names = " | ".join(folder.name for folder in folders)
    print(f"| figure | {names} |")
    print("|---" * (len(folders) + 1) + "|")
    for stage in STAGES:
        cells = [figure(row(folder, stage, "Aggregated"), rate=True) for folder in folders]
        print(f"| {stage}: all requests, P50 / P95 | {' | '.join(cells)} |")
        cells = [figure(row(folder, stage, CALLBACK)) for folder in folders]
        print(f"| {stage}: PSP callback P50 / P95 | {' | '.join(cells)} |")
    cells = [backlog(folder) for folder in folders]
    print(f"| `tasks` queued during the run | {' | '.join(cells)} |")
    cells = [last_line(folder / "drain.txt").split(": ", 1)[-1] for folder in folders]
    print(f"| workers' drain once the load stopped | {' | '.join(cells)} |")
    cells = [last_line(folder / "audit.txt", "audit:") for folder in folders]
    print(f"| audit | {' | '.join(cells)} |")


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
