"""Results out: one JSON file (everything, samples included), a markdown table per suite
and a PNG chart, all named after the run's start time."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.runner import OK, Suite, ratio


def suite_json(suite: Suite) -> dict[str, object]:
    return {
        "references": list(suite.references),
        "systems": {s.name: s.label for s in suite.systems},
        "workloads": {
            w.name: {
                "description": w.label,
                "results": {
                    s.name: {
                        **suite.cell(w.name, s.name).summary(),
                        "ratios": {
                            ref: ratio(suite, w.name, s.name, ref) for ref in suite.references
                        },
                    }
                    for s in suite.systems
                },
            }
            for w in suite.workloads
        },
    }


def write_json(path: Path, meta: dict[str, object], suites: Sequence[Suite]) -> None:
    doc = {**meta, "suites": {s.name: suite_json(s) for s in suites}}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def fmt_seconds(x: float) -> str:
    if x >= 10:
        return f"{x:.1f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 0.01:
        return f"{x * 1000:.0f} ms"
    if x >= 0.001:
        return f"{x * 1000:.1f} ms"
    return f"{x * 1e6:.0f} µs"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


class Notes:
    """Footnotes: a failed cell shows its status and a number; the reason is listed once."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def markdown(self) -> list[str]:
        return [f"{i}. {md(t)}" for i, t in enumerate(self.texts, 1)]


def late_copy(extras: object, median: float) -> float | None:
    """When a copy-up landed in the upper well after the app's fsync() returned, or None."""
    if not isinstance(extras, dict) or "in_upper_s" not in extras:
        return None
    landed = float(extras["in_upper_s"])
    return landed if landed > 2 * median and landed - median > 0.001 else None


def time_cell(suite: Suite, workload: str, system: str, notes: Notes) -> str:
    cell = suite.cell(workload, system)
    if cell.status != OK:
        return f"{cell.status} {notes.ref(cell.note)}" if cell.note else cell.status
    if not cell.samples:
        return "–"
    med = cell.median or 0.0
    text = f"**{fmt_seconds(med)}** ({fmt_seconds(min(cell.samples))}–"
    text += f"{fmt_seconds(max(cell.samples))})"
    extras = cell.summary()["extras"]
    if isinstance(extras, dict) and "disk_bytes" in extras:
        text += f"<br>disk {fmt_bytes(extras['disk_bytes'])}"
    if isinstance(extras, dict) and "daemon_growth" in extras:
        text += f"<br>daemon +{fmt_bytes(max(0.0, extras['daemon_growth']))}"
    landed = late_copy(extras, med)
    if landed is not None:
        text += f"<br>copy done after {fmt_seconds(landed)}"
    return text


def ratio_cell(suite: Suite, workload: str, system: str) -> str:
    parts = []
    for ref in suite.references:
        r = ratio(suite, workload, system, ref)
        parts.append("–" if r is None else f"{r:.2f}×")
    return " / ".join(parts)


def suite_markdown(suite: Suite) -> str:
    systems = suite.systems
    notes = Notes()
    header = "| workload | " + " | ".join(md(s.label) for s in systems) + " |"
    rule = "|---|" + "---|" * len(systems)
    lines = [f"### {suite.name}: median (min–max)", "", header, rule]
    for w in suite.workloads:
        cells = " | ".join(time_cell(suite, w.name, s.name, notes) for s in systems)
        lines.append(f"| {md(w.label)} | {cells} |")
    if notes.texts:
        lines += ["", *notes.markdown()]
    labels = {s.name: s.label for s in systems}
    refs = " / ".join(labels.get(r, r) for r in suite.references)
    lines += ["", f"Ratio of medians, vs {md(refs)} (lower is faster):", "", header, rule]
    for w in suite.workloads:
        cells = " | ".join(ratio_cell(suite, w.name, s.name) for s in systems)
        lines.append(f"| {md(w.label)} | {cells} |")
    return "\n".join(lines) + "\n"


def machine_markdown(meta: dict[str, object]) -> str:
    m = meta["machine"]
    assert isinstance(m, dict)
    versions = m.get("versions", {})
    assert isinstance(versions, dict)
    mem = m.get("memory_bytes", 0)
    ram = fmt_bytes(float(mem) if isinstance(mem, int) else 0.0)
    lines = [
        f"Run {meta['started']} → {meta['finished']} ({meta['mode']}, "
        f"{meta['rounds']} interleaved rounds).",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {ram} RAM"
        f", kernel {m['kernel']}, layers on {m['workdir_filesystem']}; load average at "
        f"start {m['load_average']}, at each round {meta.get('load_per_round')}, at end "
        f"{meta['load_at_end']}; lamina {m['lamina']}; FUSE over io_uring: "
        f"{meta.get('fuse_io_uring', 'not recorded')}.",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, meta: dict[str, object], suites: Sequence[Suite]) -> None:
    parts = [f"## lamina benchmarks — {meta['started']}", "", machine_markdown(meta)]
    for suite in suites:
        parts += [suite_markdown(suite)]
    path.write_text("\n".join(parts))


def write_chart(path: Path, suites: Sequence[Suite], title: str) -> None:
    """Horizontal grouped bars per suite: median time, min–max as error bars, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in suites if s.workloads and s.systems]
    if not shown:
        return
    heights = [max(3.0, 0.12 * len(s.workloads) * len(s.systems) + 1.5) for s in shown]
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, sum(heights)), squeeze=False)
    for ax, suite in zip((a[0] for a in axes), shown, strict=True):
        n_sys = len(suite.systems)
        bar = 0.8 / n_sys
        for j, system in enumerate(suite.systems):
            ys, meds, lo, hi = [], [], [], []
            late_y, late_x = [], []  # copy-ups that finished after fsync() returned
            for i, w in enumerate(suite.workloads):
                cell = suite.cell(w.name, system.name)
                if cell.median is None:
                    continue
                ys.append(i + j * bar)
                meds.append(cell.median)
                lo.append(cell.median - min(cell.samples))
                hi.append(max(cell.samples) - cell.median)
                landed = late_copy(cell.summary()["extras"], cell.median)
                if landed is not None:
                    late_y.append(i + j * bar)
                    late_x.append(landed)
            color = plt.get_cmap("tab10")(j % 10)
            label = system.label if meds else f"{system.label} (no result)"
            ax.barh(ys, meds, height=bar, xerr=[lo, hi], label=label, color=color, capsize=2)
            if late_x:
                ax.plot(late_x, late_y, "d", color=color, markeredgecolor="black")
                for x, y in zip(late_x, late_y, strict=True):
                    ax.annotate(
                        "copy done", (x, y), xytext=(4, -2), textcoords="offset points", fontsize=6
                    )
        ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(suite.workloads))])
        ax.set_yticklabels([w.label for w in suite.workloads], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("seconds (median, min–max; log scale; missing bar = failed/unsupported)")
        ax.set_title(f"{suite.name}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
