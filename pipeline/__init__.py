"""tokenmeter: stream-processing metering for LLM token spend."""

from pipeline.errors import TokenmeterError

__version__ = "0.1.0"
__all__ = ["TokenmeterError", "__version__"]
