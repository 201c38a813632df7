"""The patch head: a small supervised classifier on frozen ImageNet-pretrained patch features."""
from trainer.patchhead.torch_model import PatchHeadOutput, PatchHeadScorer

__all__ = ["PatchHeadOutput", "PatchHeadScorer"]
