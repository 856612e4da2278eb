"""Sphinx configuration: ``sphinx-build docs docs/_build`` (plain reStructuredText, no extensions)."""

project = "httprunner"
master_doc = "index"
exclude_patterns = ["_build", "images"]
