"""honed: fine-tune, compress and compile language models, and prove the result with measurements."""

__version__ = "0.1.0"
