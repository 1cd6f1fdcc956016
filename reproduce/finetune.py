"""`make reproduce-finetune`: fine-tune the backbones of `make reproduce` on re-ID and attributes.

For each backbone `make reproduce` exported (CLASP, DINO only, random weights:
`EXPORTS`, default reproduce/out/exports) and each task (re-ID on the
synthetic world in the Market-1501 layout, attributes in the PA-100K layout,
both written by `clasp synth --layout` with a seed no pre-training world uses),
it runs `clasp finetune` twice: the whole network (fine-tuned, lr 1e-3) and the
head only (`--freeze-backbone`, lr 1e-2: the frozen probe of the same recipe),
same steps, same data order. Writes OUT/results.md, OUT/results.json and
OUT/results.png (a bar chart of the table; `--plot-format svg` for SVG) (default
reproduce/out/finetune) and keeps each run folder under OUT/runs/.

The 12 runs go FT_JOBS at a time (default: one per available core), each with
its share of the cores as torch threads: a tiny model gains little from a second
thread, and two threads of one run on two shared cores mostly wait for each
other, while two one-thread runs keep both cores busy.

Environment: EXPORTS, FT_STEPS (default 60 per run), FT_IDENTITIES (default 60),
FT_PRECISION (default auto), FT_JOBS. The time measured: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = {"clasp": "CLASP", "dino-only": "DINO only", "random": "random weights"}
# 16 images a step for both tasks (the published recipes use 64 on a GPU).
TASKS = {"reid": ("market1501", ["--ids-per-batch", "4", "--images-per-id", "4", "--rerank"]),
         "attributes": ("pa100k", ["--batch-size", "16", "--prompt", "attribute"])}
# A short schedule: a higher rate than the recipes' 3.5e-4, and a linear-probe rate for the head alone.
MODES = {"fine-tuned": ["--lr", "1e-3"], "frozen": ["--freeze-backbone", "--lr", "1e-2"]}


def clasp(log: Path, *args: str, threads: int | None = None) -> float:
    """Run `clasp ARGS` with its output in `log` (and `threads` torch threads); the seconds it took.

    A failure ends the script."""
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "-m", "clasp.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        sys.exit(f"error: clasp {args[0]} failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - start


def write_data(out: Path, identities: int) -> dict[str, Path]:
    data = {}
    for layout in ("market1501", "pa100k"):
        folder = out / "data" / layout
        if not folder.is_dir():
            clasp(out / "logs" / f"synth-{layout}.log", "synth", "--layout", layout, "--out", str(folder),
                  "--identities", str(identities), "--images-per-id", "8", "--cameras", "3", "--seed", "7")
        data[layout] = folder
    return data


def run_one(exports: Path, out: Path, data: dict[str, Path], steps: int, precision: str, threads: int,
            method: str, task: str, mode: str) -> dict:
    """One fine-tuning run; its results.json with the run's wall time added."""
    layout, extra = TASKS[task]
    run = out / "runs" / f"{method}-{task}-{mode}"
    seconds = clasp(out / "logs" / f"{method}-{task}-{mode}.log", "finetune", task,
                    "--backbone", str(exports / method), "--data", str(data[layout]), "--out", str(run),
                    "--steps", str(steps), "--precision", precision, "--force", *extra, *MODES[mode], threads=threads)
    row = json.loads((run / "results.json").read_text(encoding="utf-8"))
    row["seconds"]["total"] = seconds
    row["hardware"] = json.loads((run / "config.json").read_text(encoding="utf-8")).get("hardware", {})
    print(f"{method} {task} {mode}: {seconds:.0f} s", flush=True)
    return row


def run_all(exports: Path, out: Path, data: dict[str, Path], steps: int, precision: str, jobs: int) -> dict:
    """Every (backbone, task, mode) run, `jobs` at a time; results[method][task][mode]."""
    from clasp.hardware import available_cores

    threads = max(1, available_cores() // jobs)
    keys = [(m, t, mode) for m in METHODS for t in TASKS for mode in MODES]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {key: pool.submit(run_one, exports, out, data, steps, precision, threads, *key) for key in keys}
        try:
            rows = {key: future.result() for key, future in futures.items()}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    results: dict = {}
    for (method, task, mode), row in rows.items():
        results.setdefault(method, {}).setdefault(task, {})[mode] = row
    return results


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def machine_line(results: dict, jobs: int, load: tuple[list[float], list[float]]) -> str:
    """Where the time was measured: precision and CPU (from a run's config), cores, runs at a time, load."""
    from clasp.hardware import available_cores

    hardware = next(iter(results.values()))["reid"]["fine-tuned"].get("hardware", {})
    return (f"Precision {hardware.get('precision', '?')} ({hardware.get('capability', 'CPU capability unknown')}); "
            f"{available_cores()} cores, {jobs} runs at a time; load average {load[0][0]:.1f} at the start, "
            f"{load[1][0]:.1f} at the end.")


def table(results: dict, steps: int, seconds: float, machine: str = "") -> str:
    lines = ["# Fine-tuning on the synthetic world", "",
             f"{steps} steps per run; frozen = the same recipe with `--freeze-backbone` (head only). "
             f"Total {seconds / 60:.1f} min. Metrics in %.", *([machine] if machine else []), "",
             "| backbone | re-ID mAP (fine-tuned / frozen) | rank-1 | mAP re-ranked | attributes mA | F1 |",
             "|---|---|---|---|---|---|"]
    for method, title in METHODS.items():
        r, a = results[method]["reid"], results[method]["attributes"]
        lines.append(f"| {title} | {pct(r['fine-tuned']['map'])} / {pct(r['frozen']['map'])} "
                     f"| {pct(r['fine-tuned']['rank1'])} / {pct(r['frozen']['rank1'])} "
                     f"| {pct(r['fine-tuned'].get('map_rerank'))} / {pct(r['frozen'].get('map_rerank'))} "
                     f"| {pct(a['fine-tuned']['ma'])} / {pct(a['frozen']['ma'])} "
                     f"| {pct(a['fine-tuned']['f1'])} / {pct(a['frozen']['f1'])} |")
    return "\n".join(lines) + "\n"


SCORES = {"re-ID mAP": ("reid", "map"), "re-ID rank-1": ("reid", "rank1"), "attribute mA": ("attributes", "ma"),
          "attribute F1": ("attributes", "f1")}


def results_figure(results: dict, steps: int):
    """One panel per score, one group per backbone, a bar per mode (fine-tuned / frozen), in percent."""
    from clasp.evaluation.plots import bar_panels, is_number

    def score(method: str, task: str, mode: str, key: str) -> float:
        value = results[method][task][mode].get(key)
        return 100 * value if is_number(value) else float("nan")

    panels = {label: {title: {mode: score(method, task, mode, key) for mode in MODES}
                      for method, title in METHODS.items()} for label, (task, key) in SCORES.items()}
    return bar_panels(panels, f"Fine-tuning on the synthetic world, {steps} steps a run", "score (%)",
                      size=(11.0, 4.2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "finetune")
    parser.add_argument("--plot-format", default="png", help="format of the chart of the results: png or svg")
    args = parser.parse_args()
    from clasp.evaluation.plots import check_plot_format, save

    try:
        check_plot_format(args.plot_format)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exports = Path(os.environ.get("EXPORTS", HERE / "out" / "exports"))
    missing = [m for m in METHODS if not (exports / m / "config.json").is_file()]
    if missing:
        sys.exit(f"error: {exports}: no export of {', '.join(missing)}; run `make reproduce` first")
    from clasp.hardware import DEFAULT_PRECISION, available_cores

    steps, identities = int(os.environ.get("FT_STEPS", 60)), int(os.environ.get("FT_IDENTITIES", 60))
    jobs = max(1, int(os.environ.get("FT_JOBS", available_cores())))
    start, load_start = time.perf_counter(), list(os.getloadavg())
    data = write_data(args.out, identities)
    results = run_all(exports, args.out, data, steps, os.environ.get("FT_PRECISION", DEFAULT_PRECISION), jobs)
    seconds, load = time.perf_counter() - start, (load_start, list(os.getloadavg()))
    (args.out / "results.json").write_text(json.dumps({"steps": steps, "identities": identities, "jobs": jobs,
                                                       "seconds": seconds, "load_average": load, "results": results},
                                                      indent=2) + "\n", encoding="utf-8")
    chart = save(results_figure(results, steps), args.out / "results", args.plot_format)
    text = table(results, steps, seconds, machine_line(results, jobs, load)) + f"\n![Scores per backbone]({chart.name})\n"
    (args.out / "results.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
