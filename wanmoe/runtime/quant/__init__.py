"""Weights at run time: GGUF dequantisation, quantised linears (GGUF, fp8, int8), model swaps,
resident-size estimates. Import the submodules directly; this package imports nothing eagerly."""
