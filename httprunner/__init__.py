"""httprunner: run commands on request over a small HTTP JSON API."""

__version__ = "0.1.0"
