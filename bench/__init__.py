"""Benchmarks of the pipeline's stages, run as modules (`python -m bench.<stage>`); results in reports/bench/."""
