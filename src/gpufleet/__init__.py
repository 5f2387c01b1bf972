"""gpufleet: watch a lab's GPU servers, keep a usage warehouse, recommend, alert, schedule."""

__version__ = "0.1.0"
