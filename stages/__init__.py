"""The pipeline's stages, one module each, run as `python -m stages.<name>` (see dvc.yaml)."""

import os
import sys

# Stage logs are read by people (and streamed into Prefect): no progress bars, no telemetry.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _excepthook(kind, value, traceback):
    """Bad params are the user's to fix: one line naming the file and key, no traceback (SPECIALIST_DEBUG=1: the
    traceback too)."""
    from stages.common import ParamsError

    if issubclass(kind, ParamsError) and not os.environ.get("SPECIALIST_DEBUG"):
        print(f"error: {value}", file=sys.stderr)
        return
    sys.__excepthook__(kind, value, traceback)


sys.excepthook = _excepthook
