"""``pumprig keys``: files KeySet.load reads, mode 0600, no key material on screen, no overwrite."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from hil.cli import cli
from protocol_spec.enums import Role
from protocol_spec.security import TEST_KEY_SET, KeySet


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["keys", *args])
    return result.exit_code, result.output


def _no_key_material(output: str, key_set: KeySet) -> None:
    for k in key_set.keys:
        assert k.key.hex() not in output.lower()
        assert k.key.hex()[:16] not in output.lower()


def test_generate_writes_a_private_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "pump.keys"
    code, output = _invoke("generate", "--out", str(out), "--label", "bench pump 7")
    assert code == 0, output
    key_set = KeySet.load(out)
    assert [k.role for k in key_set.keys] == [Role.CLINICIAN, Role.PATIENT, Role.TEST]
    assert key_set.label == "bench pump 7"
    assert not key_set.test_only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    _no_key_material(output, key_set)
    for k in key_set.keys:
        assert f"0x{k.key_id:08x}" in output


def test_generate_roles_and_json(tmp_path: Path) -> None:
    out = tmp_path / "field.keys"
    code, output = _invoke("generate", "--out", str(out), "--roles", "clinician, patient", "--json")
    assert code == 0, output
    doc = json.loads(output)
    key_set = KeySet.load(out)
    assert [k["role"] for k in doc["keys"]] == ["clinician", "patient"]
    assert [k["key_id"] for k in doc["keys"]] == [f"{k.key_id:08x}" for k in key_set.keys]
    assert key_set.for_role(Role.TEST) is None
    _no_key_material(output, key_set)
    for bad in ("nurse", "", "test,test"):
        code, output = _invoke("generate", "--out", str(tmp_path / "x.keys"), "--roles", bad)
        assert code == 2, output
    assert not (tmp_path / "x.keys").exists()


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "pump.keys"
    assert _invoke("generate", "--out", str(out))[0] == 0
    first = out.read_text()
    code, output = _invoke("generate", "--out", str(out))
    assert code == 2
    assert "--force" in output
    assert out.read_text() == first
    out.chmod(0o644)
    code, output = _invoke("generate", "--out", str(out), "--force")
    assert code == 0, output
    assert out.read_text() != first
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_show_prints_ids_never_keys(tmp_path: Path) -> None:
    out = tmp_path / "pump.keys"
    _invoke("generate", "--out", str(out), "--label", "VP0000042")
    key_set = KeySet.load(out)
    code, output = _invoke("show", str(out))
    assert code == 0, output
    assert "VP0000042" in output
    _no_key_material(output, key_set)
    code, output = _invoke("show", str(out), "--json")
    doc = json.loads(output)
    assert doc["test_only"] is False
    assert {k["role"]: k["key_id"] for k in doc["keys"]} == {
        k.role.name.lower(): f"{k.key_id:08x}" for k in key_set.keys
    }
    _no_key_material(output, key_set)


def test_show_warns_about_a_readable_file_and_refuses_junk(tmp_path: Path) -> None:
    out = tmp_path / "pump.keys"
    _invoke("generate", "--out", str(out))
    out.chmod(0o644)
    result = CliRunner().invoke(cli, ["keys", "show", str(out)])
    assert "chmod 600" in result.output
    junk = tmp_path / "junk.keys"
    junk.write_text("{}")
    code, output = _invoke("show", str(junk))
    assert code == 2
    assert "malformed" in output or "not a pumprig key file" in output
    code, output = _invoke("show", str(tmp_path / "missing.keys"))
    assert code == 2
    assert "cannot read" in output


def test_test_set_is_the_published_set_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "test.keys"
    code, output = _invoke("test-set", "--out", str(out))
    assert code == 0, output
    assert KeySet.load(out) == TEST_KEY_SET
    assert "PUBLISHED TEST KEY SET" in output
    assert "never put them on a real device" in output
    _no_key_material(output, TEST_KEY_SET)
    assert _invoke("test-set", "--out", str(out))[0] == 2
    code, output = _invoke("show", str(out), "--json")
    assert json.loads(output)["test_only"] is True
