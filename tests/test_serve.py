"""``pumprig serve`` over a real pty and a real socket, ``pump://`` in-process, ``pumprig test``.

Every served pump runs as a subprocess; every test ends it and closes every fd it opened
(``no_leaks`` checks the fd table of this process before and after).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import serial
from click.testing import CliRunner

import hil.urlhandler
from firmware_model.config import PumpConfig
from firmware_model.presets import PRESETS, ConfigError, configs_from_mapping, make_pump
from hil.cli import cli
from hil.serve_cli import parse_host_port
from hil.testrole_cli import parse_duration_ms
from hil.urlhandler.protocol_pump import parse_pump_url
from programmer.client import Programmer
from programmer.errors import KeyMismatch, NoReply
from protocol_spec import messages as m
from protocol_spec.channel import Channel
from protocol_spec.enums import AlarmCode, AlarmSet, BatteryState, ErrorCode, Feature, Role, TherapyMode
from protocol_spec.security import TEST_KEY_SET, KeySet, generate_key_set
from tests.serving import served

"""Longest a server may take to print its URL (a loaded CI machine)."""


def _test_role(port: serial.Serial, keys: KeySet = TEST_KEY_SET, **options: Any) -> Programmer:
    """A TEST-role programmer on ``port`` (which stays the caller's to close); no I/O yet."""
    return Programmer(port, keys=keys, role=Role.TEST, **options)


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes what it opened (ports, pipes, sockets)."""
    if not Path("/proc/self/fd").is_dir():
        yield
        return
    before = _open_fds()
    yield
    leaked = _open_fds() - before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


@contextmanager
def opened(url: str, timeout: float = 0.5) -> Iterator[serial.Serial]:
    hil.urlhandler.register()
    port = serial.serial_for_url(url, timeout=timeout)
    try:
        yield port
    finally:
        port.close()


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "serve.stderr").read_text()


@pytest.fixture(params=["pty", "tcp"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    args = ["--pty"] if request.param == "pty" else ["--tcp", "127.0.0.1:0"]
    with served(tmp_path, *args) as (proc, url):
        yield proc, url


def _status(url: str) -> m.StatusReply:
    with opened(url) as port, _test_role(port) as prog:
        prog.connect()
        return prog.status()


# ---------------------------------------------------------------------- served: pty and TCP


def test_served_pump_answers_identify_and_a_test_session(
    server: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    proc, url = server
    assert url.startswith(("/dev/pts/", "socket://127.0.0.1:"))
    with opened(url) as port, _test_role(port) as prog:
        ident = prog.identify()
        assert ident.features & Feature.TEST_ROLE
        prog.connect()
        status = prog.status()
        assert status.mode is TherapyMode.CONTINUOUS
        assert status.alarms == AlarmSet(0)
        assert status.reservoir_estimate_nl == 20_000_000
    assert proc.poll() is None
    assert "published TEST key set" in _stderr(tmp_path)


def test_client_vanishing_mid_frame_harms_nobody(server: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = server
    frame = Channel(from_pump=False).request(m.Identify()).data
    with opened(url) as port:  # a whole request whose reply nobody reads, then half a frame
        port.write(frame + frame[: len(frame) // 2])
        port.flush()
    with opened(url) as port:
        port.write(frame[3:9])  # garbage, then a client that leaves
    status = _status(url)  # a second client afterwards: everything works
    assert status.mode is TherapyMode.CONTINUOUS
    assert _status(url).uptime_ms >= status.uptime_ms  # and a third
    assert proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_server_with_exit_0(
    server: tuple[subprocess.Popen[bytes], str], signum: signal.Signals
) -> None:
    proc, url = server
    with opened(url) as port:
        assert _test_role(port).identify().protocol_version == 1
        proc.send_signal(signum)
        assert proc.wait(timeout=5) == 0


def test_pty_client_that_never_reads_cannot_block_the_pump(tmp_path: Path) -> None:
    frames = Channel(from_pump=False).request(m.Identify()).data * 5000
    with served(tmp_path, "--pty") as (proc, url):
        with opened(url) as port:
            port.write(frames)  # 5,000 requests; the replies are never read
            port.flush()
        assert _status(url).mode is TherapyMode.CONTINUOUS  # the next client is served at once
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    assert "bytes dropped" in _stderr(tmp_path)


def test_tcp_new_client_replaces_the_present_one(tmp_path: Path) -> None:
    with served(tmp_path, "--tcp", "127.0.0.1:0") as (proc, url), opened(url) as first:
        assert _test_role(first).identify().max_frame_bytes == 1024
        assert _status(url).mode is TherapyMode.CONTINUOUS  # the second client is served at once
        assert "replaced by" in _stderr(tmp_path)
        assert proc.poll() is None


def test_serve_preset_config_keys_and_time_scale(tmp_path: Path) -> None:
    config = tmp_path / "pump.toml"
    config.write_text(
        'stroke_error_nl_per_step = 5\n[device]\nserial_number = "VP0000042"\nsession_timeout_ms = 3600000\n'
    )  # sessions end after 5 min of host time: 0.3 s at 1000x
    keys = generate_key_set(label="bench")
    key_file = tmp_path / "pump.keys"
    key_file.write_text(keys.to_json())
    args = ["--tcp", "127.0.0.1:0", "--preset", "low-reservoir", "--config", str(config)]
    args += ["--key-file", str(key_file), "--time-scale", "1000"]
    with served(tmp_path, *args) as (_proc, url), opened(url) as port:
        with pytest.raises(KeyMismatch) as refused:
            _test_role(port).connect()  # the published key is not this pump's
        assert refused.value.code is ErrorCode.UNKNOWN_KEY
        with _test_role(port, keys) as prog:
            prog.connect()
            first = prog.status()
            assert first.alarms & AlarmSet.LOW_RESERVOIR
            ident = prog.interrogate()
            assert ident.serial_number == "VP0000042"
            plant = prog.read_plant()
            assert plant.stroke_error_nl_per_step == 5
            time.sleep(0.3)
            later = prog.status()
            assert later.uptime_ms - first.uptime_ms >= 100_000  # 1000x real time
    assert "published TEST key set" not in _stderr(tmp_path)


def test_serve_no_test_role_refuses_test_sessions(tmp_path: Path) -> None:
    with served(tmp_path, "--pty", "--no-test-role") as (_proc, url), opened(url) as port:
        prog = _test_role(port)
        assert not prog.identify().features & Feature.TEST_ROLE
        with pytest.raises(KeyMismatch) as refused:
            prog.connect()
        assert refused.value.code is ErrorCode.UNKNOWN_KEY


def test_test_command_drives_a_served_pump(tmp_path: Path) -> None:
    runner = CliRunner()
    with served(tmp_path, "--tcp", "127.0.0.1:0") as (_proc, url):
        held = runner.invoke(cli, ["test", "--port", url, "hold", "--json"])
        assert held.exit_code == 0, held.output
        before = json.loads(held.output)
        assert before["held"] is True
        adv = runner.invoke(cli, ["test", "--port", url, "advance", "1d", "--json"])
        assert adv.exit_code == 0, adv.output
        assert json.loads(adv.output)["uptime_ms"] == before["uptime_ms"] + 86_400_000
        plant = runner.invoke(cli, ["test", "--port", url, "plant", "--json"])
        assert json.loads(plant.output)["steps_total"] == 600_000 // 250  # one day at 0.6 mL/day
        steps = runner.invoke(cli, ["test", "--port", url, "step-log", "--count", "70", "--json"])
        doc = json.loads(steps.output)
        assert [s["index"] for s in doc["steps"]] == list(range(2400 - 70, 2400))
        assert all(b["at_ms"] - a["at_ms"] == 36_000 for a, b in zip(doc["steps"], doc["steps"][1:], strict=False))
        stall = runner.invoke(cli, ["test", "--port", url, "fault", "motor-stall"])
        assert stall.exit_code == 0, stall.output
        assert _status(url).alarms & AlarmSet.MOTOR_STALL
        released = runner.invoke(cli, ["test", "--port", url, "release"])
        assert "clock running" in released.output


# ---------------------------------------------------------------------- pump:// in-process


def test_pump_url_low_reservoir_preset() -> None:
    status = _status("pump://?preset=low-reservoir")
    assert status.alarms & AlarmSet.LOW_RESERVOIR
    assert status.reservoir_estimate_nl == 2_000_000


def test_pump_url_virtual_time_moves_only_when_advanced() -> None:
    with opened("pump://?virtual=1&preset=default") as port:
        prog = _test_role(port)
        prog.connect()
        assert prog.status().uptime_ms == 0
        clock = prog.advance_time(30 * 86_400_000)
        assert clock.uptime_ms == 30 * 86_400_000
        status = prog.status()
        assert status.uptime_ms == 30 * 86_400_000
        assert status.alarms & AlarmSet.LOW_RESERVOIR
        assert [n.alarm for n in prog.notifications] == [AlarmCode.LOW_RESERVOIR]
        assert port.read(10) == b""  # nothing else queued, and no wait for it
        assert port.in_waiting == 0


def test_pump_url_read_honours_the_timeout() -> None:
    with opened("pump://", timeout=0.2) as port:
        t0 = time.monotonic()
        assert port.read(1) == b""
        assert 0.15 <= time.monotonic() - t0 < 2
        port.write(Channel(from_pump=False).request(m.Identify()).data)
        assert port.in_waiting > 0  # answered inside write()
        port.reset_input_buffer()
        assert port.in_waiting == 0


def test_pump_url_options_are_checked() -> None:
    hil.urlhandler.register()
    hil.urlhandler.register()
    assert serial.protocol_handler_packages.count("hil.urlhandler") == 1
    with pytest.raises(serial.SerialException, match="unknown option"):
        serial.serial_for_url("pump://?colour=red")
    with pytest.raises(serial.SerialException, match="unknown preset"):
        serial.serial_for_url("pump://?preset=nope")
    assert parse_pump_url("pump://?time_scale=60&test_role=0").time_scale == 60
    with pytest.raises(ValueError, match="time_scale"):
        parse_pump_url("pump://?time_scale=0")


def test_pump_url_without_test_role_refuses_test_sessions() -> None:
    with opened("pump://?test_role=0") as port:
        with pytest.raises(KeyMismatch) as refused:
            _test_role(port).connect()
        assert refused.value.code is ErrorCode.UNKNOWN_KEY


def test_link_gives_up_when_nothing_answers() -> None:
    with opened("loop://", timeout=0.05) as port:
        prog = _test_role(port, reply_timeout_ms=30, retries=1)
        with pytest.raises(NoReply, match="no reply to IDENTIFY after 2 attempts"):
            prog.identify()


# ---------------------------------------------------------------------- the commands' edges


def test_test_command_in_process_and_its_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    plant = runner.invoke(cli, ["test", "--port", "pump://?preset=motor-stall", "plant", "--json"])
    assert plant.exit_code == 0, plant.output
    assert json.loads(plant.output)["motor_stalled"] == 1
    cut = runner.invoke(cli, ["test", "--port", "pump://", "fault", "power-cut"])
    assert cut.exit_code == 4  # refused by the pump (pump:// without state has no memory to cut)
    assert "NOT_SUPPORTED" in cut.output
    bad = runner.invoke(cli, ["test", "--port", "pump://", "advance", "3 weeks"])
    assert bad.exit_code == 2
    assert "90d" in bad.output
    no_role = runner.invoke(cli, ["test", "--port", "pump://?test_role=0", "plant"])
    assert no_role.exit_code == 7  # no TEST key on that pump
    assert "--no-test-role" in no_role.output
    missing = runner.invoke(cli, ["test", "--port", str(tmp_path / "no-such-tty"), "plant"])
    assert missing.exit_code == 3  # the link
    assert "cannot open" in missing.output
    patient_only = tmp_path / "patient.keys"
    patient_only.write_text(generate_key_set([Role.PATIENT]).to_json())
    no_key = runner.invoke(cli, ["test", "--port", "pump://", "--key-file", str(patient_only), "plant"])
    assert no_key.exit_code == 2
    assert "no TEST key" in no_key.output


def test_serve_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(cli, ["serve"])
    assert neither.exit_code == 2
    assert "--pty or --tcp" in neither.output
    both = runner.invoke(cli, ["serve", "--pty", "--tcp", "127.0.0.1:0"])
    assert both.exit_code == 2
    bad_tcp = runner.invoke(cli, ["serve", "--tcp", "localhost"])
    assert "HOST:PORT" in bad_tcp.output
    config = tmp_path / "bad.toml"
    config.write_text("reservoir_litres = 3\n")
    bad_config = runner.invoke(cli, ["serve", "--pty", "--config", str(config)])
    assert bad_config.exit_code == 2
    assert "reservoir_litres" in bad_config.output
    assert "serve --pty" in runner.invoke(cli, ["serve", "--help"]).output
    assert "test role is ON by default" in runner.invoke(cli, ["serve", "--help"]).output


def test_parsers() -> None:
    assert parse_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_host_port("[::1]:5000") == ("::1", 5000)
    assert parse_duration_ms("1d12h") == 36 * 3_600_000
    assert parse_duration_ms("1.5s") == 1500
    assert parse_duration_ms("250ms") == 250
    for bad in ("", "10", "0.5ms", "1x", "d"):
        with pytest.raises(ValueError, match=r"duration|millisecond"):
            parse_duration_ms(bad)


# ---------------------------------------------------------------------- presets and config


@pytest.mark.parametrize(
    ("preset", "alarm"),
    [
        ("low-reservoir", AlarmCode.LOW_RESERVOIR),
        ("empty", AlarmCode.EMPTY_RESERVOIR),
        ("motor-stall", AlarmCode.MOTOR_STALL),
        ("eri", AlarmCode.ERI),
        ("eos", AlarmCode.EOS),
    ],
)
def test_presets_make_their_situation(preset: str, alarm: AlarmCode) -> None:
    pump = make_pump(preset, PumpConfig())
    assert pump.alarms.is_active(alarm)
    if preset == "eri":
        assert pump.battery_state is BatteryState.ERI
        assert pump.alarms.as_set() == AlarmSet.ERI
    if preset == "eos":
        assert pump.battery_state is BatteryState.EOS


def test_default_preset_and_unknown_names() -> None:
    assert set(PRESETS) >= {"default", "low-reservoir", "eri", "motor-stall", "eos", "empty"}
    pump = make_pump(None, PumpConfig.profile(40))
    st = pump.status()
    assert (st.mode, st.reservoir_estimate_nl, st.concentration_ug_per_ml) == (TherapyMode.CONTINUOUS, 40_000_000, 500)
    assert pump.dose_now_ng_per_day() == 300_000
    assert st.alarms == AlarmSet(0)
    with pytest.raises(ValueError, match="low-reservoir"):
        make_pump("flat-battery", PumpConfig())


def test_config_table() -> None:
    pump_cfg, dev_cfg = configs_from_mapping(
        {"reservoir_ml": 40, "step_volume_nl": 500, "battery": {"step_pc": 1}, "device": {"model": "x"}}
    )
    assert (pump_cfg.reservoir_capacity_nl, pump_cfg.step_volume_nl, pump_cfg.battery.step_pc) == (40_000_000, 500, 1)
    assert dev_cfg.model == "x"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"reservoir_ml": 30}, "20 mL and 40 mL"),
        ({"step_volume_nl": "big"}, "whole number"),
        ({"battery": {"volts": 3}}, "volts"),
        ({"device": {"serial_number": 7}}, "text"),
        ({"step_volume_nl": 5000}, "step_volume_nl"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            configs_from_mapping(bad)
    assert issubclass(ConfigError, ValueError)


def test_published_keys_load_from_what_keys_test_set_writes(tmp_path: Path) -> None:
    out = tmp_path / "test.keys"
    assert CliRunner().invoke(cli, ["keys", "test-set", "--out", str(out)]).exit_code == 0
    assert KeySet.load(out) == TEST_KEY_SET
