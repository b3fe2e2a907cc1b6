"""The outputs of Grad-CAM: gradcam.md, gradcam.png (grouped bars), overlays.png and gradcam.json
(see :mod:`adam_ext.eve.gradcam`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._util.escape import markdown_code, markdown_text
from .common import markdown_table, plot_label, save_figure, write_result
from .gradcam_scores import heatmap_peak

__all__ = ["FILES", "gradcam_markdown"]

#: What the analysis writes in its folder.
FILES = ("gradcam.md", "gradcam.json", "gradcam.png", "overlays.png")


def gradcam_markdown(result: dict) -> str:
    """``gradcam.md``: one row per finding (and "all"), pointing accuracy and mean IoU per model, n."""
    names = list(result["models"])
    header = ["finding", "n"] + [f"{metric} ({name})" for name in names for metric in ("pointing", "IoU")]
    rows = []
    for finding in result["findings"] + ["all"]:
        first = result["results"][names[0]][finding]
        cells = [
            v
            for name in names
            for v in (result["results"][name][finding]["pointing"], result["results"][name][finding]["iou"])
        ]
        rows.append([finding, first["n"], *cells])
    models = "; ".join(
        f"{markdown_code(name)} = {markdown_code(m['path'])} ({markdown_text(m['arch'])}, "
        f"{m['size']} px, init {markdown_code(m['init'])})"
        for name, m in result["models"].items()
    )
    return "\n".join(
        [
            f"# Grad-CAM localisation: {markdown_text(result['dataset'])} ({markdown_text(result['split'])})",
            "",
            (
                f"{result['n_images']} images with boxes. Grad-CAM of `{result['target_layer']}` for the finding's "
                "logit, the whole image resized to the model's input side. pointing: share of heatmaps whose maximum "
                f"lies in a box of the finding; IoU: mean IoU of the map >= {result['threshold']} x its maximum with "
                "the union of the finding's boxes; n: (image, finding) pairs; n/a: no pair."
            ),
            "",
            markdown_table(header, rows),
            f"Models: {models}",
            "",
        ]
    )


def _plot_bars(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rows = list(result["models"]), result["findings"] + ["all"]
    x, width = np.arange(len(rows)), 0.8 / len(names)
    n = [result["results"][names[0]][f]["n"] for f in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.55 * len(rows) * (1 + 0.3 * len(names))), 7), dpi=110)
    for ax, metric, title in zip(
        axes, ("pointing", "iou"), ("pointing-game accuracy", f"IoU (map >= {result['threshold']} x max)")
    ):
        for j, name in enumerate(names):
            values = [result["results"][name][f][metric] for f in rows]
            ax.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=plot_label(name))
        ax.set_xticks(x, [f"{plot_label(f)}\n(n={k})" for f, k in zip(rows, n)], fontsize=8)
        ax.set(ylim=(0, 1), title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _plot_overlays(rows: list[dict], names: list[str], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(
        len(rows), 1 + len(names), figsize=(2.6 * (1 + len(names)), 2.6 * len(rows)), dpi=110, squeeze=False
    )
    for ax_row, row in zip(axes, rows):
        image = row["image_array"]
        height, width = image.shape[1:]
        shown = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        extent = (0, width, height, 0)
        for col, ax in enumerate(ax_row):
            ax.imshow(shown, cmap="gray", extent=extent)
            if col == 0:
                boxes = f"{row['boxes']} box{'es' if row['boxes'] > 1 else ''}"
                ax.set_title(f"{plot_label(row['finding'])} ({boxes})", fontsize=8)
            else:
                name = names[col - 1]
                heat = row["heatmaps"][name]
                ax.imshow(heat, cmap="jet", alpha=0.45, extent=extent, vmin=0, vmax=1)
                peak = heatmap_peak(heat)
                if peak is not None:
                    ax.contour(
                        heat,
                        levels=[threshold * heat.max()],
                        colors="white",
                        linewidths=0.8,
                        extent=extent,
                        origin="upper",
                    )
                    ax.plot(
                        (peak[1] + 0.5) * width / heat.shape[1],
                        (peak[0] + 0.5) * height / heat.shape[0],
                        "w+",
                        ms=10,
                        mew=2,
                    )
                hit = "hit" if row["hit"][name] else "miss"
                ax.set_title(f"{plot_label(name)}: {hit}, IoU {row['iou'][name]:.2f}", fontsize=8)
            for x0, y0, x1, y1 in row["box_array"]:
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.2)
                )
            ax.set(xlim=(0, width), ylim=(height, 0))
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _write_outputs(out: Path, result: dict, overlay_rows: list[dict]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "gradcam_md": str(out / "gradcam.md"),
        "gradcam_png": str(out / "gradcam.png"),
        "gradcam_json": str(out / "gradcam.json"),
        "overlays_png": None,
    }
    _plot_bars(result, out / "gradcam.png")
    if overlay_rows:
        _plot_overlays(overlay_rows, list(result["models"]), result["threshold"], out / "overlays.png")
        paths["overlays_png"] = str(out / "overlays.png")
    write_result(out, "gradcam", {**result, **paths}, gradcam_markdown(result))
    return paths
