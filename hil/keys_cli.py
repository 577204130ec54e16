"""``pumprig keys``: make a device's key set, show its key ids, write the published test set.

The file format (``pumprig-keys/1``, JSON) is the one ``KeySet.load`` reads: the pump
(``pumprig serve --key-file``) and the programmer read the same file. Key material is
written to files only (mode 0600), never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import click

from protocol_spec.enums import Role
from protocol_spec.security import TEST_KEY_SET, KeyFileError, KeySet, generate_key_set

__all__ = ["keys_group"]

_ROLE_NAMES = [r.name.lower() for r in Role]


@click.group("keys", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def keys_group() -> None:
    """Make and inspect device key sets (one random key per role, per device).

    \b
    Examples:
      pumprig keys generate --out pump.keys --label "bench pump 7"
      pumprig keys generate --out field.keys --roles clinician,patient
      pumprig keys show pump.keys
      pumprig keys test-set --out test.keys
      pumprig serve --pty --key-file pump.keys
    """


@keys_group.command("generate")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--label", default="", help="A name for the set, stored in the file (e.g. the device's serial).")
@click.option(
    "--roles",
    default=",".join(_ROLE_NAMES),
    show_default=True,
    metavar="LIST",
    help=f"Comma-separated roles to make keys for ({', '.join(_ROLE_NAMES)}).",
)
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the roles and key ids as one JSON object.")
def generate_command(out: Path, label: str, roles: str, force: bool, as_json: bool) -> None:
    """Generate a fresh, random key set and write it to --out (mode 0600).

    Keep the file secret: anyone holding it can open sessions with the pump. Give the same
    file to the pump (pumprig serve --key-file) and to its programmer. Leave the test role
    out of a set meant for a production build.
    """
    try:
        wanted = _parse_roles(roles)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    key_set = generate_key_set(wanted, label=label)
    _write(out, key_set.to_json(), force=force)
    _print_summary(key_set, out, as_json)


@keys_group.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_command(file: Path, as_json: bool) -> None:
    """Show a key file's label and each role's key id (never the keys themselves)."""
    try:
        key_set = KeySet.load(file)
    except KeyFileError as exc:
        raise click.UsageError(str(exc)) from exc
    _print_summary(key_set, file, as_json)
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(file.stat().st_mode)
        if mode & 0o077 and not key_set.test_only:
            click.echo(f"warning: {file} is readable by others (mode {mode:04o}): chmod 600 {file}", err=True)


@keys_group.command("test-set")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the roles and key ids as one JSON object.")
def test_set_command(out: Path, force: bool, as_json: bool) -> None:
    """Write the published TEST key set: public, for emulators and test rigs only.

    The file says so twice ("test_only": true and its label); every tool that loads it
    warns. It is what pumprig serve uses when no --key-file is given.
    """
    _write(out, TEST_KEY_SET.to_json(), force=force)
    _print_summary(TEST_KEY_SET, out, as_json)
    click.echo("note: these keys are published and protect nothing: never put them on a real device", err=True)


def _parse_roles(text: str) -> list[Role]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"--roles needs at least one of {', '.join(_ROLE_NAMES)}")
    unknown = [n for n in names if n not in _ROLE_NAMES]
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}: use {', '.join(_ROLE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError("a key set holds one key per role: name each role once")
    return [Role[n.upper()] for n in names]


def _write(path: Path, text: str, *, force: bool) -> None:
    """Write a key file readable by its owner only; never replace one unless forced."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise click.UsageError(f"{path} exists: give --force to replace it, or another --out") from exc
    except OSError as exc:
        raise click.UsageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # a replaced file keeps no wider mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd >= 0:
            os.close(fd)


def _summary(key_set: KeySet, path: Path) -> dict[str, Any]:
    return {
        "file": str(path),
        "format": "pumprig-keys/1",
        "label": key_set.label,
        "test_only": key_set.test_only,
        "keys": [{"role": k.role.name.lower(), "key_id": f"{k.key_id:08x}"} for k in key_set.keys],
    }


def _print_summary(key_set: KeySet, path: Path, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_summary(key_set, path), indent=2))
        return
    click.echo(f"{path}: pumprig-keys/1{', label: ' + key_set.label if key_set.label else ''}")
    if key_set.test_only:
        click.echo("  PUBLISHED TEST KEY SET: public, for emulators and test rigs only")
    for k in key_set.keys:
        click.echo(f"  {k.role.name.lower():<10} key id 0x{k.key_id:08x}")
