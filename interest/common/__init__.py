"""Helpers that several tasks share, below the tasks: streamed reads of the prepared
events and sequences, windows over a user's history, history matrices and exact top-N
search. Nothing here imports a task, the trainer or the evaluator."""
