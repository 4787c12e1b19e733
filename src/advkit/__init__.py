"""advkit: audit and harden PyTorch image classifiers against adversarial machine learning."""
__version__ = "0.1.0"
