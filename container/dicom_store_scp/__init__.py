"""DICOM Store SCP that lands every received instance durably in a local folder or Amazon S3."""

__version__ = "0.1.0"
