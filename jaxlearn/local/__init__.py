"""Layer-local (backprop-free) learning rules."""
