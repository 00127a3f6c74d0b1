"""The GPU check's summary: every part's record merged into OUT/results.json, and OUT/summary.md with one table of
the parts in the order they ran (status, seconds used against the limit), every check, and the benchmark rows.

The seconds are the script's own clock around each part's process (WORK/runs.tsv: part, limit, seconds, exit
code), so a part killed by its limit still shows what it used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gpu_check_budget as budget
from gpu_check_bench import derived
from gpu_check_record import DRY

BENCH_PARTS = ("bench", "graphs", "compiled")


def read_runs(work: Path) -> list[dict]:
    runs = []
    path = work / "runs.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, limit, seconds, code, *note = line.split("\t")
        runs.append(
            {"part": name, "limit_s": int(limit), "seconds": float(seconds), "exit": code, "note": "".join(note)}
        )
    return runs


def part_status(run: dict, data: dict | None) -> str:
    """A part's status from its record and its process's exit code (124/137: its limit ended it)."""
    if run["exit"] == "skipped":
        return "skipped"
    if run["exit"] in ("124", "137"):
        return "timeout"
    if data is None:
        return "pass" if run["exit"] == "0" and run["part"] == "wheels" else "error"
    status = data.get("status", "error")
    if run["exit"] != "0" and status in ("running", "pass"):
        return "error"
    return "error" if status == "running" else status


def _tally(data: dict | None, run: dict) -> str:
    if data is None:
        return run["note"] or ("ended at its limit before its first record" if run["status"] == "timeout" else "")
    counts: dict[str, int] = {}
    for c in data.get("checks", []):
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def part_summary(work: Path, out: Path) -> int:
    """Merge, copy the profile and its plot next to it, write both files, print the table; 0 when all passed."""
    runs = read_runs(work)
    parts = {}
    for run in runs:
        path = work / f"{run['part']}.json"
        data = json.loads(path.read_text()) if path.exists() else None
        run["status"] = part_status(run, data)
        if data is not None:
            if run["status"] == "timeout" and data.get("status") != "timeout":
                detail = f"ended at its limit of {run['limit_s']} s"
                data["checks"].append({"name": "time limit", "status": "fail", "detail": detail})
            data["status"] = run["status"]
            parts[run["part"]] = data
        run["result"] = _tally(data, run)
    copied = []
    for path in sorted((work / "profiles").glob("*")) if (work / "profiles").is_dir() else []:
        if path.suffix in (".yaml", ".png") and not path.name.startswith("."):
            shutil.copy(path, out / path.name)
            copied.append(path.name)
    rows = [r for name in BENCH_PARTS for r in parts.get(name, {}).get("numbers", {}).get("rows", [])]
    limits = budget.limits(DRY)
    results = {
        "dry_run": DRY,
        "runs": runs,
        "parts": parts,
        "bench": {"rows": rows, **derived(rows)},
        "files": [*copied, *(p.name for p in out.glob("autotune_rows.jsonl"))],
        "limits_s": {**limits, **{r["part"]: r["limit_s"] for r in runs}},
    }
    results["worst_case_s"] = budget.worst_case_s(results["limits_s"])
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    text = render(results)
    (out / "summary.md").write_text(text)
    print(text)
    ok = all(r["status"] in ("pass", "skipped") for r in runs)
    return 0 if ok and len(runs) == len(budget.PARTS) else 1


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _num(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(runs: list[dict], limits: dict[str, int]) -> list[str]:
    """The parts in the order they ran: status, seconds used against the limit; the total against the budget."""
    lines = ["| part | status | seconds used | limit s | result |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']:.1f} | {r['limit_s']} | {_cell(r['result'])} |")
    used = sum(r["seconds"] for r in runs)
    overall = "pass" if all(r["status"] in ("pass", "skipped") for r in runs) else "fail"
    lines.append(
        f"| total | {overall} | {used:.1f} | {sum(r['limit_s'] for r in runs)} | "
        f"with the summary's {limits['summary']} s and each kill's grace, at most {budget.worst_case_s(limits)} s |"
    )
    return lines


def render(results: dict) -> str:
    parts, runs = results["parts"], results["runs"]
    env = parts.get("env", {}).get("numbers", {})
    versions = env.get("versions", {})
    head = [
        f"# GPU check{' (CPU dry run)' if DRY else ''}",
        "",
        f"Device: {env.get('gpu', 'cpu')}; torch {versions.get('torch', '?')} (CUDA {env.get('torch_cuda')}); "
        f"transformers {versions.get('transformers', '?')}; moshi {versions.get('moshi', '?')}; "
        f"python {versions.get('python', '?')}; load average {env.get('load_avg')}",
        "",
        *table(runs, results["limits_s"]),
        "",
    ]
    lines = []
    for name, data in parts.items():
        lines += [f"## {name}: {data.get('status')}", ""]
        lines += [f"- **{c['status']}** {_cell(c['name'])}: {_cell(c.get('detail', ''))}" for c in data["checks"]]
        lines.append("")
    bench = results["bench"]
    if bench["rows"]:
        lines += [
            "## Generator benchmark",
            "",
            "| impl | setting | batch | ms/frame | RTF | TTFA ms | codec ms | compile s | graphs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in bench["rows"]:
            lines.append(
                f"| {r.get('impl')} | {r.get('setting', '-')} | {r.get('batch', 1)} | {_num(r.get('ms_per_frame'))} | "
                f"{_num(r.get('rtf'), 3)} | {_num(r.get('ttfa_ms'))} | {_num(r.get('codec_ms'))} | "
                f"{_num(r.get('compile_s'))} | {r.get('graphs_captured', '-')} |"
            )
        if "hf_vs_ours_b1" in bench:
            lines += [
                "",
                f"transformers `generate` / ours (best at batch 1, {bench.get('best_b1')}): "
                f"{bench['hf_vs_ours_b1']}x; most streams each faster than real time: "
                f"{bench.get('max_realtime_batch')}",
            ]
        lines.append("")
    if results["files"]:
        lines += ["Files: " + ", ".join(results["files"]), ""]
    return "\n".join(head + lines)
