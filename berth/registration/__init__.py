"""Registering a model: check that an artifact loads and predicts, store it, record a version.

This sits above the registry and the runtimes: it loads the model to learn its signature and
example rows, then hands the registry what is to be stored (`Registry.add_version`).
"""
