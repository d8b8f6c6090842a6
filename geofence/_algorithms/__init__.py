"""Compiled kernels, one small module per family. Flat arrays in, ``out`` arrays filled."""
