"""LWL ("Learning What to Learn for VOS", ECCV 2020) in pure PyTorch.

This package knows nothing of HTTP or processes; `model.api` is the contract the service uses.
"""
