"""Running as a daemon: systemd socket activation, sd_notify, and logging that
journald understands. Stdlib only; no libsystemd binding.

The server calls these building blocks; daemons may use them directly too.
"""

from .activation import ListenFd, adopt_listener, inherited_listener_at, inherited_listeners, listen_fds
from .notify import Notifier, notify

__all__ = [
    "ListenFd",
    "Notifier",
    "adopt_listener",
    "inherited_listener_at",
    "inherited_listeners",
    "listen_fds",
    "notify",
]
