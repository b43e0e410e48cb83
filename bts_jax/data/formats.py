"""File conventions shared by training and inference: what is an image file, what is tumour.

Each convention is defined here once, so the folder source, the tf.data pipeline, prediction on
files and the figures can never disagree on them.
"""

# What the training decoder (``tf.io.decode_image``) reads. TIFF is not among them.
TRAINING_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# TIFF scans are common in clinics: prediction reads them through Pillow.
TIFF_EXTENSIONS = (".tif", ".tiff")
# What `predict.py` picks up in a folder (case-insensitive).
PREDICT_EXTENSIONS = TRAINING_EXTENSIONS + TIFF_EXTENSIONS
# Pillow modes of 8-bit images; TensorFlow keeps only the top byte of 16-bit ones, so a folder
# source rejects other modes instead of training on silently truncated pixels.
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
# Pillow modes of 16-bit scans: prediction keeps their top 8 bits, as the PNG decoder does.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
# A mask pixel is tumour when its uint8 value is above this (masks are stored as 0/255).
MASK_THRESHOLD = 127


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    """Whether a file name is a visible file with one of ``extensions`` (case-insensitive).

    Args:
      name: a file name (not a path).
      extensions: lower-case extensions with their dot, e.g. `TRAINING_EXTENSIONS`.

    Returns:
      True for e.g. ``"12.PNG"`` with ``(".png",)``; False for hidden files like ``".12.png"``.
    """
    lower = name.lower()
    return not name.startswith(".") and any(lower.endswith(ext) for ext in extensions)
