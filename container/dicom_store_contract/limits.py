"""Every limit the parts share, one value each, with the page it comes from.

AWS HealthImaging's quotas differ by region and have changed over time: when a page changes, change the row here
and every part follows (the SCP's batch defaults and bounds, the manifest check in TriggerImport, the template's
parameter defaults and constraints, docs/contracts.md).

Sizes: AHI's pages say "GB" without saying 1000³ or 1024³; we read the smaller (10 GB = 10·1000³ bytes), so a
batch within our limit is within AHI's under either reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

GB = 1000**3

_GUIDE = "https://docs.aws.amazon.com/healthimaging/latest/devguide/"
QUOTAS_PAGE = _GUIDE + "endpoints-quotas.html#quotas"
THROTTLING_PAGE = _GUIDE + "throttling-limits.html"
IMPORT_JOBS_PAGE = _GUIDE + "understanding-import-jobs.html"
ELEMENT_CONSTRAINTS_PAGE = _GUIDE + "dicom-element-constraints.html"
STORING_PAGE = _GUIDE + "dicomweb-storing.html"
START_IMPORT_JOB_API = "https://docs.aws.amazon.com/healthimaging/latest/APIReference/API_StartDICOMImportJob.html"
START_EXECUTION_API = "https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html"
DICOM_UID_RULES = "https://dicom.nema.org/medical/dicom/current/output/chtml/part05/chapter_9.html"
DICOM_PDU_LENGTH = "https://dicom.nema.org/medical/dicom/current/output/chtml/part08/sect_D.1.html"
BENCHMARKS = "docs/benchmarks.md"


ENDPOINTS_PAGE = _GUIDE + "endpoints-quotas.html#endpoints"


@dataclass(frozen=True)
class Region:
    """A region with an AWS HealthImaging endpoint: the stack runs there and nowhere else."""

    code: str
    name: str


# ENDPOINTS_PAGE's table of service endpoints (English page, read 2026-12-04; its translations lag behind and
# still omit eu-west-2). The template's region rule, the cfn-lint runs, the regions `make publish` serves and
# docs/deployment.md all read this table.
HEALTHIMAGING_REGION_TABLE: tuple[Region, ...] = (
    Region("us-east-1", "US East (N. Virginia)"),
    Region("us-west-2", "US West (Oregon)"),
    Region("ap-southeast-2", "Asia Pacific (Sydney)"),
    Region("eu-west-1", "Europe (Ireland)"),
    Region("eu-west-2", "Europe (London)"),
)
HEALTHIMAGING_REGIONS: tuple[str, ...] = tuple(region.code for region in HEALTHIMAGING_REGION_TABLE)


@dataclass(frozen=True)
class Limit:
    """One row of the table: a value, what it bounds, and where it comes from."""

    name: str
    value: int | float
    unit: str
    meaning: str
    source: str
    # For AHI quotas: whether a customer can have it raised (Service Quotas). None: not an AHI quota.
    adjustable: bool | None = None
    # Regions whose default differs from ``value``.
    regional: Mapping[str, int | float] = field(default_factory=lambda: MappingProxyType({}))
    note: str = ""
    # For AHI's element constraints: the DICOM keyword and tag of the element the limit applies to.
    keyword: str = ""
    tag: int = 0

    def in_region(self, region: str) -> int | float:
        return self.regional.get(region, self.value)

    @property
    def whole(self) -> int:
        """The value as an integer, for limits that count things."""
        if int(self.value) != self.value:
            raise TypeError(f"{self.name} is {self.value}, not a whole number")
        return int(self.value)


# --- AWS HealthImaging: import jobs -------------------------------------------------------------------------

FILES_PER_IMPORT_JOB = Limit(
    "Files per import job",
    5_000,
    "files",
    "DICOM P10 files one StartDICOMImportJob imports",
    QUOTAS_PAGE,
    adjustable=True,
)
BYTES_PER_IMPORT_JOB = Limit(
    "Bytes per import job",
    10 * GB,
    "bytes",
    "total size of the files one import job imports",
    QUOTAS_PAGE,
    adjustable=False,
    note="10 GB; read as 10·1000³ bytes, the smaller of the two readings",
)
NESTED_FOLDERS_PER_IMPORT_JOB = Limit(
    "Nested folders per import job",
    10_000,
    "folders",
    "folders below inputS3Uri one import job walks",
    QUOTAS_PAGE,
    adjustable=False,
    note="a batch holds one folder per study and one per series; the SCP starts a new batch before an instance"
    " would add the folder past this (IMPORT_JOBS_PAGE too)",
)
BYTES_PER_FILE = Limit(
    "Bytes per file",
    10 * GB,
    "bytes",
    "size of one DICOM P10 file in an import job",
    QUOTAS_PAGE,
    adjustable=False,
    note="10 GB in the current quota table (an earlier edition said 4 GB)",
)
CONCURRENT_IMPORT_JOBS = Limit(
    "Concurrent import jobs per data store",
    100,
    "jobs",
    "import jobs a data store runs at once; more are refused",
    QUOTAS_PAGE,
    adjustable=True,
    regional=MappingProxyType({"ap-southeast-2": 20}),
)
START_IMPORT_JOB_RATE = Limit(
    "StartDICOMImportJob rate",
    40,
    "requests/s",
    "steady request rate before ThrottlingException",
    THROTTLING_PAGE,
    adjustable=True,
    note="burst 80; earlier editions said 1 request/s, burst 2",
)
START_IMPORT_JOB_BURST = Limit(
    "StartDICOMImportJob burst",
    80,
    "requests/s",
    "short burst before ThrottlingException",
    THROTTLING_PAGE,
    adjustable=True,
)
GET_IMPORT_JOB_RATE = Limit(
    "GetDICOMImportJob rate",
    25,
    "requests/s",
    "steady rate of job status reads (CheckStatus)",
    THROTTLING_PAGE,
    adjustable=True,
    note="burst 50",
)
CLIENT_TOKEN_LENGTH = Limit(
    "clientToken length",
    64,
    "characters",
    "StartDICOMImportJob's idempotency token ([A-Za-z0-9._-]+)",
    START_IMPORT_JOB_API,
)
AHI_UID_LENGTH = Limit(
    "UID length in AHI",
    256,
    "characters",
    "StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID at import",
    ELEMENT_CONSTRAINTS_PAGE,
)

# --- AWS HealthImaging: element constraints at import ("DICOM element constraints") ---------------------------
#
# An instance whose element breaks one of these is refused by the import job; the SCP refuses it at C-STORE
# instead (container/dicom_store_scp/validation.py), checked from the header it already parsed.


def _element(keyword: str, tag: int, value: int, unit: str = "characters", note: str = "") -> Limit:
    group, element = tag >> 16, tag & 0xFFFF
    meaning = f"{keyword} ({group:04X},{element:04X})" + (" value" if unit == "value" else " length")
    return Limit(
        f"{keyword} at import", value, unit, meaning, ELEMENT_CONSTRAINTS_PAGE, note=note, keyword=keyword, tag=tag
    )


ELEMENT_CONSTRAINTS: tuple[Limit, ...] = (
    _element("PatientName", 0x00100010, 256),
    _element("PatientID", 0x00100020, 256),
    _element("PatientBirthDate", 0x00100030, 18),
    _element("PatientSex", 0x00100040, 16),
    _element("StudyDate", 0x00080020, 18, note="and a DICOM date (YYYYMMDD) when present: our reading of 'format'"),
    _element("StudyTime", 0x00080030, 28),
    _element("AccessionNumber", 0x00080050, 256),
    _element("StudyDescription", 0x00081030, 64),
    _element("StudyInstanceUID", 0x0020000D, 256, note="DICOM allows 64: the SCP refuses longer UIDs"),
    _element("StudyID", 0x00200010, 16),
    _element("NumberOfStudyRelatedSeries", 0x00201206, 1_000_000, "value"),
    _element("NumberOfStudyRelatedInstances", 0x00201208, 10_000, "value"),
)

# --- DICOM and Step Functions -------------------------------------------------------------------------------

DICOM_UID_LENGTH = Limit("UID length in DICOM", 64, "characters", "a UID value (PS3.5 §9)", DICOM_UID_RULES)
EXECUTION_NAME_LENGTH = Limit(
    "Execution name length",
    80,
    "characters",
    "a Step Functions execution name (the batch id)",
    START_EXECUTION_API,
)
PDU_SIZE_CEILING = Limit(
    "Largest PDU length",
    2**32 - 1,
    "bytes",
    "the PDU length field is 4 bytes (PS3.8 §9.3)",
    DICOM_PDU_LENGTH,
)

# --- this product's choices, bounded by the rows above ------------------------------------------------------

BATCH_MAX_INSTANCES = Limit(
    "BATCH_MAX_INSTANCES default",
    FILES_PER_IMPORT_JOB.value,
    "files",
    "instances in a batch before the SCP seals it (one batch, one import job)",
    "Files per import job",
)
BATCH_MAX_INSTANCES_CEILING = Limit(
    "Largest BATCH_MAX_INSTANCES",
    50_000,
    "files",
    "for an account whose files-per-job quota was raised (AHI documents no maximum): set it to that quota, never"
    " above; the manifest check in TriggerImport takes up to this many",
    "our choice",
    note="TriggerImport records every instance of a batch in one Lambda run; 50,000 conditional writes fit well"
    " within its 15 minutes",
)
BATCH_MAX_BYTES = Limit(
    "BATCH_MAX_BYTES default",
    BYTES_PER_IMPORT_JOB.value,
    "bytes",
    "bytes in a batch before the SCP seals it",
    "Bytes per import job",
)
MAXIMUM_PDU_SIZE = Limit(
    "MAXIMUM_PDU_SIZE default",
    262_144,
    "bytes",
    "largest PDU the SCP accepts, a longer one is aborted; bounds memory per association (0 = 1 MiB)",
    BENCHMARKS + " section 5",
    note="16 KiB PDUs cost the SCP 1.7x the CPU per instance; 256 KiB x 300 associations, each PDU held once with"
    " at most 64 KiB read ahead: about 94 MiB of receive buffers at most (docs/conformance.md 2.3)",
)
PDU_SIZE_FLOOR = Limit(
    "Smallest MAXIMUM_PDU_SIZE",
    4096,
    "bytes",
    "below this a PDU holds little more than its headers",
    "our choice",
)

# INGEST_MODE=stow sends each instance in a request of its own: the instance and its multipart framing.
BYTES_PER_STOW_REQUEST = Limit(
    "Bytes per StoreDICOM request",
    1 * GB,
    "bytes",
    "DICOM data in one StoreDICOM / StoreDICOMStudy (STOW-RS) request; with INGEST_MODE=stow, one instance",
    STORING_PAGE,
    adjustable=False,
    note="the guide says 1GB",
)

LIMITS: tuple[Limit, ...] = (
    FILES_PER_IMPORT_JOB,
    BYTES_PER_IMPORT_JOB,
    NESTED_FOLDERS_PER_IMPORT_JOB,
    BYTES_PER_FILE,
    BYTES_PER_STOW_REQUEST,
    CONCURRENT_IMPORT_JOBS,
    START_IMPORT_JOB_RATE,
    START_IMPORT_JOB_BURST,
    GET_IMPORT_JOB_RATE,
    CLIENT_TOKEN_LENGTH,
    AHI_UID_LENGTH,
    *ELEMENT_CONSTRAINTS,
    DICOM_UID_LENGTH,
    EXECUTION_NAME_LENGTH,
    PDU_SIZE_CEILING,
    BATCH_MAX_INSTANCES,
    BATCH_MAX_INSTANCES_CEILING,
    BATCH_MAX_BYTES,
    MAXIMUM_PDU_SIZE,
    PDU_SIZE_FLOOR,
)


def table() -> str:
    """The table as Markdown, for docs/contracts.md."""
    rows = ["| limit | value | unit | what it bounds | source |", "|---|---|---|---|---|"]
    for limit in LIMITS:
        value = f"{limit.value:,}"
        if limit.regional:
            value += " (" + ", ".join(f"{region}: {v:,}" for region, v in limit.regional.items()) + ")"
        meaning = limit.meaning + (f"; {limit.note}" if limit.note else "")
        if limit.adjustable is not None:
            meaning += "; adjustable quota" if limit.adjustable else "; fixed quota"
        source = f"[{limit.source.rsplit('/', 1)[-1]}]({limit.source})" if "://" in limit.source else limit.source
        rows.append(f"| {limit.name} | {value} | {limit.unit} | {meaning} | {source} |")
    return "\n".join(rows) + "\n"
