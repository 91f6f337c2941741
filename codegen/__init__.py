"""fp4.codegen: kernel specs to Triton source text (no GPU needed)."""
