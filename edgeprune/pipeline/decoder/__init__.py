"""Decoder language models cut to a budget on the time per generated token (run.py orders the
stages; shape.py, importance.py, cut.py, step.py, search.py, tokens.py, recover.py, verify.py and
report.py are what they hand off to)."""
