"""Prefect flows that orchestrate the DVC pipeline. They run DVC stages and publish reports; no ML logic lives here."""
