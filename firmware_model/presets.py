"""Ready-made situations a programmer tester asks for, and the ``--config`` table. Pure.

    pump = make_pump("eri", PumpConfig())      # a pump that has just reached ERI
    device = make_device("eri", PumpConfig(), DeviceConfig(test_role=True), TEST_KEY_SET)
    device, report = boot_device("eri", PumpConfig(), DeviceConfig(), TEST_KEY_SET)  # with memory
    pump_cfg, device_cfg = configs_from_mapping(tomllib.loads(text))

Every preset starts from the same therapy - the reservoir filled to capacity (20 mL on the
default pump) with baclofen at 500 ug/mL, 300 ug/day continuous - and then lives the pump's
life on virtual time, event by event, until the situation arises: the alarms, the log, the
delivered volume and the battery all agree with each other, as on a real pump.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from protocol_spec.enums import AlarmCode, FaultKind
from protocol_spec.security import KeySet

from .config import BatteryConfig, PumpConfig, load_toml
from .device import Device, DeviceConfig, nv_layout
from .nvm import BootReport, NvStore, WriteHook
from .pump import Plant, Pump
from .simulate import continuous_program
from .units import NG_PER_UG, NL_PER_ML

__all__ = [
    "DEFAULT_CONCENTRATION_UG_PER_ML",
    "DEFAULT_DOSE_NG_PER_DAY",
    "PRESETS",
    "ConfigError",
    "boot_device",
    "configs_from_mapping",
    "configs_from_toml",
    "make_device",
    "make_pump",
    "preset_image",
]

DEFAULT_CONCENTRATION_UG_PER_ML = 500
DEFAULT_DOSE_NG_PER_DAY = 300 * NG_PER_UG

PRESETS: dict[str, str] = {
    "default": "filled to capacity at 500 ug/mL, 300 ug/day continuous, no alarm",
    "low-reservoir": "the therapy run until LOW_RESERVOIR is raised (2 mL left: about 30 days on 20 mL)",
    "empty": "the therapy run without a refill until EMPTY_RESERVOIR stops the motor",
    "motor-stall": "the default pump with MOTOR_STALL active (delivery held)",
    "eri": "years of therapy with a refill at every LOW_RESERVOIR, until the battery reaches ERI",
    "eos": "years of therapy with a refill at every LOW_RESERVOIR, until the battery reaches EOS",
}
"""Preset name -> one line saying what the pump is like when it starts."""


class ConfigError(ValueError):
    """A configuration table that cannot be used, with what is allowed."""


_HORIZON_EVENTS = 1_000_000
"""A preset that has not arisen after this many events never will (a configuration problem)."""


def make_pump(preset: str | None, config: PumpConfig) -> Pump:
    """A pump in the situation ``preset`` names (None or "default": filled and running)."""
    name = preset or "default"
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    pump = Pump(config)
    pump.refill(0, config.reservoir_capacity_nl, DEFAULT_CONCENTRATION_UG_PER_ML)
    pump.commit_program(continuous_program(DEFAULT_DOSE_NG_PER_DAY, DEFAULT_CONCENTRATION_UG_PER_ML))
    if name == "low-reservoir":
        _run_until(pump, lambda p: p.alarms.is_active(AlarmCode.LOW_RESERVOIR), refill=False, what=name)
    elif name == "empty":
        _run_until(pump, lambda p: p.alarms.is_active(AlarmCode.EMPTY_RESERVOIR), refill=False, what=name)
    elif name == "motor-stall":
        pump.inject_fault(FaultKind.MOTOR_STALL)
    elif name == "eri":
        _run_until(pump, lambda p: p.eri_at_ms is not None, refill=True, what=name)
        if pump.alarms.is_active(AlarmCode.LOW_RESERVOIR):
            _refill_to_full(pump)  # the situation is ERI alone
    elif name == "eos":
        _run_until(pump, lambda p: p.eos_at_ms is not None, refill=True, what=name)
    return pump


def make_device(
    preset: str | None, pump_config: PumpConfig, device_config: DeviceConfig, keys: KeySet, *, boot_counter: int = 1
) -> Device:
    """The preset's pump behind the protocol (what ``pumprig serve`` and ``pump://`` run)."""
    return Device(make_pump(preset, pump_config), keys, config=device_config, boot_counter=boot_counter)


def preset_image(
    preset: str | None, pump_config: PumpConfig, device_config: DeviceConfig, keys: KeySet
) -> tuple[bytes, Plant]:
    """The preset's pump as its firmware would have committed it to a non-volatile image that
    was never booted (``nv_layout``: the boot record blank, the state record written), and
    the plant (reservoir, battery) the image belongs with: ``Device.boot(..., image, plant)``."""
    pump = make_pump(preset, pump_config)
    store = NvStore(nv_layout(pump_config, device_config))
    Device(pump, keys, config=device_config, store=store).checkpoint()
    return store.image, pump.plant()


def boot_device(
    preset: str | None,
    pump_config: PumpConfig,
    device_config: DeviceConfig,
    keys: KeySet,
    *,
    host_ms: int = 0,
    entropy: Callable[[int], bytes] = secrets.token_bytes,
    on_write: WriteHook | None = None,
) -> tuple[Device, BootReport]:
    """A device with non-volatile memory, booted (boot counter 1) into the preset's situation
    (None or "default": filled and running), so that resets, power cuts and memory faults
    reboot it as a real pump's. ``on_write`` sees every physical write from the boot on
    (the image before it is ``device.store.image`` minus those writes: ``preset_image``)."""
    image, plant = preset_image(preset, pump_config, device_config, keys)
    return Device.boot(
        pump_config,
        keys,
        config=device_config,
        image=image,
        plant=plant,
        host_ms=host_ms,
        entropy=entropy,
        on_write=on_write,
    )


def _refill_to_full(pump: Pump) -> None:
    pump.refill(pump.acc.true_reservoir_nl, pump.config.reservoir_capacity_nl, pump.concentration_ug_per_ml)


def _run_until(pump: Pump, arisen: Callable[[Pump], bool], *, refill: bool, what: str) -> None:
    """Walk virtual time from event to event until ``arisen``; refill at LOW_RESERVOIR if asked."""
    for _ in range(_HORIZON_EVENTS):
        if arisen(pump):
            return
        nxt = pump.next_event_ms()
        if nxt is None:
            break
        pump.advance(nxt)
        if refill and pump.alarms.is_active(AlarmCode.LOW_RESERVOIR) and pump.eos_at_ms is None and not arisen(pump):
            _refill_to_full(pump)
    if not arisen(pump):
        raise ValueError(f"preset {what!r}: the situation never arises with this configuration")


# ---------------------------------------------------------------------- the --config table

_PUMP_INTS = tuple(
    f.name for f in dataclasses.fields(PumpConfig) if f.name not in ("battery", "limits", "reservoir_capacity_nl")
)
_BATTERY_INTS = tuple(f.name for f in dataclasses.fields(BatteryConfig))
_DEVICE_FIELDS: dict[str, type] = {
    "serial_number": str,
    "model": str,
    "session_timeout_ms": int,
    "max_sessions": int,
}


def configs_from_mapping(doc: Mapping[str, Any]) -> tuple[PumpConfig, DeviceConfig]:
    """The pump's and the device's parameters from a parsed TOML table.

    Top level: ``reservoir_ml`` (20 or 40) and any integer ``PumpConfig`` field
    (``step_volume_nl``, ``stroke_error_nl_per_step``, ``low_reservoir_threshold_nl``, ...);
    a ``[battery]`` table of ``BatteryConfig`` fields; a ``[device]`` table with
    ``serial_number``, ``model``, ``session_timeout_ms``, ``max_sessions``. Unknown keys and
    values out of range raise ValueError saying what is allowed.
    """
    known = {"reservoir_ml", "battery", "device", *_PUMP_INTS}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    changes: dict[str, Any] = {name: _int(doc, name, "") for name in _PUMP_INTS if name in doc}
    battery = _table(doc, "battery")
    bad = sorted(set(battery) - set(_BATTERY_INTS))
    if bad:
        raise ValueError(f"[battery]: unknown key(s) {', '.join(bad)}; known: {', '.join(_BATTERY_INTS)}")
    if battery:
        changes["battery"] = BatteryConfig(**{k: _int(battery, k, "battery.") for k in battery})
    reservoir_ml = _int(doc, "reservoir_ml", "") if "reservoir_ml" in doc else 20
    device = _table(doc, "device")
    bad = sorted(set(device) - set(_DEVICE_FIELDS))
    if bad:
        raise ValueError(f"[device]: unknown key(s) {', '.join(bad)}; known: {', '.join(_DEVICE_FIELDS)}")
    device_changes: dict[str, Any] = {}
    for key, value in device.items():
        kind = _DEVICE_FIELDS[key]
        if kind is int:
            device_changes[key] = _int(device, key, "device.")
        elif not isinstance(value, str):
            raise ConfigError(f"device.{key} is text, not {value!r}")
        else:
            device_changes[key] = value
    try:
        pump_config = PumpConfig.profile(reservoir_ml, **changes)
        device_config = dataclasses.replace(DeviceConfig(), **device_changes)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from exc
    if pump_config.reservoir_capacity_nl < NL_PER_ML:
        raise ValueError("the reservoir must hold at least 1 mL")
    return pump_config, device_config


def configs_from_toml(path: Path) -> tuple[PumpConfig, DeviceConfig]:
    """``configs_from_mapping`` of a TOML file; every problem is a ValueError naming the file."""
    doc = load_toml(path)
    try:
        return configs_from_mapping(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} is a table ([{key}]), not {value!r}")
    return value


def _int(doc: Mapping[str, Any], key: str, prefix: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{prefix}{key} is a whole number, not {value!r}")
    return value
