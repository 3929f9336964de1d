"""Packaged Intake 2 catalog (``xda_hybrid.yaml``); load it with :func:`xda_hybrid.catalog`."""
