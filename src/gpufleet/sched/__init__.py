"""The scheduling core: job specs, the online runtime predictor, the policies (FIFO, EASY,
Tiresias 2D-LAS, Gavel, gpufleet's), the trace-driven simulator (``gpufleet simulate``) and
GPU sharing and heterogeneity. Pure: the live queue (gpufleet.queue) drives the same policies."""
