"""Options shared by the commands: ``--config``, and the Settings fields as generated options.

Each option is made from its Settings field (``dicom_chain/config.py``): name ``--field-name``,
environment variable ``DICOM_CHAIN_FIELD_NAME``, type, default and help; nothing is repeated here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from dicom_chain.config import SettingField, Settings, setting_fields
from dicom_chain.errors import DicomChainError

F = TypeVar("F", bound=Callable[..., Any])

# Which Settings fields each kind of command takes, in the order --help lists them.
NODE = ("home", "db", "storage", "key_file", "institution", "policy")
FORWARDING = ("ae_title", "forward", "forward_workers", "forward_max_refusals")
LOGGING = ("log_level", "log_file", "log_format")  # the commands that run a service: scp/logs.py
SERVICE = (
    *FORWARDING,
    "host",
    "port",
    "accept_called_ae",
    "allow",
    "peers",
    "certs",
    "max_associations",
    "max_associations_per_host",
    "pdu_deadline",
    "tls_handshake_deadline",
    "max_associate_request",
    "move_destinations",
    "serve_altered",
    "audit_syslog",
    "audit_syslog_ca",
    "metrics_port",
    "metrics_host",
    "http_port",
    "http_host",
    "http_tls_cert",
    "http_tls_key",
    "console_url",
    "witness_quorum",
    "checkpoint_interval",
    "tsa",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "spool",
    "max_instance_bytes",
    "spool_memory_bytes",
    "policy_now",
    *LOGGING,
)


def _config_keys() -> dict[str, str]:
    """TOML key -> parameter name: the field names, and the option's spelling where it differs
    (``move_destination``, as files written before the fields were the source still say)."""
    keys = {}
    for spec in setting_fields():
        keys[spec.option.removeprefix("--").replace("-", "_")] = spec.name
        keys[spec.name] = spec.name
    return keys


CONFIG_META = "dicom_chain.config"  # ctx.meta key: the file the group's own --config gave


def _read_toml(path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path} is not valid TOML: {exc}") from exc


def _check_config(path: str, data: dict[str, Any], command: click.Command, where: str = "") -> None:
    """Refuse what would otherwise be dropped without a word: a key that is no setting, no option of
    the command its table names and no subcommand (``prot = 12007``), or a setting of the wrong type.
    A gateway started on its defaults (port 11112, any AE) because of a typo is worse than none."""
    specs = {spec.name: spec for spec in setting_fields()}
    keys = _config_keys()
    params = {p.name for p in command.params if p.name}
    commands = command.commands if isinstance(command, click.Group) else {}
    for key, value in data.items():
        name = keys.get(key.replace("-", "_"))
        here = f"{where}{key}"
        if key in commands and isinstance(value, dict):
            _check_config(path, value, commands[key], f"{here}.")
        elif name is not None:
            spec = specs[name]
            try:
                typed = spec.typed(value)
            except DicomChainError as exc:
                raise click.BadParameter(f"{path}: {here}: {_reason(exc)}") from exc
            low, high = spec.bounds or (None, None)
            if low is not None and high is not None and isinstance(typed, int) and not low <= typed <= high:
                raise click.BadParameter(f"{path}: {here} = {typed}: must be {low} to {high}")
        elif key.replace("-", "_") not in params:
            raise click.BadParameter(f"{path}: unknown setting {here!r} (see --help for the settings)")


def _reason(exc: DicomChainError) -> str:
    """The error without its ``setting NAME:`` prefix, which the caller replaces by the file's key."""
    return re.sub(r"^setting \w+:?\s*", "", " ".join(str(exc).split()))


def _defaults(data: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The defaults a command reached by ``names`` takes: top-level keys, then each table on its way."""
    keys = _config_keys()
    tables = {spec.name: spec for spec in setting_fields() if spec.meta.table}

    def values(table: dict[str, Any]) -> dict[str, Any]:
        """A table's settings; a table of entries ([peers.CT1]) is a setting too, not a command's."""
        found = {}
        for k, v in table.items():
            name = keys.get(k.replace("-", "_"), k.replace("-", "_"))
            if name in tables and isinstance(v, dict):
                found[name] = list(tables[name].typed(v))
            elif not isinstance(v, dict):
                found[name] = [v] if name in tables and isinstance(v, str) else v
        return found

    defaults = values(data)
    table: Any = data
    for name in names:
        table = table.get(name, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict):
            for k, v in values(table).items():  # entries add up (a command's peers to everyone's)
                defaults[k] = [*defaults[k], *v] if k in tables and k in defaults else v
    return defaults


def _default_tree(data: dict[str, Any], command: click.Command, names: list[str]) -> dict[str, Any]:
    """The defaults of ``command`` and, under each subcommand's name, its own (click hands a
    subcommand ``default_map[name]``), so that ``dicom-chain --config f.toml CMD`` reaches every
    command, those without a --config of their own too."""
    tree = _defaults(data, names)
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            tree[sub_name] = _default_tree(data, sub, [*names, sub_name])
    return tree


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Make the TOML file the defaults of this command (top-level keys and its own [table]).

    The group's ``--config`` (``dicom-chain --config f.toml serve``) gives every command below it
    its defaults; a command's own ``--config`` on the command line replaces it, while the
    environment's (DICOM_CHAIN_CONFIG) does not override a file named on the command line."""
    root = ctx.find_root()
    from_group = ctx.parent is not None and CONFIG_META in root.meta
    if from_group and ctx.get_parameter_source("config") is not ParameterSource.COMMANDLINE:
        return value  # the group's file already gave this command its defaults
    if not value:
        return value
    data = _read_toml(value)
    _check_config(value, data, root.command)
    names = [c.info_name for c in _lineage(ctx) if c.info_name and c.parent is not None]
    try:
        ctx.default_map = _default_tree(data, ctx.command, names)
    except DicomChainError as exc:
        raise click.BadParameter(f"{value}: {exc}") from exc
    if ctx.parent is None:
        root.meta[CONFIG_META] = value
    return value


def _lineage(ctx: click.Context) -> list[click.Context]:
    chain = []
    node: click.Context | None = ctx
    while node is not None:
        chain.append(node)
        node = node.parent
    return list(reversed(chain))


def config_option(f: F) -> F:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        envvar="DICOM_CHAIN_CONFIG",
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="TOML file with defaults for these options (env: DICOM_CHAIN_CONFIG).",
    )(f)


def _click_type(spec: SettingField) -> click.ParamType:
    if spec.kind is Path:
        return click.Path(
            file_okay=spec.meta.path != "dir",
            dir_okay=spec.meta.path != "file",
            exists=spec.meta.exists,
            path_type=Path,
        )
    if spec.kind is int:
        return click.IntRange(*spec.bounds) if spec.bounds else click.INT
    if spec.meta.choices:
        return click.Choice(spec.meta.choices)
    return click.STRING


def _option(spec: SettingField, help_text: str | None) -> Callable[[F], F]:
    extra: dict[str, Any] = {"multiple": True} if spec.repeatable else {"default": spec.default}
    if spec.meta.metavar:
        extra["metavar"] = spec.meta.metavar
    return click.option(
        spec.option,
        spec.name,
        type=_click_type(spec),
        envvar=spec.envvar,
        show_default=spec.meta.show_default,
        help=help_text or spec.meta.help,
        **extra,
    )


def settings_options(*names: str, help_for: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """The options of these Settings fields, in this order; ``help_for`` words one differently for a
    command where it means something narrower (verify's ``--db``)."""
    specs = {spec.name: spec for spec in setting_fields()}
    unknown = set(names) - set(specs) | set(help_for or {}) - set(names)
    if unknown:
        raise ValueError(f"not Settings fields of this command: {sorted(unknown)}")

    def decorate(f: F) -> F:
        for name in reversed(names):
            f = _option(specs[name], (help_for or {}).get(name))(f)
        return f

    return decorate


def settings_from(kwargs: dict[str, Any]) -> Settings:
    """Take the Settings fields out of a command's keyword arguments; the rest stay for it."""
    names = {spec.name for spec in setting_fields()}
    return Settings(**{name: kwargs.pop(name) for name in list(kwargs) if name in names})
