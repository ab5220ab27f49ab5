"""Calls: the lifecycle state machine, the call's event log, transcripts and metrics."""
