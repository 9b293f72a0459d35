"""Evaluation artefacts: the success interval, summary, annotated videos, plots, HTML report.

Every file is written atomically through `dexvla.io`, so an interrupted evaluation never
leaves a truncated JSON, video or image that a resumed run would trust.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dexvla.eval.rollout import EpisodeResult
from dexvla.io import atomic_write, atomic_write_text

TEXT_BAND = 28  # pixels of black band under the cameras for the sub-step text


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96); (0, 1) for no trials.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or n
    successes, which matters for the small episode counts of simulated evaluations.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate with its Wilson 95% interval, reward stages reached, steps and latency."""
    n = len(records)
    successes = sum(bool(r["success"]) for r in records)
    low, high = wilson_interval(successes, n)
    summary: dict[str, Any] = {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "success_ci95": [low, high],
    }
    if not n:
        return summary
    top = max((r["max_reward_possible"] or 0) for r in records)
    names = records[0].get("stage_names") or []
    summary["stage_reached"] = {
        str(stage): {
            "name": names[stage] if stage < len(names) else str(stage),
            "fraction": sum(r["max_reward"] >= stage for r in records) / n,
        }
        for stage in range(1, top + 1)
    }
    summary["mean_max_reward"] = float(np.mean([r["max_reward"] for r in records]))
    summary["mean_steps"] = float(np.mean([r["steps"] for r in records]))
    chunk = [r["latency"]["chunk_ms"] for r in records if r["latency"]["chunk_ms"]]
    reasoning = [r["latency"]["reasoning_chunk_ms"] for r in records]
    cached = [r["latency"]["cached_chunk_ms"] for r in records]
    steps = sum(r["steps"] for r in records)
    policy_s = sum(r["latency"]["policy_s"] for r in records)
    summary["latency"] = {
        "chunk_ms_mean": _weighted_mean(chunk),
        "reasoning_chunk_ms_mean": _weighted_mean([c for c in reasoning if c]),
        "cached_chunk_ms_mean": _weighted_mean([c for c in cached if c]),
        "step_ms_mean": 1e3 * policy_s / steps if steps else None,
        "actions_per_s_policy_only": steps / policy_s if policy_s > 0 else None,
    }
    return summary


def _weighted_mean(stats: list[dict[str, float]]) -> float | None:
    count = sum(s["count"] for s in stats)
    return sum(s["mean"] * s["count"] for s in stats) / count if count else None


# ------------------------------------------------------------------------------- videos


def annotate_frame(images: list[np.ndarray], text: str, t: int) -> np.ndarray:
    """Cameras side by side with `t` and the sub-step written in a band underneath.

    The frame is padded to multiples of 16 pixels, as H.264 encoders want.
    """
    height = max(image.shape[0] for image in images)
    row = np.concatenate(
        [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in images], axis=1
    )
    width = row.shape[1]
    full_h = -(-(height + TEXT_BAND) // 16) * 16
    full_w = -(-width // 16) * 16
    canvas = Image.new("RGB", (full_w, full_h))
    canvas.paste(Image.fromarray(np.ascontiguousarray(row, dtype=np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line = f"t={t}  {text}"
    while len(line) > 4 and draw.textlength(line, font=font) > full_w - 4:
        line = line[:-4] + "..."
    draw.text((2, height + 4), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """An H.264 mp4 of the frames (imageio's ffmpeg plugin), written atomically."""
    import imageio.v2 as imageio

    def write(tmp: Path) -> None:
        with imageio.get_writer(
            str(tmp), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=16
        ) as writer:
            for frame in frames:
                writer.append_data(frame)

    atomic_write(path, write)


# -------------------------------------------------------------------------------- plots


def _save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(figure)


def plot_timeline(result: EpisodeResult, path: Path) -> None:
    """The sub-step timeline as coloured bars over the control steps, with the reward stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result.timeline()
    texts = list(dict.fromkeys(run["text"] for run in runs))
    colours = plt.get_cmap("tab10")
    figure, (bars, reward) = plt.subplots(
        2, 1, figsize=(10, 2.5 + 0.25 * len(texts)), sharex=True, height_ratios=[1, 1]
    )
    for run in runs:
        k = texts.index(run["text"])
        bars.broken_barh([(run["start"], run["end"] - run["start"])], (0, 1), color=colours(k % 10))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(k % 10)) for k in range(len(texts))]
    labels = [text[:70] or "(empty)" for text in texts]
    bars.legend(handles, labels, loc="upper left", bbox_to_anchor=(0, -0.15), fontsize=7)
    bars.set_yticks([])
    bars.set_title(
        f"episode {result.index} (seed {result.seed}): "
        f"{'success' if result.success else 'failure'}, sub-steps"
    )
    reward.step(range(len(result.stages)), result.stages, where="post")
    if result.stage_names:
        reward.set_yticks(range(len(result.stage_names)), result.stage_names, fontsize=7)
    reward.set_xlabel("control step")
    reward.set_ylabel("reward stage")
    figure.tight_layout()
    _save_figure(figure, path)


def plot_actions(result: EpisodeResult, path: Path, dims: int = 4) -> None:
    """Predicted chunks (thin, whole horizon), executed actions and observed state per dim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = min(dims, result.actions.shape[1]) if result.actions.size else 0
    figure, axes = plt.subplots(max(dims, 1), 1, figsize=(10, 1.8 * max(dims, 1)), squeeze=False)
    steps = np.arange(result.steps)
    for d in range(dims):
        ax = axes[d, 0]
        for chunk in result.chunks:
            x = chunk.start + np.arange(len(chunk.actions))
            ax.plot(x, chunk.actions[:, d], color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(steps, result.actions[:, d], color="black", linewidth=1.5, label="executed")
        if result.states.shape[1] > d:
            ax.plot(steps, result.states[:, d], "--", color="tab:orange", label="observed state")
        ax.set_ylabel(f"dim {d}")
    handles = [plt.Line2D([], [], color="tab:blue", alpha=0.5, label="predicted chunks")]
    axes[0, 0].legend(
        handles=[*handles, *axes[0, 0].get_legend_handles_labels()[0]], fontsize=7, loc="best"
    )
    axes[0, 0].set_title(f"episode {result.index}: predicted vs executed actions")
    axes[-1, 0].set_xlabel("control step")
    figure.tight_layout()
    _save_figure(figure, path)


# --------------------------------------------------------------------------------- HTML


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def write_report(out: Path, info: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """report.html: the summary, a row per episode, and every video and plot linked/embedded."""
    summary = info["summary"]
    low, high = summary["success_ci95"]
    config = info["config"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>dexvla eval: {html.escape(config['task'])}</title>",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>",
        f"<h1>{html.escape(config['task'])} &mdash; {html.escape(config['policy'])}</h1>",
        f"<p><b>success {summary['successes']}/{summary['episodes']} = "
        f"{summary['success_rate']:.3f}</b> (Wilson 95%: {low:.3f}&ndash;{high:.3f})</p>",
    ]
    stages = summary.get("stage_reached", {})
    if stages:
        cells = "".join(
            f"<tr><td>{k}</td><td>{html.escape(v['name'])}</td><td>{v['fraction']:.2f}</td></tr>"
            for k, v in stages.items()
        )
        parts.append(f"<table><tr><th>stage</th><th>name</th><th>reached</th></tr>{cells}</table>")
    latency = summary.get("latency", {})
    if latency:
        cells = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in latency.items())
        parts.append(f"<h2>Policy latency</h2><table>{cells}</table>")
    config_rows = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in config.items())
    parts.append(f"<h2>Configuration</h2><table>{config_rows}</table>")
    header = (
        "<tr><th>ep</th><th>seed</th><th>success</th><th>max stage</th><th>steps</th>"
        "<th>chunk ms</th><th>step ms</th><th>sub-steps</th><th>artefacts</th></tr>"
    )
    rows = []
    for r in sorted(records, key=lambda r: r["episode"]):
        chunk = r["latency"]["chunk_ms"]
        links = " ".join(
            f"<a href='{html.escape(p)}'>{html.escape(Path(p).suffix[1:])}</a>"
            for p in r.get("artefacts", {}).values()
        )
        rows.append(
            f"<tr><td>{r['episode']}</td><td>{r['seed']}</td><td>{r['success']}</td>"
            f"<td>{r['max_reward']} {html.escape(r['max_stage_name'])}</td><td>{r['steps']}</td>"
            f"<td>{_fmt(chunk and chunk['mean'])}</td>"
            f"<td>{_fmt(r['latency']['step_ms'] and r['latency']['step_ms']['mean'], 2)}</td>"
            f"<td>{len(r['timeline'])}</td><td>{links}</td></tr>"
        )
    parts.append(f"<h2>Episodes</h2><table>{header}{''.join(rows)}</table>")
    for r in sorted(records, key=lambda r: r["episode"]):
        artefacts = r.get("artefacts", {})
        if not artefacts:
            continue
        parts.append(f"<h3>Episode {r['episode']} (seed {r['seed']})</h3>")
        if "video" in artefacts:
            src = html.escape(artefacts["video"])
            parts.append(f"<video controls src='{src}' style='max-width:100%'></video><br>")
        for key in ("timeline", "actions"):
            if key in artefacts:
                parts.append(f"<img src='{html.escape(artefacts[key])}' style='max-width:100%'>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
