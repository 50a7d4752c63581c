"""Release defaults of the artifact parameters.

The publish step renders the Marketplace template with the published image and zip
(``python -m template_gen --image-uri ... --lambda-bucket ... --lambda-key ...``); the committed template
carries these development values.
"""

CONTAINER_IMAGE_URI = "111122223333.dkr.ecr.us-east-1.amazonaws.com/dicom-store-scp:0.1.0"
LAMBDA_ARTIFACT_BUCKET = "dicom-store-scp-artifacts-111122223333-us-east-1"
LAMBDA_ARTIFACT_KEY = "functions/dicom-store-scp-functions-0.1.0.zip"

# Only ECR images: the execution role's pull permission is scoped to the image's repository ARN, which the
# template derives from the URI (account, region, repository path).
_REGISTRY = r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com"
_TAG_OR_DIGEST = r"(:[A-Za-z0-9._-]{1,128}|@sha256:[a-f0-9]{64})"
ECR_IMAGE_PATTERN = rf"^{_REGISTRY}/[a-z0-9._/-]+{_TAG_OR_DIGEST}$"
