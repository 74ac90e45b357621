"""The core flows: intake, kitchen, payment and saga, notification, status and score projections.

Public names load lazily, so ``import pizzashop.core.menu`` alone stays light.
"""

from __future__ import annotations

from pizzashop.core.lazy import lazy_exports

_EXPORTS = {
    "Kitchen": "services.kitchen",
    "Mailer": "services.mailer",
    "Menu": "pizzashop.core.menu",
    "MenuItem": "pizzashop.core.menu",
    "Notifier": "services.notification",
    "OrderIntake": "services.intake",
    "OrderRequest": "services.intake",
    "PaymentSaga": "services.payment",
    "ScoreProjection": "services.scores",
    "ScoreQueries": "services.scores",
    "SmtpSink": "services.mailer",
    "StatusProjection": "services.status",
    "StatusQueries": "services.status",
    "load_menu": "pizzashop.core.menu",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
