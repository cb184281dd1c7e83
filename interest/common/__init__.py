"""Helpers that several tasks share, below the tasks: streamed reads of the prepared
events and sequences, windows over a user's history and the future-window protocol,
history matrices, exact top-N search, and tag vocabularies. Nothing here imports a task,
the trainer or the evaluator."""
