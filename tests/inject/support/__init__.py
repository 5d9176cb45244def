"""Helpers of the webhook and chart tests: ``admission`` (review bodies, patches applied, the
webhook's serving TLS files)."""
