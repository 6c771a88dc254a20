"""Batch transcription on Ray Data: ``python -m batch INPUT… --output DIR`` (see docs/deployment.md, Scale-out)."""
