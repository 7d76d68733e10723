"""Beam's side of inference: the ModelHandler, the runner that turns requests into engine calls, and the
request/response types that cross the process boundary. Holds no prompt wording (tasks bring their templates)
and no torch code (``gemma_ops`` is the engine)."""
