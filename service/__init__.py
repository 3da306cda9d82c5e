"""lwl-vos microservice: stateless api, workers holding trackers, store and broker, Python SDK.

Knows nothing of the network's maths: the worker only calls the `model.api` contract.
"""
