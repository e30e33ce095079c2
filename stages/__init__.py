"""The pipeline's stages, one module each, run as `python -m stages.<name>` (see dvc.yaml)."""

import os

# Stage logs are read by people (and streamed into Prefect): no progress bars, no telemetry.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
