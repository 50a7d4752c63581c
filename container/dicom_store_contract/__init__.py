"""The facts the SCP, the import functions and the template share, each written once.

``layout``: where a batch's objects and its manifest live. ``manifest``: the manifest's fields, version, build and
parse. ``limits``: AWS HealthImaging's quotas and the product's batch limits, each with the page it comes from.
``uids``: what a DICOM UID looks like, checked by every part that takes one. ``audit_messages``: the DICOM audit
messages (PS3.15 A.5) the SCP and the import functions write; ``audit_ingest``: the ingest outcome in HealthImaging
as one of them, and its delivery to the audit log group.

Standard library only: the SCP image and the Lambda zip both ship this package (container/Dockerfile,
release/package.py), and neither may pull a dependency in through it. docs/contracts.md describes it.
"""
