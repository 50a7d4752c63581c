"""The audit trail: DICOM audit messages (PS3.15 A.5) to a file, a CloudWatch Logs group and an ATNA repository.

dicom_store_contract.audit_messages builds them (the import functions build theirs there too), trail.py decides
when, ingest.py adds stow mode's ingest outcomes, sinks.py and syslog.py deliver them, build.py wires them from the
configuration.
"""
