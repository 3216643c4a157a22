"""One module per kernel op; `dit_cache/kernels/ops.py` finds them all (`OPS`)."""
