"""lwl-vos microservice: stateless api, workers holding trackers, store and broker, Python SDK.

Knows nothing of the network's maths: the worker only calls the `model.api` contract.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lwl-vos")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
