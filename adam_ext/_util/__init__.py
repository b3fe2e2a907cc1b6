"""Shared utilities of every layer (the bottom of the house): seeds and hold-outs."""
