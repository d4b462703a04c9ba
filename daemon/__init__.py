"""CleanInbox: a self-hosted inbox-triage daemon (run-time package; needs no torch)."""

__version__ = "0.1.0"
