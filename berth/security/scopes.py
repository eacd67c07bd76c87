"""What an API key may be allowed: its scopes.

Kept apart from the key service (SQLAlchemy) because `berth --help` shows the defaults.
"""

from __future__ import annotations

SCOPES = ("predict", "read", "admin")
DEFAULT_SCOPES = ("predict", "read")
