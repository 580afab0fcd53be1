"""The benchmark's outputs: the markdown table (printed too), CSV, JSON and the quality-vs-NFE and
quality-vs-time plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..checkpoint import atomic_write_bytes


@dataclass
class BenchReport:
    """What `run` returns: rows (one dict per case, the CSV columns plus any list-valued metrics),
    the metadata written to results.json, and the files written."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    columns: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4g}"
    return str(v)


HEADERS = {"sampler": "sampler", "family": "family", "settings": "settings", "nfe": "NFE", "wall_s": "wall s",
           "samples_per_s": "samples/s", "peak_mem_mib": "peak MiB", "transport_error": "transport err",
           "sliced_wasserstein": "SW₂", "mmd_rbf": "MMD²", "mean_log_density": "mean log p", "fid": "FID",
           "class_entropy": "class H", "kid": "KID", "kid_std": "KID std", "is": "IS", "is_std": "IS std",
           "status": "status"}


def markdown_table(rows: Sequence[dict[str, Any]], metric_cols: Sequence[str]) -> str:
    """The rows as a markdown table (NFE shows the expected count too when they differ; errors cut at 80)."""
    cols = ["family", "settings", "nfe", "wall_s", "samples_per_s", "peak_mem_mib", "transport_error",
            *metric_cols, "status"]
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
             "|" + "|".join("---" if c in ("family", "settings", "status") else "---:" for c in cols) + "|"]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "nfe" and r.get("nfe_ok") is False:
                cells.append(f"{_cell(v)} (expected {_cell(r.get('nfe_expected'))})")
            elif c == "status" and r.get("error"):
                err = str(r["error"]).replace("|", "\\|")
                cells.append(f"{r['status']}: {err[:80]}{'…' if len(err) > 80 else ''}")
            elif isinstance(v, str) and c in metric_cols:
                cells.append("error")
            else:
                cells.append(_cell(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_default(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Tensor):
        return v.tolist()
    return str(v)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], columns: tuple[str, ...],
                   metric_cols: tuple[str, ...], out: Path, plots: bool) -> BenchReport:
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
    table = markdown_table(rows, metric_cols)
    plot_files, plot_note = (_plot(rows, metric_cols, out) if plots else ([], "plots disabled"))
    meta["plots"] = [p.name for p in plot_files] or plot_note
    plots_text = ", ".join(meta["plots"]) if isinstance(meta["plots"], list) else meta["plots"]
    lines = [f"# Sampler benchmark: {meta['config']}", "",
             f"- model: {meta['model']}; device {meta['device']}, {meta['torch_threads']} threads, "
             f"OMP_WAIT_POLICY={meta['omp_wait_policy']}",
             f"- σ {meta['sigma_max']:g} → {meta['sigma_min']:g}; {meta['n_samples']} samples of shape "
             f"{tuple(meta['sample_shape'])} in batches of {meta['batch_size']}; {meta['initial_noise']}",
             f"- wall time: {meta['wall_time']}; peak memory: {meta['peak_memory']}",
             f"- transport error: mean ‖x - x_ref‖₂ over samples, deterministic samplers only; reference: "
             f"{meta['transport_reference']}",
             f"- quality: {meta['metrics']}; reference values: "
             + (", ".join(f"{k} = {_cell(v)}" for k, v in meta["reference_metrics"].items()
                          if not isinstance(v, list)) or "none"),
             f"- plots: {plots_text}", "", table, ""]
    atomic_write_bytes(files["markdown"], lambda f: f.write("\n".join(lines).encode()))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_bytes(files["csv"], lambda f: f.write(buf.getvalue().encode()))
    payload = _nan_to_none({"meta": meta, "columns": list(columns), "rows": rows})
    atomic_write_bytes(files["json"], lambda f: f.write(
        (json.dumps(payload, indent=1, default=_json_default, ensure_ascii=False) + "\n").encode()))
    for i, p in enumerate(plot_files):
        files[f"plot{i}"] = p
    print("\n".join(lines))
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return BenchReport(rows, meta, columns, files, table)


def _plot(rows: Sequence[dict[str, Any]], metric_cols: Sequence[str], out: Path) -> tuple[list[Path], str]:
    """quality_vs_nfe.png and quality_vs_time.png: one panel per quality measure (transport error, then
    the first distribution metric), one marker series per sampler family; log-log axes."""
    try:  # an optional dependency
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (a dependency of scorelib: pip install matplotlib): no plots"
    ok = [r for r in rows if r["status"] == "ok"]
    panels = [c for c in ("transport_error", *metric_cols[:1])
              if any(isinstance(r.get(c), float) and math.isfinite(r[c]) and r[c] > 0 for r in ok)]
    if not panels:
        return [], "no finite positive quality values to plot"
    families = list(dict.fromkeys(r["family"] for r in ok))
    markers = "osD^v<>pP*Xh"
    paths = []
    for xcol, fname, xlabel in (("nfe", "quality_vs_nfe.png", "NFE (score evaluations per sample)"),
                                ("wall_s", "quality_vs_time.png", "wall time per row (s)")):
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
        for ax, ycol in zip(axes[0], panels, strict=True):
            for i, fam in enumerate(families):
                pts = sorted((r[xcol], r[ycol]) for r in ok if r["family"] == fam and isinstance(r.get(ycol), float)
                             and math.isfinite(r[ycol]) and r[ycol] > 0 and isinstance(r.get(xcol), int | float))
                if pts:
                    peer = fam.startswith(("k-diffusion", "diffusers"))
                    ax.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)], linestyle="--" if peer else "-",
                            label=fam, color=plt.cm.tab20(i % 20))
            floor = [r[ycol] for r in rows if r["status"] == "reference" and isinstance(r.get(ycol), float)]
            if floor and math.isfinite(floor[0]) and floor[0] > 0:
                ax.axhline(floor[0], color="k", linestyle=":", linewidth=1, label="true samples (floor)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(HEADERS.get(ycol, ycol))
            ax.grid(True, which="both", alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        path = out / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths, ""
