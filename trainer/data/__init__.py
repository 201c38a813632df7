"""Data layer: samples, layouts, image reading and the open-set split (numpy + OpenCV only)."""
from pathlib import Path

from .images import IMAGE_EXTENSIONS, ImageError, is_image_file, read_image, read_mask
from .samples import LAYOUTS, Dataset, Sample, detect_layout, load_dataset, load_samples
from .split import SPLIT_RULE, Split, open_set_split

#: The embedded ELPV sample (labels.csv + images/, CC BY-NC-SA 4.0): 36 good + 14 defective cells.
ELPV_MINI: Path = Path(__file__).resolve().parents[1] / "sample_data" / "elpv_mini"

__all__ = [
    "ELPV_MINI",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SPLIT_RULE",
    "Dataset",
    "ImageError",
    "Sample",
    "Split",
    "detect_layout",
    "is_image_file",
    "load_dataset",
    "load_samples",
    "open_set_split",
    "read_image",
    "read_mask",
]
