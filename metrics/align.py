"""Five-point face alignment shared by E-FID (Deep3DFaceRecon) and CSIM (ArcFace).

The five points are the eye centres, nose tip and mouth corners in MTCNN order (image-left eye
first). From MediaPipe's 478 landmarks they are points 468 and 473 (iris centres), 1 (nose tip),
61 and 291 (mouth corners), within about 1.5 px of MTCNN's on 224 px faces.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eartalk.core.types import FaceTrack

MEDIAPIPE_FIVE = (468, 473, 1, 61, 291)

#: insightface's 112x112 ArcFace template (arcface_dst), same point order.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def five_points(track: FaceTrack, height: int, width: int) -> Tensor:
    """``(T, 5, 2)`` pixel coordinates of the five points (NaN where no face)."""
    points = track.landmarks[:, list(MEDIAPIPE_FIVE), :2].clone().float()  # (T, 5, 2) normalised
    points[..., 0] *= width
    points[..., 1] *= height
    return points


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``(2, 3)`` mapping ``src (N, 2)`` onto ``dst (N, 2)`` (Umeyama, no reflection)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sing * d).sum() / s_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def warp_affine(image: Tensor, matrix: np.ndarray, size: int, mode: str = "bilinear") -> Tensor:
    """Warp ``(3, H, W)`` float image with the forward map ``matrix`` (source px -> output px).

    Pixel centres follow OpenCV's ``warpAffine`` convention; outside pixels are zero.
    Returns ``(3, size, size)``.
    """
    _, h, w = image.shape
    full = np.vstack([matrix, [0, 0, 1]])
    inverse = np.linalg.inv(full)[:2]  # output px -> source px
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij")
    inv = torch.from_numpy(inverse)
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], dim=-1).float()  # (size, size, 2)
    out = F.grid_sample(image[None].float(), grid[None], mode=mode, padding_mode="zeros", align_corners=False)
    return out[0]
