"""Completion callbacks: URL checks, the target guard, signing, delivery with retries.

One module a concern, each importing only those before it:

- :mod:`.urls`: parsing and normalising callback URLs, the check at submission;
- :mod:`.guard`: which target addresses are allowed (``--callback-allow``);
- :mod:`.signing`: the secret file and Standard Webhooks signatures;
- :mod:`.transport`: HTTP that connects only to checked addresses, reads little;
- :mod:`.delivery`: the delivery record, the :class:`Notifier` (retries,
  deadlines, shutdown, the outbox hooks) and the runner observer.
"""

from httprunner.callbacks.delivery import (
    CANCELED_ERROR,
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    DELIVERY_REFUSED,
    DELIVERY_STATES,
    RESPONSE_READ_LIMIT,
    SHUTDOWN_ERROR,
    CallbackDelivery,
    CallbackJob,
    CallbackOnFinish,
    DeliveryJSON,
    Notifier,
)
from httprunner.callbacks.guard import CallbackGuard
from httprunner.callbacks.signing import load_callback_secret, sign_webhook
from httprunner.callbacks.transport import EndpointFactory
from httprunner.callbacks.urls import (
    MAX_CALLBACK_URL_BYTES,
    CallbackTarget,
    CallbackURLError,
    check_callback_url,
    normalize_ipv4,
    parse_callback_url,
)

__all__ = [
    "CANCELED_ERROR",
    "DELIVERY_DELIVERED",
    "DELIVERY_FAILED",
    "DELIVERY_PENDING",
    "DELIVERY_REFUSED",
    "DELIVERY_STATES",
    "MAX_CALLBACK_URL_BYTES",
    "RESPONSE_READ_LIMIT",
    "SHUTDOWN_ERROR",
    "CallbackDelivery",
    "CallbackGuard",
    "CallbackJob",
    "CallbackOnFinish",
    "CallbackTarget",
    "CallbackURLError",
    "DeliveryJSON",
    "EndpointFactory",
    "Notifier",
    "check_callback_url",
    "load_callback_secret",
    "normalize_ipv4",
    "parse_callback_url",
    "sign_webhook",
]
