"""What the console reads from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from berth.config import Settings

PREFIX = "/console"
"""Where the console is served."""


@dataclass(frozen=True)
class ConsoleConfig:
    """The browser console of one server process."""

    enabled: bool
    """Serve the console at /console (BERTH_CONSOLE)."""

    read_only: bool
    """Show everything, offer and accept no action (BERTH_CONSOLE_READ_ONLY)."""

    session_seconds: float
    """How long a sign-in lasts (BERTH_CONSOLE_SESSION_SECONDS)."""

    secure_cookies: bool
    """Mark cookies Secure: the server speaks HTTPS (BERTH_TLS_CERT_FILE)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleConfig:
        return cls(
            enabled=settings.console,
            read_only=settings.console_read_only,
            session_seconds=settings.console_session_seconds,
            secure_cookies=settings.tls_cert_file is not None,
        )
