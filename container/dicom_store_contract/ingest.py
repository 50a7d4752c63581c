"""How instances reach AWS HealthImaging: the ingest modes, and the DICOMweb store service facts the SCP (which
calls it), the template (which grants it) and the docs share.

- ``import`` (the default): the C-STORE success means "durably in S3"; a batch's manifest starts an import job.
- ``stow``: the C-STORE success means "in HealthImaging": each instance is sent by STOW-RS (StoreDICOM) and
  answered only once the response lists it as stored.
- ``stow-batched`` (planned, not accepted yet): S3 first as in import mode, the batch then stored by STOW-RS
  instead of an import job.
"""

from __future__ import annotations

from .limits import STORING_PAGE

IMPORT = "import"
STOW = "stow"
MODES: tuple[str, ...] = (IMPORT, STOW)
PLANNED: tuple[str, ...] = ("stow-batched",)
DEFAULT = IMPORT

# SigV4 signing name of the DICOMweb APIs (STORING_PAGE's examples sign with aws:amz:<region>:medical-imaging).
SIGNING_SERVICE = "medical-imaging"
# The IAM action of StoreDICOM and StoreDICOMStudy; the task role gets it on its data store only.
STORE_ACTION = "medical-imaging:StoreDICOM"
SOURCE = STORING_PAGE


def dicomweb_base_url(region: str, datastore_id: str, url_suffix: str = "amazonaws.com") -> str:
    """The data store's DICOMweb base URL; StoreDICOM is ``POST <base>/studies``."""
    return f"https://dicom-medical-imaging.{region}.{url_suffix}/datastore/{datastore_id}"
