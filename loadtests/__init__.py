"""Locust load and fault tests against a real Focal server on loopback (``python -m loadtests.run``)."""
