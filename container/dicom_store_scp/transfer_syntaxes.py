"""The transfer syntaxes this SCP accepts: exactly those AWS HealthImaging can import.

Source: the AHI developer guide, "Supported transfer syntaxes". Anything else is declined at association
negotiation, so nothing is acknowledged that the import would reject later. Keep this the only list.
"""

from pydicom.uid import UID

AHI_IMPORTABLE = (
    UID("1.2.840.10008.1.2"),  # Implicit VR Little Endian
    UID("1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    UID("1.2.840.10008.1.2.1.99"),  # Deflated Explicit VR Little Endian
    UID("1.2.840.10008.1.2.2"),  # Explicit VR Big Endian (retired, still imported)
    UID("1.2.840.10008.1.2.4.50"),  # JPEG Baseline (Process 1)
    UID("1.2.840.10008.1.2.4.51"),  # JPEG Extended (Processes 2 & 4)
    UID("1.2.840.10008.1.2.4.57"),  # JPEG Lossless, Non-Hierarchical (Process 14)
    UID("1.2.840.10008.1.2.4.70"),  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    UID("1.2.840.10008.1.2.4.80"),  # JPEG-LS Lossless
    UID("1.2.840.10008.1.2.4.81"),  # JPEG-LS Lossy (Near-Lossless)
    UID("1.2.840.10008.1.2.4.90"),  # JPEG 2000 Lossless Only
    UID("1.2.840.10008.1.2.4.91"),  # JPEG 2000
    UID("1.2.840.10008.1.2.4.201"),  # HTJ2K Lossless Only
    UID("1.2.840.10008.1.2.4.202"),  # HTJ2K with RPCL Options, Lossless Only
    UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    UID("1.2.840.10008.1.2.5"),  # RLE Lossless
)
