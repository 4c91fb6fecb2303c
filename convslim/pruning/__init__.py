"""Channel pruning: structural surgery (torch-pruning), and the criteria and search built on it."""
from .surgery import remove_channels

__all__ = ["remove_channels"]
