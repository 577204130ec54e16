"""``pump://``: a virtual pump inside this process, behind pyserial's ``Serial`` interface.

URL: ``pump://[?option=value&...]``

    preset=NAME       start in a ready-made situation (firmware_model.presets.PRESETS)
    time_scale=N      the pump's clock runs N times faster than real time (default 1)
    virtual=1         host time stands still: only TEST_ADVANCE_TIME moves the pump's clock
    test_role=0       start without the test role (default 1: on, as ``pumprig serve``)
    key_file=PATH     the device's key set (default: the published TEST keys)
    config=PATH       pump and device parameters (TOML, as ``pumprig serve --config``)
    state=PATH        non-volatile memory in a file, as ``pumprig serve --state`` (a missing
                      file is created factory-new, or in the preset's situation)

Each ``open()`` makes a fresh pump (with ``state``: boots the one in the file, which stays
locked until ``close()``), reachable as ``port.device`` for white-box checks. The
device answers inside ``write()``, so replies are waiting before ``write`` returns and no
thread is needed. ``read(size)`` returns once it has ``size`` bytes or the timeout expires;
while it waits, host time moves and alarm notifications may arrive. With ``virtual=1``
nothing can arrive while waiting, so ``read`` returns at once with what is queued.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from firmware_model.config import PumpConfig
from firmware_model.device import Device, DeviceConfig
from firmware_model.presets import PRESETS, configs_from_toml, make_device
from protocol_spec.security import TEST_KEY_SET, KeyFileError, KeySet

from ..serve import StateFile, StateFileError, open_state

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["RX_BUFFER_BYTES", "PumpUrl", "Serial", "parse_pump_url"]

RX_BUFFER_BYTES = 1 << 20
"""Bytes the pump may queue for a client that does not read, before the oldest are dropped."""
_TICK_S = 0.1
_USAGE = "pump://[?preset=NAME&time_scale=N&virtual=1&test_role=0&key_file=PATH&config=PATH&state=PATH]"


@dataclasses.dataclass(frozen=True)
class PumpUrl:
    """What a ``pump://`` URL asks for."""

    preset: str | None = None
    time_scale: int = 1
    virtual: bool = False
    test_role: bool = True
    key_file: Path | None = None
    config_file: Path | None = None
    state_file: Path | None = None


def parse_pump_url(url: str) -> PumpUrl:
    """Parse a ``pump://`` URL; ValueError says what is wrong and what is allowed."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "pump":
        raise ValueError(f"expected {_USAGE}, not {url!r}")
    if parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"a pump:// URL takes options after '?' only: {_USAGE}")
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ValueError(f"malformed options in {url!r}: {_USAGE}") from exc
    changes: dict[str, Any] = {}
    for option, values in query.items():
        value = values[-1]
        if option == "preset":
            if value not in PRESETS:
                raise ValueError(f"unknown preset {value!r}: choose one of {', '.join(PRESETS)}")
            changes["preset"] = value
        elif option == "time_scale":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"time_scale is a whole number, at least 1, not {value!r}")
            changes["time_scale"] = int(value)
        elif option in ("virtual", "test_role"):
            if value not in ("0", "1"):
                raise ValueError(f"{option} is 0 or 1, not {value!r}")
            changes[option] = value == "1"
        elif option in ("key_file", "config", "state"):
            if not value:
                raise ValueError(f"{option} needs a path")
            changes["key_file" if option == "key_file" else f"{option}_file"] = Path(value)
        else:
            raise ValueError(f"unknown option {option!r}: {_USAGE}")
    return PumpUrl(**changes)


class Serial(SerialBase):
    """A serial port whose other end is a virtual pump in this process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device: Device | None = None
        self.state: StateFile | None = None
        self.options = PumpUrl()
        self._rx = bytearray()
        self.dropped_rx_bytes = 0
        self._start_ns = 0
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ open and close

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self.portstr is None:
            raise SerialException("Port must be configured before it can be used.")
        try:
            self.options = opts = parse_pump_url(self.portstr)
            pump_config, device_config = (
                configs_from_toml(opts.config_file) if opts.config_file is not None else (PumpConfig(), DeviceConfig())
            )
            keys = TEST_KEY_SET if opts.key_file is None else KeySet.load(opts.key_file)
            device_config = dataclasses.replace(device_config, test_role=opts.test_role)
            if opts.state_file is None:
                self.device = make_device(opts.preset, pump_config, device_config, keys)
            else:
                self.device, self.state, _ = open_state(
                    opts.state_file, pump_config, device_config, keys, preset=opts.preset
                )
        except (ValueError, KeyFileError, StateFileError) as exc:
            raise SerialException(f"cannot open {self.portstr}: {exc}") from exc
        self._rx.clear()
        self._start_ns = time.monotonic_ns()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._rx.clear()
        state, self.state = self.state, None
        if state is not None:
            state.close()

    def _reconfigure_port(self) -> None:
        """Baud rate, parity and the rest mean nothing to an in-process pump."""

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    # ------------------------------------------------------------------ the pump's time

    def host_now_ms(self) -> int:
        """The link's time: real monotonic time since ``open``, scaled; 0 forever if virtual."""
        if self.options.virtual:
            return 0
        return (time.monotonic_ns() - self._start_ns) * self.options.time_scale // 1_000_000

    def _device(self) -> Device:
        if not self.is_open or self.device is None:
            raise PortNotOpenError()
        return self.device

    def _pull(self) -> None:
        """Let time pass on the pump, then take what it queued for us."""
        device = self._device()
        device.advance(self.host_now_ms())
        data = device.data_to_send()
        if data:
            self._rx += data
            excess = len(self._rx) - RX_BUFFER_BYTES
            if excess > 0:
                del self._rx[:excess]
                self.dropped_rx_bytes += excess

    def _wait_s(self, left_s: float | None) -> float:
        """How long to sleep before looking again: a tick, the pump's next event, or the timeout."""
        device = self._device()
        wait = _TICK_S
        nxt = device.pump.next_event_ms()
        if nxt is not None:
            wait = min(wait, max(1, nxt - device.pump_time_ms) / self.options.time_scale / 1000)
        wait = max(wait, 0.001)
        return wait if left_s is None else min(wait, left_s)

    # ------------------------------------------------------------------ data

    @property
    def in_waiting(self) -> int:
        self._pull()
        return len(self._rx)

    @property
    def out_waiting(self) -> int:
        self._device()
        return 0

    def read(self, size: int = 1) -> bytes:
        self._pull()
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._rx) < size and not self.options.virtual and timeout != 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(self._wait_s(left))
            self._pull()
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def write(self, b: ReadableBuffer, /) -> int:
        device = self._device()
        data = bytes(memoryview(b))
        device.receive_data(data, self.host_now_ms())
        self._pull()
        return len(data)

    def flush(self) -> None:
        self._device()

    def reset_input_buffer(self) -> None:
        self._pull()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        self._device()

    def cancel_read(self) -> None:
        """Nothing to cancel: a read never waits for another thread."""

    def cancel_write(self) -> None:
        """Nothing to cancel: a write never blocks."""

    # ------------------------------------------------------------------ modem lines (a null modem)

    @property
    def cts(self) -> bool:
        self._device()
        return self._rts_state  # type: ignore[attr-defined,no-any-return]

    @property
    def dsr(self) -> bool:
        self._device()
        return self._dtr_state  # type: ignore[attr-defined,no-any-return]

    @property
    def ri(self) -> bool:
        self._device()
        return False

    @property
    def cd(self) -> bool:
        self._device()
        return True
