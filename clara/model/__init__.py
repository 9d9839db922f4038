"""CLARA model: encoders by name (CLIP/SigLIP vision, DeBERTa-v3/RoBERTa/XLM-R text: backbones.py; LoRA), fusion, heads and the factory."""
from clara.model.clara_model import CLARAModel, CLARAOutput, create_model
from clara.model.encoders import (EncoderError, ImageStats, build_text_encoder, build_tokenizer,
                                  build_vision_encoder, image_stats)
from clara.model.fusion import FusionAttentions, PooledFusion, TokenCoAttentionFusion

__all__ = ["CLARAModel", "CLARAOutput", "EncoderError", "FusionAttentions", "ImageStats", "PooledFusion",
           "TokenCoAttentionFusion", "build_text_encoder", "build_tokenizer", "build_vision_encoder",
           "create_model", "image_stats"]
