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
    install_requires=[
        "Twisted[tls]>=24.7",
        "idna>=3",
        "klein>=23.12",
        "treq>=23.11",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "schemathesis>=4.30",
            # browser tests: the Python package only; the browser is Debian's
            # chromium (a Playwright browser download does not work here)
            "playwright>=1.45",
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
