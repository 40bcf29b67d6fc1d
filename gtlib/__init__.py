"""gtlib: graph transformers and scientific machine learning on one sparse-attention core."""

from gtlib import attention

__version__ = "0.1.0"

__all__ = ["attention", "__version__"]
