"""Explanations of CLARA's decisions: cross-modal attention, co-attention relevancy, Captum
attributions, modality share and deletion curves. `Explainer(predictor).explain(...)` is the
entry point; no Streamlit here."""
from clara.explain.attention import (AttentionMaps, NoFusionAttentionError, PatchGrid, WordMap, build_word_map,
                                     crop_box, fusion_attentions, overlay, patch_grid)
from clara.explain.attributions import (ImageAttribution, TextAttribution, find_text_embedding_layer,
                                        find_word_embeddings, text_baseline_ids)
from clara.explain.explainer import (METHODS, Explainer, ExplainInput, Explanation, ModalityShare, overlay_image,
                                     resolve_target)
from clara.explain.faithfulness import DeletionCurve
from clara.explain.relevancy import Relevancy
from clara.explain.settings import EXPLAIN_DEFAULTS, ExplainSettings

__all__ = [
    "AttentionMaps", "DeletionCurve", "EXPLAIN_DEFAULTS", "ExplainInput", "ExplainSettings", "Explainer", "Explanation", "ImageAttribution", "METHODS",
    "ModalityShare", "NoFusionAttentionError", "PatchGrid", "Relevancy", "TextAttribution",
    "WordMap", "build_word_map", "crop_box", "find_text_embedding_layer", "find_word_embeddings",
    "fusion_attentions", "overlay", "overlay_image", "patch_grid", "resolve_target",
    "text_baseline_ids",
]
