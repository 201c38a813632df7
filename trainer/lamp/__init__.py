"""LAMP: an autoencoder trained on good parts with an amplified reconstruction loss."""
from trainer.lamp.amplifier import AMPLIFIERS, AmplifierConfig, amplify
from trainer.lamp.anomaly_map import AnomalyMapConfig, AnomalyMapGenerator
from trainer.lamp.loss import lamp_loss
from trainer.lamp.torch_model import LampAutoencoder, LampDetector, LampOutput

__all__ = ["AMPLIFIERS", "AmplifierConfig", "amplify", "AnomalyMapConfig", "AnomalyMapGenerator",
           "lamp_loss", "LampAutoencoder", "LampDetector", "LampOutput"]
