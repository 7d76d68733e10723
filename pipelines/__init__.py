"""The Beam pipeline: options, IO, the builder and the ``python -m pipelines.batch_inference`` entry point."""
