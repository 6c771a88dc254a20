"""Batch transcription on Ray Data: ``python -m batch INPUT… --output DIR`` (see README, Scale-out)."""
