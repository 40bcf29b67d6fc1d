"""Backends of the attention engine: reference (gather/scatter), chunked streaming, sparse-matrix,
dense blocks (SDPA) and the fused CPU kernel (compiled C++)."""
