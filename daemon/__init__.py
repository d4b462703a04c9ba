"""CleanInbox: a self-hosted inbox-triage daemon (run-time package; needs no torch).

``daemon`` is also the import name of python-daemon (PyPI). pip merges both into one
``site-packages/daemon/`` and the later install's ``__init__.py`` wins, so the two cannot
share an environment: ``__distribution__`` tells this package apart, and the command line
refuses to start when ``daemon`` is not this one or python-daemon is installed beside it
(see :func:`daemon.cli.import_name_clash`).
"""

__version__ = "0.1.0"
#: Marks this ``daemon`` package as CleanInbox's (python-daemon has no such attribute).
__distribution__ = "cleaninbox"
