"""salesbot: a hybrid sales-call dialogue engine.

The public API is small: load a flow, build an :class:`Engine`, call ``start``/``turn``/``end``.
"""

from engine.errors import FlowValidationError, SalesbotError, SessionNotFound

__all__ = ["FlowValidationError", "SalesbotError", "SessionNotFound"]
