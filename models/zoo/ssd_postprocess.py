"""SSD300 post-processing in numpy: default boxes, box decoding, NMS and detection.

Conventions follow NVIDIA's SSD300 (DeepLearningExamples, `dboxes300_coco`): anchors are
(cx, cy, w, h) in image-relative units, ordered per feature map as (size, row, column) to
match heads reshaped `[N, 4*A, H, W] -> [N, 4, A*H*W]`; class 0 is background; box offsets
use the 0.1 / 0.2 variances. Decoded boxes are (x1, y1, x2, y2), image-relative.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.core.errors import ConfigError, DataError

#: Per feature map: stride in pixels at 300, and aspect ratios besides 1 (each adds 2 anchors).
STEPS_300 = (8, 16, 32, 64, 100, 300)
SCALES_300 = (21, 45, 99, 153, 207, 261, 315)
ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
ANCHORS_PER_LOCATION = tuple(2 + 2 * len(r) for r in ASPECT_RATIOS)  # (4, 6, 6, 6, 4, 4)
SCALE_XY, SCALE_WH = 0.1, 0.2


def feature_sizes(image_size: int = 300) -> list[int]:
    """Side of the six SSD feature maps of the ResNet-50 backbone (38, 19, 10, 5, 3, 1 at 300).

    The backbone (stem, layer1, layer2) divides by 8 rounding up; three stride-2 extras halve
    rounding up; the last two extras are unpadded 3x3 convs (-2 each).
    """
    sizes = [math.ceil(image_size / 8)]
    for _ in range(3):
        sizes.append(math.ceil(sizes[-1] / 2))
    sizes += [sizes[-1] - 2, sizes[-1] - 4]
    if sizes[-1] < 1:
        raise ConfigError(f"SSD image_size {image_size} too small (last feature map empty)")
    return sizes


def default_boxes(image_size: int = 300) -> np.ndarray:
    """Default (anchor) boxes, shape [num_anchors, 4] as (cx, cy, w, h), clipped to [0, 1].

    At 300 this is NVIDIA's table exactly (8732 boxes); other sizes keep the relative scales
    and place one anchor centre per feature-map cell.
    """
    feats = feature_sizes(image_size)
    fks = [300 / s for s in STEPS_300] if image_size == 300 else feats
    rows = []
    for idx, (feat, fk) in enumerate(zip(feats, fks, strict=True)):
        sk1, sk2 = SCALES_300[idx] / 300, SCALES_300[idx + 1] / 300
        sizes = [(sk1, sk1), (math.sqrt(sk1 * sk2),) * 2]
        for alpha in ASPECT_RATIOS[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes += [(w, h), (h, w)]
        cy, cx = np.meshgrid((np.arange(feat) + 0.5) / fk, (np.arange(feat) + 0.5) / fk,
                             indexing="ij")
        for w, h in sizes:
            rows.append(np.stack([cx.ravel(), cy.ravel(), np.full(cx.size, w),
                                  np.full(cx.size, h)], axis=1))
    return np.clip(np.concatenate(rows), 0.0, 1.0).astype(np.float32)


def decode(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Apply regression offsets [..., A, 4] to anchors [A, 4]; returns (x1, y1, x2, y2)."""
    xy = anchors[:, :2] + SCALE_XY * boxes[..., :2] * anchors[:, 2:]
    wh = anchors[:, 2:] * np.exp(SCALE_WH * boxes[..., 2:])
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)


def box_iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each of `others` [K, 4]."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression; drops boxes overlapping a kept one with IoU > `iou`.

    Returns:
        Indices of the kept boxes, by decreasing score (int64).
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        keep.append(order[0])
        rest = order[1:]
        order = rest[box_iou(boxes[order[0]], boxes[rest]) <= iou]
    return np.asarray(keep, dtype=np.int64)


def detect(boxes: np.ndarray, scores: np.ndarray, anchors: np.ndarray,
           score_thr: float = 0.05, max_det: int = 200, iou: float = 0.5,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class NMS detection for one image.

    Args:
        boxes: Regression output [num_anchors, 4].
        scores: Class logits [num_anchors, num_classes]; class 0 is background.
        anchors: `default_boxes()` [num_anchors, 4].
        score_thr: Minimum softmax probability.
        max_det: Candidates per class before NMS and detections kept overall.
        iou: NMS overlap threshold.

    Returns:
        (x1, y1, x2, y2) boxes [K, 4], probabilities [K] and labels [K], best first.
    """
    if boxes.ndim != 2 or scores.ndim != 2 or not len(boxes) == len(scores) == len(anchors):
        raise DataError(f"detect: expected [A, 4] and [A, C], got {boxes.shape} {scores.shape}")
    ltrb = decode(boxes, anchors)
    prob = np.exp(scores - scores.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    found = [_detect_class(ltrb, prob[:, c], c, score_thr, max_det, iou)
             for c in range(1, prob.shape[1])]
    kept = np.concatenate([f for f in found if len(f)] or [np.zeros((0, 6))])
    kept = kept[np.argsort(-kept[:, 4], kind="stable")[:max_det]]
    return kept[:, :4].astype(np.float32), kept[:, 4].astype(np.float32), kept[:, 5].astype(
        np.int64)


def _detect_class(ltrb: np.ndarray, prob: np.ndarray, label: int, score_thr: float,
                  max_det: int, iou: float) -> np.ndarray:
    """Rows (x1, y1, x2, y2, prob, label) surviving threshold, top-k and NMS for one class."""
    idx = np.flatnonzero(prob > score_thr)
    idx = idx[np.argsort(-prob[idx], kind="stable")[:max_det]]
    idx = idx[nms(ltrb[idx], prob[idx], iou)]
    return np.column_stack([ltrb[idx], prob[idx], np.full(len(idx), label)])
