"""Common package of ia-atendimento-bot: settings, message models, broker and Redis helpers.

No service imports another service; what they share lives here.
"""

__version__ = "0.1.0"
