"""Side-by-side ASR benchmark (issue 6): ``python -m bench`` / ``make bench``."""
