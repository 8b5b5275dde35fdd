"""The pyfunc side of a logged cnnbench model, as an MLflow *models-from-code* file.

MLflow copies this file into the model and executes it when the model is loaded, so it imports
only numpy, pandas, torch and mlflow — never cnnbench: a logged model loads and predicts wherever
MLflow and torch are installed. The network itself is the artifact ``program``: a ``torch.export``
program of preprocessing + network + softmax (see ``cnnbench.tracking.model_export``).

Accepted input (``predict`` / ``mlflow models predict`` / ``mlflow models serve``):

- images as an array (or nested lists): ``(N, H, W, C)`` or ``(N, C, H, W)``; ``(N, H, W)`` for
  one-channel images; a single image without the batch axis; or ``(N, C*H*W)`` flattened rows;
- a DataFrame (e.g. a CSV) with one row per image: ``C*H*W`` numeric columns holding the pixels
  flattened in ``(C, H, W)`` order (for one channel: row-major, as in MNIST CSVs), or one column
  whose cells are the images as arrays / nested lists.

Integer values are pixels in 0..255 (uint8 or not); floating-point values are in [0, 1] (as from
torchvision's ``ToTensor``). The normalisation the network was trained with is applied inside.

Anything else is refused before the network runs, with one line naming the expected shape and dtype
(an ``InputError``: an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, so ``mlflow models
serve`` answers 400 with that message instead of a stack trace; also a ``ValueError``). The
signature states no input schema on purpose: MLflow's tensor-spec enforcement would refuse every
layout but one, floats and every CSV; ``metadata["input_schema"]`` records the canonical one.

Output: a DataFrame with one row per image: ``predicted_class`` (the class name),
``predicted_index`` and ``prob_<class>`` for every class (softmax probabilities).
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

BATCH = 256  # images per forward pass: bounds memory for a large request


class InputError(MlflowException, ValueError):
    """An input the model cannot take: one line naming the expected shape and dtype."""

    def __init__(self, message: str) -> None:
        super().__init__(f"cnnbench model input: {message}", error_code=INVALID_PARAMETER_VALUE)


def expected(shape: tuple[int, int, int]) -> str:
    """The accepted inputs in one phrase: shapes and dtypes."""
    c, h, w = shape
    return (f"images of shape (N, {h}, {w}, {c}) or (N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")
            + f", or (N, {c * h * w}) flattened, dtype uint8 (pixels 0..255) or float32 in [0, 1]")


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        config = context.model_config
        self.classes = [str(c) for c in config["classes"]]
        self.shape = tuple(int(v) for v in config["input_shape"])  # (C, H, W)
        self.program = torch.export.load(context.artifacts["program"]).module()

    # Annotated np.ndarray, a type MLflow neither validates nor converts: a DataFrame or nested lists
    # pass through unchanged (and no "add type hints" warning).
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        import torch

        images = to_images(model_input, self.shape)
        probs = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                probs.append(self.program(torch.from_numpy(images[start : start + BATCH])).numpy())
        p = np.concatenate(probs) if probs else np.zeros((0, len(self.classes)), dtype=np.float32)
        index = p.argmax(axis=1)
        frame = pd.DataFrame({"predicted_class": [self.classes[i] for i in index], "predicted_index": index.astype(np.int64)})
        for k, name in enumerate(self.classes):
            frame[f"prob_{name}"] = p[:, k].astype(np.float64)
        return frame


def to_images(data, shape: tuple[int, int, int]) -> np.ndarray:
    """Any accepted input as float32 ``(N, C, H, W)`` in [0, 1]; an :class:`InputError` saying what is accepted."""
    c, h, w = shape
    if isinstance(data, pd.DataFrame):
        array = _from_frame(data, shape)
    elif isinstance(data, dict) and len(data) == 1:  # {"images": ...} from a named tensor input
        array = np.asarray(next(iter(data.values())))
    else:
        array = data
    try:
        array = np.asarray(array)
        if array.dtype == object:
            array = np.asarray(array.tolist())
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise InputError(f"expected {expected(shape)}; got ragged or non-numeric input ({str(err).splitlines()[0]})") from None
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise InputError(f"expected {expected(shape)}; got dtype {array.dtype}")
    array = _to_nchw(array, shape)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(f"integer pixels must lie in 0..255; got {array.min()}..{array.max()}")
        return array.astype(np.float32) / np.float32(255.0)
    array = array.astype(np.float32)
    if array.size and (np.nanmin(array) < 0.0 or np.nanmax(array) > 1.0):
        raise InputError(f"floating-point pixels must lie in [0, 1] (pass integer pixels for 0..255); got "
                         f"{float(np.nanmin(array)):g}..{float(np.nanmax(array)):g}")
    return np.ascontiguousarray(array)


def _from_frame(frame: pd.DataFrame, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    if frame.shape[1] == c * h * w:
        return frame.to_numpy()
    if frame.shape[1] == 1:
        return np.stack([np.asarray(cell) for cell in frame.iloc[:, 0]]) if len(frame) else np.zeros((0, c, h, w), np.uint8)
    raise InputError(f"a DataFrame input needs {c * h * w} pixel columns (C*H*W = {c}*{h}*{w}, flattened in (C, H, W) "
                     f"order) or one column of images; got {frame.shape[1]} columns")


def _to_nchw(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    s = array.shape
    if array.ndim == 2 and s[1] == c * h * w:
        return array.reshape(len(array), c, h, w)
    if array.ndim == 3 and c == 1 and s[1:] == (h, w):
        return array[:, None]  # (N, H, W) one-channel images
    if array.ndim == 3 and s in ((c, h, w), (h, w, c)):
        array = array[None]  # one image without the batch axis
        s = array.shape
    if array.ndim == 4:
        if s[1:] == (c, h, w):
            return array
        if s[1:] == (h, w, c):
            return array.transpose(0, 3, 1, 2)
    raise InputError(f"expected {expected(shape)}; got shape {s} ({array.dtype})")


mlflow.models.set_model(ImageClassifier())
