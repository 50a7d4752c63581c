"""The audit trail: DICOM audit messages (PS3.15 A.5) to a file, a CloudWatch Logs group and an ATNA repository.

messages.py builds them, trail.py decides when, sinks.py and syslog.py deliver them, build.py wires them from the
configuration.
"""
