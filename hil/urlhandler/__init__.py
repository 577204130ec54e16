"""pyserial URL handlers of the rig: ``pump://`` is a virtual pump in this process.

    import serial
    import hil.urlhandler

    hil.urlhandler.register()
    port = serial.serial_for_url("pump://?preset=low-reservoir", timeout=1)

``register()`` adds this package to ``serial.protocol_handler_packages`` (once), which is how
pyserial finds handlers for schemes it does not ship (see pyserial's ``serial_for_url``).
"""

from __future__ import annotations

import serial

__all__ = ["register"]


def register() -> None:
    """Make ``pump://`` URLs openable with ``serial.serial_for_url``. Idempotent."""
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)
