"""Tests of the pipeline: IO, options, the builder, end-to-end runs."""
