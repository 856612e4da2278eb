"""twistd dropin for httprunner.

Every twistd run imports every dropin, so this one imports nothing but
ServiceMaker: the real work lives in httprunner.tap.
"""

from twisted.application.service import ServiceMaker

httprunner = ServiceMaker(
    "httprunner",
    "httprunner.tap",
    "Run commands on request over a small HTTP JSON API.",
    "httprunner",
)
