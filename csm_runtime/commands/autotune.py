"""`csm-runtime autotune`: sweep settings on this device and write `profiles/<slug>.yaml` + `.png`.

Usage (listed in cli.py):
    csm-runtime autotune --model csm-1b-random                 # full sweep on the GPU it finds
    csm-runtime autotune --model tiny-random --quick --device cpu --out profiles/
    csm-runtime autotune --model sesame/csm-1b --ttfa-target-ms 300 --batches 1,4,16 --json

Progress goes to stderr (a rich bar on a terminal, one line per candidate otherwise, which is what `deploy autotune`
streams over SSH); the result (paths, chosen settings, why, the delivery check) goes to stdout.

After the sweep the chosen setting is served by the real server (`csm-runtime serve --profile PATH`, a process
group of its own) and measured over HTTP (tuning/delivery.py): what it delivers becomes the profile's figures
(`chosen.figures`), the sweep's beside them. Noise never fails a run: rounds that disagree, and a delivery that
differs from the prediction by more than `--check-tolerance`, are measured again. Only a setting that does not serve
(the server does not start, errors, sends no audio or wrong output) fails: exit 3, one line, the sweep kept in
`<slug>.rejected.yaml` and `<slug>.yaml` not written. `--progress-jsonl PATH` appends each result as it comes
(tuning/progress_log.py). SIGTERM, SIGINT or SIGHUP ends the server's process group and exits 128 + the signal.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from csm_runtime.settings import load_settings
from csm_runtime.tuning.identity import detect_device
from csm_runtime.tuning.plan import Plan, default_plan

log = logging.getLogger("csm_runtime.autotune")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser(parser=None):
    """The `autotune` options (argparse); cli.py registers this as its `autotune` subcommand."""
    p = parser or argparse.ArgumentParser(prog="csm-runtime autotune", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="tiny-random | csm-1b-random | sesame/csm-1b | a local path (default: settings)")
    p.add_argument("--quick", action="store_true", help="compile off vs default, batch 1-4, few frames")
    p.add_argument("--out", default=None, help="profiles directory (default: settings.profiles_dir)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--hf-token-file", help="file holding the Hub token for a gated checkpoint (default: HF_TOKEN)")
    p.add_argument("--ttfa-target-ms", type=float, help="time-to-first-audio target of the rule (default 500)")
    p.add_argument("--rtf-max", type=float, help="real-time headroom of the rule (default 0.8)")
    p.add_argument("--batches", help="comma-separated batch sizes to try (default 1,2,4,8,16,32; quick 1,2,4)")
    p.add_argument("--compile", dest="compile_modes", help="comma-separated compile modes to try")
    p.add_argument("--dtypes", help="comma-separated dtypes to try (float32, bfloat16, float16)")
    p.add_argument("--timed-frames", type=int, help="timed decode steps per candidate")
    p.add_argument("--warmup-frames", type=int, help="untimed decode steps per candidate after warm-up")
    p.add_argument("--stop-rtf", type=float, help="stop growing a setting's batch once RTF passes this (default 1)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds per candidate (default 3; full CPU 5)")
    p.add_argument(
        "--spread-limit", type=float, help="rounds further apart than this are measured again (default 0.5 = 50%%)"
    )
    p.add_argument(
        "--quantize", help="comma-separated weight modes to try: off, int8 (default off; full GPU adds int8)"
    )
    p.add_argument("--no-check", action="store_true", help="skip serving the choice over HTTP (the delivery check)")
    p.add_argument(
        "--check-tolerance", type=float, help="predicted-vs-delivered difference that is measured again (default 0.25)"
    )
    p.add_argument("--check-rounds", type=int, help="delivery check rounds per attempt (default 5)")
    p.add_argument("--check-attempts", type=int, help="delivery attempts at most while figures disagree (default 3)")
    p.add_argument("--check-budget-s", type=float, help="no new delivery attempt after this long (default 120)")
    p.add_argument("--check-frames", type=int, help="audio frames of the delivery check's probe request (default 24)")
    p.add_argument("--cpu-threads", type=int, help="torch threads on CPU (0 = torch's default)")
    p.add_argument("--config", help="YAML file of settings (applied before env and options)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--progress-jsonl", metavar="PATH", help="append each result as a JSON line as soon as it exists")
    return p


def plan_from_args(args, device_kind: str) -> Plan:
    changes = {}
    if args.batches:
        changes["batches"] = _ints(args.batches)
    if args.compile_modes:
        changes["compile_modes"] = _words(args.compile_modes)
    if args.dtypes:
        changes["dtypes"] = _words(args.dtypes)
    if getattr(args, "quantize", None):
        changes["quantize"] = _words(args.quantize)
        bad = [q for q in changes["quantize"] if q not in ("off", "int8")]
        if bad:
            raise ValueError(f"--quantize takes off and int8, got {', '.join(bad)}")
    if getattr(args, "no_check", False):
        changes["check"] = False
    names = (
        "timed_frames",
        "warmup_frames",
        "stop_rtf",
        "rtf_max",
        "ttfa_target_ms",
        "rounds",
        "spread_limit",
        "check_tolerance",
        "check_rounds",
        "check_frames",
        "check_attempts",
        "check_budget_s",
    )
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    for name in ("rounds", "check_rounds", "check_frames", "check_attempts"):
        if changes.get(name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if changes.get("check_tolerance", 1) <= 0:
        raise ValueError("--check-tolerance must be > 0")
    if changes.get("spread_limit", 1) <= 0 or changes.get("check_budget_s", 1) < 0:
        raise ValueError("--spread-limit must be > 0 and --check-budget-s >= 0")
    if changes.get("timed_frames", 1) < 1:
        raise ValueError("--timed-frames must be >= 1")
    return default_plan(device_kind, quick=args.quick, **changes)


class _Reporter:
    """A rich progress bar on a terminal; plain lines (flushed) when stderr is a pipe, e.g. over SSH."""

    def __init__(self, plog=None):
        self.tty = sys.stderr.isatty()
        self.progress = None
        self.task = None
        self.plog = plog or (lambda *_a, **_k: None)

    def __enter__(self):
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]autotune[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def round(self, cid, n, extra, result) -> None:
        """One sweep round, as soon as it is measured: into the progress file, and a line on a pipe (a row's line
        comes once all its rounds are in, minutes later on a loaded CPU)."""
        ms = statistics.fmean(result.step_ms)
        self.plog("round", candidate=cid, round=n, extra=extra, ms_per_frame=round(ms, 3), rtf=round(ms / 80, 4),
                  ttfa_ms={k: round(v, 2) for k, v in result.ttfa_ms.items()})  # fmt: skip
        if self.progress is None:
            again = " (measured again: the rounds disagreed)" if extra else ""
            sys.stderr.write(f"  round {n} {cid}: {ms:.1f} ms/frame{again}\n")
            sys.stderr.flush()

    def __call__(self, phase, done, total, cid, row) -> None:
        if phase == "done":
            self.plog("row", done=done, total=total, candidate=row.model_dump(mode="json"))
        if self.progress is not None:
            if self.task is None:
                self.task = self.progress.add_task("", total=total)
            self.progress.update(self.task, completed=done, description=cid)
            if phase == "done":
                self.progress.console.print(f"  {describe_row(row)}", highlight=False)
        elif phase == "done":
            sys.stderr.write(f"[{done}/{total}] {describe_row(row)}\n")
            sys.stderr.flush()


def describe_row(row) -> str:
    if row.measurement is None:
        return f"{row.id}: {row.status} ({row.reason})"
    m = row.measurement
    ttfa = ", ".join(f"{k}f {v:.0f}" for k, v in sorted(m.ttfa_ms.items()))
    return (
        f"{row.id}: RTF {m.rtf:.2f}, {m.ms_per_frame_p50:.1f} ms/frame p50 ({m.ms_per_frame_p95:.1f} p95), "
        f"TTFA ms {ttfa}, compile {m.compile_s:.1f} s, mem {m.peak_memory_mb or 0:.0f} MiB"
    )


def autotune(args, plog=None) -> dict:
    """Run the sweep the options describe; returns what is printed (paths, chosen settings, why, figures).
    `plog` (progress_log.ProgressLog) hears of every result as it comes."""
    plog = plog or (lambda *_a, **_k: None)
    base = load_settings(
        args.config,
        model=args.model,
        device=args.device,
        cpu_threads=args.cpu_threads,
        hf_token_file=getattr(args, "hf_token_file", None),
    )
    facts = detect_device(base.device)
    plan = plan_from_args(args, facts.kind)
    # a checkpoint the Hub will not hand over is one line now, not a table of candidates that all failed
    from csm_runtime.engine.hub import check_access, read_hub_token

    check_access(base.model, base.revision, read_hub_token(base.hf_token_file))
    # Bad options are refused above, in a second; the sweep (torch, the engine), the profile (pydantic) and the plot
    # (matplotlib) load only once there is something to run.
    from csm_runtime.engine.loader import GeneratorFactory
    from csm_runtime.tuning.build import build_profile, with_figures
    from csm_runtime.tuning.plot import plot_profile
    from csm_runtime.tuning.profile import dump_profile, profile_path
    from csm_runtime.tuning.sweep import run_sweep

    out_dir = Path(args.out or base.profiles_dir)
    yaml_path = profile_path(out_dir, facts.slug)
    png_path = yaml_path.with_suffix(".png")
    sys.stderr.write(
        f"autotune {base.model} on {facts.name} ({facts.slug}): {'quick' if plan.quick else 'full'} sweep, "
        f"batches {','.join(map(str, plan.batches))}, compile {','.join(plan.compile_modes)}\n"
    )
    plog("start", model=base.model, device=facts.slug, plan={k: v for k, v in plan.__dict__.items() if k != "prompt"})
    factory = GeneratorFactory(base)
    with _Reporter(plog) as reporter:
        result = run_sweep(base, plan, progress=reporter, factory=factory, on_round=reporter.round)
    profile = build_profile(result, plot=None if args.no_plot else png_path.name)
    c = profile.chosen
    plog("chosen", candidate=c.candidate, settings=c.settings.overrides(), realtime=c.realtime, why=c.why)
    if plan.check:
        factory.release()  # the server loads its own copy: one in memory at a time
        profile = with_figures(profile, _delivery(profile, plan, base, out_dir, yaml_path, plog))
    dump_profile(profile, yaml_path)
    if not args.no_plot:
        plot_profile(profile, png_path)
    return {
        "profile": str(yaml_path),
        "plot": None if args.no_plot else str(png_path),
        "slug": profile.slug,
        "chosen": profile.chosen.candidate,
        "settings": profile.chosen.settings.overrides(),
        "realtime": profile.chosen.realtime,
        "why": profile.chosen.why,
        "figures": profile.chosen.figures.model_dump(mode="json"),
        "duration_s": result.duration_s,
        "measured": sum(c.status == "measured" for c in profile.candidates),
        "skipped": sum(c.status == "skipped" for c in profile.candidates),
        "oom": sum(c.status == "oom" for c in profile.candidates),
        "failed": sum(c.status == "failed" for c in profile.candidates),
        "delivery": profile.delivery.model_dump() if profile.delivery else None,
        "load_avg": result.load_avg,
    }


def _delivery(profile, plan, base, out_dir: Path, yaml_path: Path, plog):
    """Serve the profile as `serve --profile PATH` would and measure it (tuning/delivery.py). A setting that does not
    serve raises ServeFailure after keeping the sweep in `<slug>.rejected.yaml`; noise only measures again."""
    from csm_runtime.tuning.delivery import Hooks, ServeFailure, check_delivery
    from csm_runtime.tuning.profile import dump_profile

    s = profile.chosen.settings
    sys.stderr.write(
        f"delivery check: serving {profile.chosen.candidate} (max_streams {s.max_streams}) over HTTP, "
        f"{plan.check_rounds} round(s) an attempt, {plan.check_attempts} attempt(s) at most\n"
    )

    def attempt(n, delivery, again):
        plog("delivery", attempt=n, again=again, delivery=delivery.model_dump(mode="json"))
        if again:
            sys.stderr.write(f"delivery check: attempt {n}: {again}; measuring again\n")

    hooks = Hooks(
        server=lambda pid, port: plog("server", pid=pid, port=port),
        round=lambda a, n, rtf, ttfa: plog("delivery_round", attempt=a, round=n, rtf=round(rtf, 4), ttfa_ms=round(ttfa, 2)),
        attempt=attempt,
    )  # fmt: skip
    pending = out_dir / f".{profile.slug}.checking.yaml"
    dump_profile(profile, pending)  # served as `serve --profile PATH` would
    try:
        delivery = check_delivery(profile, pending, base, plan, hooks=hooks)
    except ServeFailure as exc:
        rejected = dump_profile(profile, yaml_path.with_suffix(".rejected.yaml"))
        raise ServeFailure(
            f"the served setting {profile.chosen.candidate} does not serve: {exc}; wrote {rejected} (the sweep) for "
            f"inspection, {yaml_path} not written"
        ) from None
    finally:
        pending.unlink(missing_ok=True)
    sys.stderr.write(
        f"delivery check: delivered RTF {delivery.delivered_rtf:.3f} (predicted {delivery.predicted_rtf:.3f}), TTFA "
        f"{delivery.delivered_ttfa_ms:.0f} ms (predicted {delivery.predicted_ttfa_ms:.0f}), median of "
        f"{delivery.rounds} round(s) in {delivery.attempts} attempt(s): the profile's figures\n"
    )
    if not delivery.ok or delivery.unsettled:
        sys.stderr.write(
            f"note: {delivery.unsettled or delivery.reason}; the profile states what the server delivered\n"
        )
    return delivery


def main(argv: list[str] | None = None, args=None) -> int:
    if args is None:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("csm_runtime.download").setLevel(logging.INFO)  # a first run's download shows its progress
    from csm_runtime.tuning.choice import AutotuneError  # pydantic, via the profile schema: not for `--help`
    from csm_runtime.tuning.progress_log import ProgressLog
    from csm_runtime.tuning.server_process import ServeFailure, Stopped, stop_on_signals

    try:
        plog = ProgressLog(getattr(args, "progress_jsonl", None))
    except OSError as exc:
        print(f"Error: --progress-jsonl {args.progress_jsonl}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with plog, stop_on_signals():
        try:
            summary = autotune(args, plog)
        except Stopped as exc:
            plog("stopped", exit=128 + exc.signum, signal=str(exc))
            print(f"Error: stopped by {exc}; the delivery check's server, if one ran, was ended", file=sys.stderr)
            return 128 + exc.signum
        except (ServeFailure, ValueError, AutotuneError, OSError) as exc:
            # ValueError: SettingsError, ProfileError, ModelLoadError, HubAccessError
            code = 3 if isinstance(exc, ServeFailure) else 2
            plog("failed", exit=code, error=str(exc))
            print(f"Error: {exc}", file=sys.stderr)
            return code
        plog("done", summary=summary)
    if args.json:
        print(json.dumps(summary))
    else:
        s, f = summary["settings"], summary["figures"]
        print(f"wrote {summary['profile']}" + (f" and {summary['plot']}" if summary["plot"] else ""))
        print(
            f"chosen {summary['chosen']}: max_streams {s['max_streams']}, dtype {s['dtype']}, compile {s['compile']}, "
            f"cuda_graphs {str(s['cuda_graphs']).lower()}, first_chunk_frames {s['first_chunk_frames']}"
        )
        print(f"why: {summary['why']}")
        print(
            f"figures ({'delivered over HTTP' if f['source'] == 'delivered' else 'the sweep, not served'}, "
            f"{f['streams']} stream(s)): RTF {f['rtf']:.3f} (predicted {f['predicted']['rtf']:.3f}), TTFA "
            f"{f['ttfa_ms']:.0f} ms (predicted {f['predicted']['ttfa_ms']:.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
