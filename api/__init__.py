"""The FastAPI app: placing orders, order status, inspecting scores, the dashboard page."""

from api.app import create_app

__all__ = ["create_app"]
