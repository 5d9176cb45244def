"""Helpers of the Coordinator's tests: ``asgi``, both APIs in-process."""
