"""Running as a daemon: systemd socket activation, sd_notify, and logging that
journald understands (its native protocol: one entry per record, with
fields). Stdlib only; no libsystemd binding.

The server calls these building blocks; daemons may use them directly too.
"""

from .activation import ListenFd, adopt_listener, inherited_listener_at, inherited_listeners, listen_fds
from .journal import JournalHandler
from .logs import (
    JournalFormatter,
    RateLimitFilter,
    install_daemon_logging,
    journal_socket_exists,
    stream_is_journal,
)
from .notify import Notifier, notify

__all__ = [
    "JournalFormatter",
    "JournalHandler",
    "ListenFd",
    "Notifier",
    "RateLimitFilter",
    "adopt_listener",
    "inherited_listener_at",
    "inherited_listeners",
    "install_daemon_logging",
    "journal_socket_exists",
    "listen_fds",
    "notify",
    "stream_is_journal",
]
