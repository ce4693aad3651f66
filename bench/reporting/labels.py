"""Where the accuracy-vs-parameters chart puts its labels: a greedy, deterministic layout in pixel
units, so that no two labels and no label and point overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd

WIDTH, HEIGHT = 640, 380  # acc_vs_params, in pixels: the label layout below works in these units
LABEL_FONT, CHAR_PX, LINE_PX = 10, 5.6, 12


def domains(df: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    """Fixed (not 'nice') axis domains, so the label layout knows where every point lands."""
    x = df["trainable_params"].astype(float)
    y = pd.concat([df["acc_mean"], df["acc_lo"].dropna(), df["acc_hi"].dropna()]).astype(float)
    pad = max(float(y.max() - y.min()), 0.01) * 0.04
    # Room on the left of the smallest point for a label.
    return (float(x.min()) / 1.6, float(x.max()) * 1.15), (float(y.min()) - pad, float(y.max()) + pad)


def label_layout(
    df: pd.DataFrame, labelled: pd.Series, xdom: tuple[float, float], ydom: tuple[float, float]
) -> pd.DataFrame:
    """Where each labelled point's text goes so that no two labels and no label and point overlap.

    Greedy, in a fixed order (baselines first, then by parameters): the first free spot among right
    of the point, left of it, then further and further above/below on either side. Returns the
    label rows with label_x/label_y (data units), align, and leader (a line from point to text when
    the text moved off the point's height). Deterministic.
    """
    lx0, lx1 = np.log(xdom[0]), np.log(xdom[1])

    def px(x):
        return WIDTH * (np.log(x) - lx0) / (lx1 - lx0)

    def py(y):
        return HEIGHT * (ydom[1] - y) / (ydom[1] - ydom[0])

    points = [(px(x), py(y)) for x, y in zip(df["trainable_params"], df["acc_mean"])]
    boxes = [(x - 5, y - 5, x + 5, y + 5) for x, y in points]  # every point is an obstacle
    order = df[labelled].assign(_b=lambda d: ~d["baseline"]).sort_values(["_b", "trainable_params", "label"])
    offsets = [0] + [s * k * LINE_PX for k in range(1, 8) for s in (-1, 1)]
    rows = []
    for _, r in order.iterrows():
        x, y = px(r["trainable_params"]), py(r["acc_mean"])
        w = CHAR_PX * len(str(r["label"])) + 2
        chosen = None
        for dy in offsets:
            for side in (1, -1):
                left = x + 8 if side > 0 else x - 8 - w
                box = (left, y + dy - LINE_PX / 2, left + w, y + dy + LINE_PX / 2)
                inside = box[0] >= 0 and box[2] <= WIDTH + 60 and box[1] >= 0 and box[3] <= HEIGHT
                if inside and not any(
                    box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes
                ):
                    chosen = (side, dy, box)
                    break
            if chosen:
                break
        side, dy, box = chosen or (1, 0, (x + 8, y - LINE_PX / 2, x + 8 + w, y + LINE_PX / 2))
        boxes.append(box)
        anchor = box[0] if side > 0 else box[2]
        rows.append(
            {
                "setup": r["setup"],
                "label": r["label"],
                "trainable_params": r["trainable_params"],
                "acc_mean": r["acc_mean"],
                "align": "left" if side > 0 else "right",
                "label_x": float(np.exp(lx0 + (anchor - 1 * side) / WIDTH * (lx1 - lx0))),
                "label_y": float(ydom[1] - (y + dy) / HEIGHT * (ydom[1] - ydom[0])),
                "leader": dy != 0,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["setup", "label", "trainable_params", "acc_mean", "align", "label_x", "label_y", "leader"],
    )
