"""The pieces of the ``flowstone`` command line (see :mod:`flowstone.cli`); no public API."""
