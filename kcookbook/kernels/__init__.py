"""Native kernels for what a backend's own kernels do slowly on a CPU, each with its fallback.

``int8_products``: int8 weights times a few float32 rows on jax's CPU backend (batch-1 decoding
with int8 weights), a C++ loop compiled on first use.
"""
