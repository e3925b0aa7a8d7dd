"""Shared constants and defaults. Models record their own hyper-parameters in their `config.json`."""

from __future__ import annotations

IMAGE_SIZE = 128  # model input: square, 1 channel, float in [0, 1]
CLASS_NAMES = ("no_tumour", "tumour")  # index order used by every model and file
# Tumour types where a source names them (Nickparvar); a model's type head predicts these, in this order.
TUMOUR_TYPES = ("glioma", "meningioma", "pituitary")
# Br35H folder name -> class index. A user's own data set passes its own mapping.
BR35H_CLASS_DIRS = {"no": 0, "yes": 1}
UNLABELLED_DIRS = ("pred",)

DEFAULT_SEED = 0
DEFAULT_HOSPITALS = 10
DEFAULT_ALPHA = 0.5
