"""Release tooling: the dependency locks, the SCP image, the Lambda zip, and publishing them with the template.

``python -m release`` is the entry point the Makefile calls (``make lock / build / package / publish``).
"""
