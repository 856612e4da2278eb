"""Packaging for httprunner: the library, the twistd dropin and the client."""

from setuptools import setup

setup(
    name="httprunner",
    version="0.1.0",
    description="A Twisted daemon that runs whitelisted commands over a small HTTP JSON API",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    # "twisted.plugins" is listed so the dropin is installed; there is no
    # __init__.py in twisted/ or twisted/plugins/ (it would shadow Twisted).
    packages=["httprunner", "httprunner.callbacks", "httprunner.store", "httprunner.web", "twisted.plugins"],
    package_data={
        "httprunner": ["openapi.json"],
        # the dashboard (/ui/): plain files, no build step
        "httprunner.web": ["*.html", "*.css", "*.js", "*.svg"],
        "twisted": ["plugins/httprunner_plugin.py"],
    },
    # Lower bounds: the oldest releases the whole suite passes with.  Upper
    # bounds: Twisted, klein and treq are calendar-versioned and remove
    # deprecated APIs after a year, so they stop before the next year's
    # releases; prometheus-client and idna before their next major version.
    # docs/decisions.rst, "Decisions beyond the design", says why; constraints.txt
    # pins what CI last passed with.
    install_requires=[
        "Twisted[tls]>=26.10,<27",
        "idna>=3,<4",
        "klein>=23.12,<25",
        "treq>=23.11,<27",
        "prometheus-client>=0.23.1,<1",
        # the cluster store (--store postgresql://): psycopg 3 with its own libpq
        "psycopg[binary]>=3.2,<4",
        "attrs>=23.1",
        "werkzeug>=2",
        "zope.interface>=6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "schemathesis>=4.30",
            # the docs parse as reStructuredText (tests/test_docs.py)
            "docutils>=0.20",
            # browser tests: the Python package only; the browser is Debian's
            # chromium (a Playwright browser download does not work here)
            "playwright>=1.45",
        ],
        # The code health checks .ci/run runs before the tests.
        "dev": [
            "ruff>=0.17",
            "mypy>=2.4",
            "mypy-zope>=1.0.17",
        ],
    },
    entry_points={
        "console_scripts": ["httprunner-client = httprunner.client:main"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
    ],
)
