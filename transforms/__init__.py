"""Tasks: one module per task kind (its prompt wording, request building, parsing into typed rows), the
registry of task names, the task settings, and InferTask, the Beam transform that runs any task."""
