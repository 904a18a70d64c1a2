"""discrete-diffusion: exact continuous-time diffusion models on discrete state spaces."""

__version__ = "0.1.0"
