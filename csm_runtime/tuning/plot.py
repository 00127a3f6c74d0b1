"""`profiles/<slug>.png`: RTF and TTFA against batch size, one line per setting (bars: fastest to slowest round), the
rule's limits, the choice and, when it ran, what the delivery check measured over HTTP.

Headless (matplotlib Agg), so it runs on a rented box with no display. Only measured rows are drawn; out-of-memory
and failed rows are marked with an x on the axis so the reader sees where a line stopped and why.
"""

from __future__ import annotations

from pathlib import Path

from csm_runtime.tuning.profile import Profile


def setting_label(dtype: str, compile_mode: str, cuda_graphs: bool, quantize: str = "off") -> str:
    weights = dtype if quantize == "off" else f"{dtype} + {quantize}"
    return f"{weights}, compile {compile_mode}{', CUDA graphs' if cuda_graphs else ''}"


def plot_profile(profile: Profile, path: str | Path) -> Path:
    # matplotlib loads only to draw, and its headless backend must be chosen before pyplot loads.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fc = min(profile.sweep.first_chunk_frames)
    fig, (ax_rtf, ax_ttfa) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    settings: dict[tuple, list] = {}
    for c in profile.candidates:
        settings.setdefault(c.setting, []).append(c)
    for setting, rows in settings.items():
        measured = [c for c in rows if c.measurement is not None]
        if not measured:
            continue
        xs = [c.batch for c in measured]
        label = setting_label(*setting)
        rtfs = [c.measurement.rtf for c in measured]
        spans = [c.measurement.round_ms_per_frame or [r * 80] for r, c in zip(rtfs, measured, strict=True)]
        lows = [max(0.0, r - min(v) / 80) for r, v in zip(rtfs, spans, strict=True)]  # rounding can cross zero
        highs = [max(0.0, max(v) / 80 - r) for r, v in zip(rtfs, spans, strict=True)]
        bars = ax_rtf.errorbar(xs, rtfs, yerr=[lows, highs], marker="o", capsize=3, label=label)
        line = bars.lines[0]
        ttfa = [(c.batch, c.measurement.ttfa_ms.get(fc)) for c in measured if c.measurement.ttfa_ms.get(fc)]
        if ttfa:
            ax_ttfa.plot(*zip(*ttfa, strict=True), marker="o", color=line.get_color(), label=label)
        for c in rows:
            if c.status in ("oom", "failed"):
                ax_rtf.plot([c.batch], [0], marker="x", color=line.get_color(), markersize=10, clip_on=False)
    chosen = profile.candidate(profile.chosen.candidate)
    m = chosen.measurement
    star = {"marker": "*", "markersize": 22, "markerfacecolor": "none", "markeredgecolor": "black", "zorder": 5}
    ax_rtf.plot([chosen.batch], [m.rtf], linestyle="none", label="chosen", **star)
    if m.ttfa_ms.get(fc):
        ax_ttfa.plot([chosen.batch], [m.ttfa_ms[fc]], linestyle="none", **star)
    d = profile.delivery
    if d is not None:
        served = {"marker": "D", "markersize": 9, "color": "green" if d.ok else "orange", "linestyle": "none"}
        label = "delivered over HTTP" + ("" if d.ok else f" ({d.rtf_error:+.0%} RTF vs the sweep)")
        ax_rtf.plot([d.streams], [d.delivered_rtf], label=label, **served)
        if d.first_chunk_frames == fc:
            ax_ttfa.plot([d.streams], [d.delivered_ttfa_ms], **served)
    limit = {"color": "green", "linestyle": "--", "linewidth": 1}
    ax_rtf.axhline(profile.rule.rtf_max, label=f"RTF {profile.rule.rtf_max:g} (headroom)", **limit)
    ax_rtf.axhline(1.0, color="red", linestyle=":", linewidth=1, label="real time")
    ax_ttfa.axhline(profile.rule.ttfa_target_ms, label=f"TTFA target {profile.rule.ttfa_target_ms:g} ms", **limit)
    for ax, ylabel in ((ax_rtf, "RTF (step time / 80 ms audio)"), (ax_ttfa, f"TTFA, first chunk {fc} frame(s) [ms]")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(profile.sweep.batches, [str(b) for b in profile.sweep.batches])
        ax.set_xlabel("concurrent streams (batch)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if max(c.measurement.rtf for c in profile.candidates if c.measurement) > 10 * profile.rule.rtf_max:
        ax_rtf.set_yscale("log")
    ax_rtf.legend(fontsize=7, loc="best")
    ax_ttfa.legend(fontsize=7, loc="best")
    ident = profile.identity
    fig.suptitle(
        f"{ident.device.name} ({profile.slug}) · {ident.model.id} · torch {ident.versions.torch} · "
        f"{'quick' if profile.sweep.quick else 'full'} sweep · chosen: {profile.chosen.candidate}",
        fontsize=9,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
