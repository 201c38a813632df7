"""Familiarity: distance to the nearest normal patch features in a pretrained embedding."""
from trainer.familiarity.coreset import k_center_greedy
from trainer.familiarity.patch_features import PatchFeatureExtractor
from trainer.familiarity.torch_model import FamiliarityOutput, PatchKnnFamiliarity

__all__ = ["FamiliarityOutput", "PatchFeatureExtractor", "PatchKnnFamiliarity", "k_center_greedy"]
