"""The hybrid familiarity + novelty detector: its model, its fusion, and the job that builds it."""
from trainer.hybrid.fusion import fit_fusion, robust_center_scale
from trainer.hybrid.torch_model import FUSION_RULES, HybridDetector, HybridOutput

__all__ = ["FUSION_RULES", "HybridDetector", "HybridOutput", "fit_fusion", "robust_center_scale"]
