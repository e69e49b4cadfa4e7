"""Encoder, predictor, EMA target, attention backend and FLOPs counting (contracts §5)."""
from .attention import attention_backend
from .config import (
    MODEL_PRESETS,
    PREDICTOR_PRESETS,
    ModelConfig,
    PredictorConfig,
    default_out_layers,
    model_preset,
    predictor_preset,
)
from .ema import ema_update, make_ema_target
from .encoder import IMAGE, VIDEO, VisionTransformer
from .flops import block_flops, encoder_flops, predictor_flops
from .predictor import Predictor

__all__ = [
    "IMAGE",
    "MODEL_PRESETS",
    "PREDICTOR_PRESETS",
    "VIDEO",
    "ModelConfig",
    "Predictor",
    "PredictorConfig",
    "VisionTransformer",
    "attention_backend",
    "block_flops",
    "default_out_layers",
    "ema_update",
    "encoder_flops",
    "make_ema_target",
    "model_preset",
    "predictor_flops",
    "predictor_preset",
]
