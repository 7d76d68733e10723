"""Gemma in plain torch: a decoder, a continuous-batching engine for generation and label scoring.

Usable without Beam: nothing here imports Beam or any prompt wording (the Beam side lives in ``inference``).
"""

from gemma_ops.checkpoints import default_model_path, resolve_model
from gemma_ops.config import GemmaConfig
from gemma_ops.engine import EngineConfig, GemmaEngine
from gemma_ops.outputs import Completion, ScoreResult
from gemma_ops.sampling import SamplingParams
from gemma_ops.tokenizer import GemmaTokenizer

__all__ = [
    "Completion",
    "EngineConfig",
    "GemmaConfig",
    "GemmaEngine",
    "GemmaTokenizer",
    "SamplingParams",
    "ScoreResult",
    "default_model_path",
    "resolve_model",
]
