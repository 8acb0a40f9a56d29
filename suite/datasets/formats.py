"""Dataset file formats the generators write and the detection modality writes too: YOLO label rows.

A leaf module (numpy only): the generators in `suite.datasets` never import a modality.
"""
from __future__ import annotations

import numpy as np


def yolo_label_text(boxes: np.ndarray, labels: np.ndarray, width: int, height: int) -> str:
    """Label file rows 'cls cx cy w h', normalized; 8 significant digits keep 1e-4 px on a 10k px image."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height
    w, h = (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height
    rows = zip(np.asarray(labels).tolist(), cx.tolist(), cy.tolist(), w.tolist(), h.tolist())
    return "".join(f"{c} {x:.8g} {y:.8g} {bw:.8g} {bh:.8g}\n" for c, x, y, bw, bh in rows)
