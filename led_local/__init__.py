"""led-local: Latent Exploration Decoding for local GGUF models on a patched llama.cpp."""

from .chat import ChatTemplateError
from .devices import Device, devices, gpu_offload_supported
from .grammar import LlamaGrammar
from .led import LEDStep, led_sample, led_step
from .llama import DecodeError, LatentReadout, Llama, LlamaState
from .rpc import RPCServerLost
from .sampling import LEDConfig

__version__ = "0.1.0"

__all__ = ["Llama", "LatentReadout", "LEDConfig", "LEDStep", "led_step", "led_sample", "DecodeError",
           "ChatTemplateError", "Device", "devices", "gpu_offload_supported", "LlamaGrammar", "LlamaState", "RPCServerLost", "__version__"]
