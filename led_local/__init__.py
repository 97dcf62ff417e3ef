"""led-local: Latent Exploration Decoding for local GGUF models on a patched llama.cpp."""

from .llama import DecodeError, LatentReadout, Llama
from .chat import ChatTemplateError

__version__ = "0.1.0"

__all__ = ["Llama", "LatentReadout", "DecodeError", "ChatTemplateError", "__version__"]
