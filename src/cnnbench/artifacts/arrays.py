"""Array helpers of the builders that need no plotting library (importing figures costs matplotlib)."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(t: "torch.Tensor | np.ndarray") -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
